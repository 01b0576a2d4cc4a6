"""The concerns of the train loop besides the step, one object each, as detectron2's `engine/hooks.py`:
the keys log, the metrics and console line, checkpoints, the checkpoint on a preemption notice,
system metrics; periodic evaluation and the best model in `evaluation_hooks.py`.

Every rank runs every hook in the same order, so the collectives inside them (the metrics'
all-reduce, the evaluation's gather, the checkpoint's report) meet; what only rank 0 does (MLflow,
the console) is inside the hook. A new concern is a new hook in `train_loop.build_hooks`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time

import ray
import ray.train
from ray.train import CheckpointUploadMode
import torch
import torch.distributed as dist

from maskx.datasets.partitions import StreamPosition

from .. import run_folder
from ..config import dump_config
from .progress import Window, console_line, peak_memory_mb
from .step import lr_of
from .worker import Worker

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
                                              dataclasses.replace(worker.state, position=merged), worker.scaler)
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
