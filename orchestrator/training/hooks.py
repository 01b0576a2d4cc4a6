"""The concerns of the train loop besides the step, one object each, as detectron2's `engine/hooks.py`:
the keys log, the metrics and console line, periodic evaluation, the best model, checkpoints, the
checkpoint on a preemption notice, system metrics.

Every rank runs every hook in the same order, so the collectives inside them (the metrics'
all-reduce, the evaluation's gather, the checkpoint's report) meet; what only rank 0 does (MLflow,
the console) is inside the hook. A new concern is a new hook in `build_hooks`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import ray
import ray.train
from ray.train import CheckpointUploadMode
import torch
import torch.distributed as dist

from maskx.datasets.partitions import StreamPosition

from .. import run_folder
from ..config import dump_config
from ..reporting.evaluation_figures import ExampleImages, FigureLogger, evaluation_figures, title_of
from ..serving.evaluation import Evaluation, predict_on_shards, score_shares
from .background_evaluation import BackgroundScoring, log_line
from .progress import Window, console_line, peak_memory_mb
from .step import lr_of
from .worker import Worker, WorkerJob

log = logging.getLogger(__name__)


class Hook:
    """detectron2's HookBase: called before training, around each step, and after training (also when
    training fails)."""

    def before_train(self, worker: Worker) -> None:
        pass

    def before_step(self, worker: Worker) -> None:
        """The step's batches have arrived; it has not run yet."""

    def after_step(self, worker: Worker) -> None:
        pass

    def after_train(self, worker: Worker) -> None:
        pass


def build_hooks(job: WorkerJob) -> list[Hook]:
    """In the order they run after a step: the evaluation's metrics join the checkpoint it reports."""
    hooks: list[Hook] = [KeysLog(job.record_keys_to)] if job.record_keys_to else []
    return hooks + [TrainingMetrics(), PeriodicEvaluation(), KeepBest(), CheckpointReport(), PreemptionCheckpoint(),
                     SystemMetrics()]


class KeysLog(Hook):
    """`maskx train --record-keys-to FOLDER`: every sample key each rank trains on, to
    `FOLDER/rank{R}.txt` on its host, as `ITERATION KEY` lines after a `node ID WORLD_SIZE UNIX_TIME`
    line per (re)start. Tests of exact resume read it: iterations redone after a restart appear again,
    and the last occurrence of each iteration is the one the finished model saw."""

    def __init__(self, folder: str):
        self.folder = folder
        self.file = None

    def before_train(self, worker: Worker) -> None:
        os.makedirs(self.folder, exist_ok=True)
        self.file = open(os.path.join(self.folder, f"rank{worker.rank}.txt"), "a")
        self.file.write(f"node {ray.get_runtime_context().get_node_id()} {worker.world_size} {time.time():.3f}\n")

    def after_step(self, worker: Worker) -> None:
        self.file.write("".join(f"{worker.iteration} {key}\n" for key in worker.step.keys))
        self.file.flush()

    def after_train(self, worker: Worker) -> None:
        if self.file is not None:
            self.file.close()


class TrainingMetrics(Hook):
    """Every `log_every` iterations and at the last: the window's losses, throughput, data time,
    memory, lr and skipped samples over all ranks; rank 0 logs them to MLflow and prints the line.
    Too many skipped samples fail the run."""

    def before_train(self, worker: Worker) -> None:
        self.window = Window()
        if worker.metric_logger:
            # Also without a checkpoint to resume: a restart whose checkpoints never finished starts
            # over in the same MLflow run (run_folder.resume_state), redoing steps it may hold.
            worker.metric_logger.resume_after(worker.iteration)
            worker.metric_logger.log_world_size(worker.iteration, worker.previous_world_size, worker.layout)

    def before_step(self, worker: Worker) -> None:
        self.window.batch_arrived()

    def after_step(self, worker: Worker) -> None:
        self.window.step_done(worker.losses, worker.step.images)
        if not worker.due(worker.config.log_every):
            return
        metrics = window_metrics(self.window, worker)
        metrics["train/world_size"] = float(worker.world_size)
        check_skipped(metrics, worker.config.data.max_skipped_fraction)
        worker.latest_metrics = metrics
        if worker.metric_logger:
            worker.metric_logger.log(metrics, worker.iteration)
            log.info(console_line(metrics, worker.iteration, worker.max_iter))
        self.window.reset()


def window_metrics(window: Window, worker: Worker) -> dict[str, float]:
    """Losses averaged over the window's images on every rank, data wait averaged over ranks,
    throughput of the whole job, time per iteration and ETA, the largest peak memory of any rank, lr,
    skipped samples of this rank's partitions, summed over ranks."""
    names = sorted(window.loss_sums)
    steps = max(window.steps, 1)
    position = worker.own_position()
    sums = torch.tensor([[window.loss_sums[n] for n in names]
                         + [float(window.loss_images), window.images / window.elapsed_s, window.data_wait_s / steps,
                            float(position.skipped), float(position.drawn)]], dtype=torch.float64)
    peaks = torch.tensor([peak_memory_mb(worker.device)], dtype=torch.float64)
    if dist.is_initialized():
        sums, peaks = sums.to(worker.collective_device), peaks.to(worker.collective_device)
        dist.all_reduce(sums)
        dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
        sums, peaks = sums.cpu(), peaks.cpu()
    values = sums[0].tolist()
    loss_images, throughput, data_wait, skipped, drawn = values[len(names):]
    metrics = {f"loss/{n}": v / max(loss_images, 1.0) for n, v in zip(names, values)}
    if window.skipped_steps:  # the same on every rank: they skip together
        metrics["train/skipped_steps"] = float(window.skipped_steps)
    seconds_per_iter = window.elapsed_s / steps
    metrics.update({"train/images_per_s": throughput, "train/lr": lr_of(worker.optimizer),
                    "train/s_per_iter": seconds_per_iter, "train/data_time_s": data_wait / worker.world_size,
                    "train/eta_s": seconds_per_iter * (worker.max_iter - worker.iteration),
                    "train/peak_memory_mb": float(peaks[0]),
                    "data/skipped_samples": skipped, "data/drawn_samples": drawn})
    return metrics


def check_skipped(metrics: dict, max_fraction: float) -> None:
    skipped, drawn = metrics["data/skipped_samples"], metrics["data/drawn_samples"]
    if drawn and skipped / drawn > max_fraction:
        raise RuntimeError(f"data: {int(skipped)} of {int(drawn)} samples drawn so far were unusable "
                           f"({skipped / drawn:.1%} > data.max_skipped_fraction={max_fraction}); "
                           "the skipped samples and their shards are in the worker logs")


class PeriodicEvaluation(Hook):
    """Every `eval_every` iterations and at the last, with `data.val`: every rank predicts its share
    of the val shards and rank 0 gathers them. COCOeval over them runs beside training
    (`eval_mode: background`, `background_evaluation.py`) or in rank 0 while the others wait
    (`inline`, and always at the last iteration, whose evaluation travels with the last checkpoint).
    Rank 0 logs each evaluation's metrics at the iteration it evaluated."""

    def __init__(self):
        self.background: Optional[BackgroundScoring] = None
        self.figures: Optional[FigureLogger] = None
        self.examples: Optional[ExampleImages] = None
        self.set_a_names: set[str] = set()

    def before_train(self, worker: Worker) -> None:
        cfg, setup = worker.config, worker.setup
        if worker.rank != 0 or not cfg.data.val:
            return
        if cfg.eval_every and cfg.eval_mode == "background":
            self.background = BackgroundScoring(vocab=setup.vocab, set_a=setup.set_a, backend=cfg.eval_backend,
                                                cpus=cfg.eval_cpus, error_analysis=cfg.eval_error_analysis,
                                                wait_s=cfg.eval_wait_s)
        if worker.mlflow_run and (cfg.mlflow.eval_figures or cfg.mlflow.eval_images):
            self.figures = FigureLogger(worker.mlflow_run)
            self.examples = ExampleImages(setup.val_sources, setup.vocab, setup.set_a, cfg.mlflow.eval_images)
            self.set_a_names = {setup.vocab.name(label) for label in setup.set_a}

    def after_step(self, worker: Worker) -> None:
        worker.evaluation, worker.evaluated, worker.scored = None, False, []
        cfg = worker.config
        if self.background:
            worker.scored = self.background.finished(wait=worker.last)
            for iteration, evaluation in worker.scored:
                if evaluation is not None:
                    self.log(worker, evaluation, iteration, log_line(evaluation.metrics, iteration))
        if not (cfg.data.val and worker.due(cfg.eval_every)):
            return
        # Whether rank 0 scores this one alone while the others wait (every rank reads it from the config).
        background = bool(cfg.eval_every) and cfg.eval_mode == "background"
        inline = worker.last or not background
        if worker.last and background:
            worker.wait_for_rank0()  # rank 0 waited up to eval_wait_s for the background tasks above
        worker.evaluated = True
        share = predict_on_shards(worker.model, worker.setup.val_sources, worker.setup.vocab,
                                  batch_size=cfg.eval_batch_size, device=worker.device, rank=worker.rank,
                                  world_size=worker.world_size)
        shares = worker.gather_to_rank0(share)
        if shares is None:  # not rank 0
            if inline:
                worker.wait_for_rank0()
            return
        if self.examples and self.examples.samples and not self.logged_before(worker, worker.iteration):
            detections, title = self.examples.predictions(worker.model, worker.device), title_of(worker.iteration)
            self.figures.submit(lambda: self.examples.figures(detections, title), worker.iteration)
        if self.background and not worker.last:
            self.background.submit(shares, worker.iteration)
            return
        worker.evaluation = score_shares(shares, worker.setup.vocab, worker.setup.set_a, cfg.eval_backend,
                                         cfg.eval_error_analysis)
        worker.scored.append((worker.iteration, worker.evaluation))
        self.log(worker, worker.evaluation, worker.iteration, log_line(worker.evaluation.metrics))
        worker.wait_for_rank0()

    def after_train(self, worker: Worker) -> None:
        if self.figures is not None:
            self.figures.close()

    def log(self, worker: Worker, evaluation: Evaluation, iteration: int, line: str) -> None:
        log.info("%s", line)
        if self.figures and worker.config.mlflow.eval_figures and not self.logged_before(worker, iteration):
            summary = evaluation.summary()
            self.figures.submit(lambda: evaluation_figures(summary, self.set_a_names, title_of(iteration)), iteration)
        if worker.metric_logger:
            worker.metric_logger.log(evaluation.metrics, iteration)

    @staticmethod
    def logged_before(worker: Worker, iteration: int) -> bool:
        """An evaluation an interrupted pass logged already (its metrics, and with them its figures)."""
        return bool(worker.metric_logger) and iteration in worker.metric_logger.already_logged.get("segm/all/AP", ())


class KeepBest(Hook):
    """`checkpoint.keep_best: METRIC`: rank 0 keeps the model of the best evaluation so far in the run
    folder (`run_folder.write_best`), beside the newest checkpoints Ray Train keeps. At each evaluation
    it copies the weights to host memory and holds them until that evaluation's score arrives (at once
    when inline, later from the background); a new best is written by a thread while training goes on,
    and the run ends after the last write."""

    def __init__(self):
        self.metric: Optional[str] = None
        self.best: Optional[run_folder.BestModel] = None
        self.candidates: dict[int, dict[str, torch.Tensor]] = {}  # iteration -> weights awaiting its score
        self.writer: Optional[ThreadPoolExecutor] = None

    def before_train(self, worker: Worker) -> None:
        if worker.rank != 0 or not worker.config.checkpoint.keep_best:
            return
        self.metric = worker.config.checkpoint.keep_best
        kept = run_folder.read_best(worker.job.run_folder)  # a resumed run goes on from its best so far
        self.best = kept if kept is not None and kept.metric == self.metric else None
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maskx-keep-best")

    def after_step(self, worker: Worker) -> None:
        if self.metric is None:
            return
        if worker.evaluated:
            self.candidates[worker.iteration] = {name: value.detach().to("cpu", copy=True)
                                                 for name, value in worker.model.state_dict().items()}
        for iteration, evaluation in worker.scored:
            weights = self.candidates.pop(iteration, None)
            if evaluation is None or weights is None:
                continue
            value = evaluation.metrics[self.metric]
            if self.best is not None and value <= self.best.value:
                continue
            self.best = run_folder.BestModel(iteration=iteration, metric=self.metric, value=value)
            log.info("best so far by %s: iteration %d (%.4f); writing %s", self.metric, iteration, value,
                     self.best.folder_name)
            self.writer.submit(_write_best, worker.job.run_folder, self.best, weights=weights,
                               config_yaml=dump_config(worker.config), vocab=worker.setup.vocab,
                               evaluation=evaluation.summary())

    def after_train(self, worker: Worker) -> None:
        if self.writer is not None:
            self.writer.shutdown(wait=True)


def _write_best(folder: str, best: run_folder.BestModel, **contents) -> None:
    try:
        run_folder.write_best(folder, best, **contents)
    except Exception as exc:  # training goes on; a later, better evaluation is written again
        log.error("best model of iteration %d not written to %s (%s: %s); best.json still names the one before",
                  best.iteration, folder, type(exc).__name__, exc)


class CheckpointReport(Hook):
    """Every `checkpoint.every` iterations and at the last: rank 0 writes the checkpoint, with the data
    positions of every rank's partitions, and its upload to storage overlaps training
    (`checkpoint.upload`); every rank reports (the call is a barrier). The reported metrics (latest
    losses, eval metrics when just evaluated) are what Ray Tune's schedulers see."""

    def after_step(self, worker: Worker) -> None:
        if worker.due(worker.config.checkpoint.every):
            report_checkpoint(worker)


class PreemptionCheckpoint(Hook):
    """Every `checkpoint.preemption_check_every` iterations every rank asks Ray Train whether a node of
    the run is being preempted (`ray.train.get_preemption_info`, one answer for all ranks); on the
    first notice they commit a checkpoint of this iteration unless it has one, and train on until the
    node goes. Ray Train then restarts the group from it, counting the restart apart from failures."""

    def __init__(self):
        self.noticed = False

    def after_step(self, worker: Worker) -> None:
        every = worker.config.checkpoint.preemption_check_every
        if self.noticed or not every or worker.iteration % every or worker.last:
            return
        notice = ray.train.get_preemption_info()
        if notice is None:
            return
        self.noticed = True
        log.warning("preemption notice at iteration %d: nodes %s (ranks %s) go%s; checkpointing now",
                    worker.iteration, notice.preempted_node_ids, notice.preempted_ranks,
                    f" in {notice.deadline_ms / 1000 - time.time():.0f} s" if notice.deadline_ms else "")
        if not worker.due(worker.config.checkpoint.every):
            report_checkpoint(worker)


def report_checkpoint(worker: Worker) -> None:
    """Rank 0 writes the checkpoint of this iteration; every rank reports (a barrier)."""
    positions = worker.gather_to_rank0(worker.own_position().to_json())
    metrics = dict(worker.latest_metrics, mlflow_run_id=worker.job.mlflow_run_id or "", iteration=worker.iteration)
    if worker.rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    # Metrics MLflow could not take yet travel with the last checkpoint; the driver sends them.
    logger = worker.metric_logger
    unsent = logger.unsent() if worker.last and logger and not logger.flush() else []
    merged = StreamPosition.merged([StreamPosition.from_json(p) for p in positions])
    evaluation = None
    if worker.evaluation:
        metrics.update(worker.evaluation.metrics)
        evaluation = worker.evaluation.summary()
    # Ray Train deletes the local folder once it is uploaded (by a thread, with checkpoint.upload: async).
    contents = run_folder.checkpoint_contents(worker.model, worker.optimizer, worker.scheduler,
                                              dataclasses.replace(worker.state, position=merged))
    folder = run_folder.write_checkpoint_to_scratch(contents, dump_config(worker.config), worker.setup.vocab,
                                                    evaluation, unsent)
    upload = CheckpointUploadMode.ASYNC if worker.config.checkpoint.upload == "async" and not worker.last \
        else CheckpointUploadMode.SYNC
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                     checkpoint_dir_name=run_folder.checkpoint_name(worker.iteration), checkpoint_upload_mode=upload,
                     delete_local_checkpoint_after_upload=True)


class SystemMetrics(Hook):
    """MLflow's system metrics of each node (CPU, memory, disk, network, GPU), from its local rank 0,
    as `system/ADDRESS-NODEID/...` every `mlflow.system_metrics_every_s` seconds."""

    def __init__(self):
        self.monitor = None

    def before_train(self, worker: Worker) -> None:
        every = worker.config.mlflow.system_metrics_every_s
        if worker.mlflow_run and worker.local_rank == 0 and every > 0:
            node = f"{ray.util.get_node_ip_address()}-{ray.get_runtime_context().get_node_id()[:6]}"  # hosts may share an address
            self.monitor = worker.mlflow_run.monitor_system(node, every)

    def after_train(self, worker: Worker) -> None:
        if self.monitor is not None:
            self.monitor.finish()
