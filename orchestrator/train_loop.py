"""`train_loop_per_worker` for Ray Train's TorchTrainer: set up, loop, report.

The heavy parts are the plain functions of `engine.py`; this module only wires them to Ray Train
(world rank and size, DDP, checkpoints through `ray.train.report`) and to MLflow through
`metric_logger.MetricLogger` on rank 0.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from typing import Optional

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from maskx.datasets.partitions import EpochLayout
from maskx.datasets.stream import EvalStream, load_sources, make_loader
from maskx.datasets.train_stream import StreamPosition, TrainStream, train_steps
from maskx.models import build_model

from . import engine, run_folder
from .config import TrainConfig, dump_config, validate
from .progress import Window, console_line, peak_memory_mb
from .run_folder import TrainState
from .metric_logger import MetricLogger
from .tracking import Tracking

log = logging.getLogger(__name__)


def train_loop_per_worker(loop_config: dict) -> None:
    cfg = validate(loop_config["config"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed + rank)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not loop_config.get("verbose"):
        _quiet_ray_reports()

    sources, vocab = load_sources([(s.manifest, s.weight) for s in cfg.data.train])
    val_sources = load_sources([(cfg.data.val, 1.0)])[0] if cfg.data.val else None
    engine.bind_to_vocabulary(cfg, vocab)
    model = build_model(cfg.model).to(device)
    optimizer = engine.build_optimizer(model, cfg.solver)
    scheduler = engine.build_lr_scheduler(optimizer, cfg.solver)
    state = TrainState()
    resumed = _agreed_resume_state(loop_config["run_folder"], ray.train.get_checkpoint(), rank)
    if resumed is not None:
        state = run_folder.restore(resumed, model, optimizer, scheduler)
        log.info("rank %d: resumed at iteration %d (epoch %d, step %d), written by %d workers, now %d", rank,
                 state.iteration, state.position.epoch, state.position.steps, state.world_size, world_size)
    elif cfg.model.init_from:
        taken = engine.initialize_from_torchvision(model, cfg.model.init_from, vocab)
        if rank == 0:
            log.info(taken)
    # Every trainable parameter takes part in every step, also on VG batches without a mask (the mask
    # loss keeps the mask branch in the graph at zero weight; tests/models/test_partial_supervision.py),
    # so DDP needs no search for unused parameters after each backward.
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": False})

    previous_world_size = state.world_size if resumed is not None else None
    state.plan, state.world_size = engine.data_plan(cfg, state.plan), world_size
    layout = EpochLayout(state.plan, world_size, cfg.data.batch_size)
    samples = sum(s.num_samples for s in sources if s.weight > 0)
    steps_per_epoch = cfg.data.steps_per_epoch or max(1, samples // state.plan.global_batch)
    run_id = loop_config.get("mlflow_run_id")
    mlflow_run = Tracking(loop_config["mlflow_tracking_uri"]).run(run_id) if run_id else None
    metrics_logger = MetricLogger(mlflow_run, in_training_process=True) if rank == 0 else None
    if metrics_logger and resumed is not None:
        metrics_logger.resume_after(state.iteration)
    if metrics_logger:
        metrics_logger.log_world_size(state.iteration, previous_world_size, layout)
    system_monitor = None
    if mlflow_run and context.get_local_rank() == 0 and cfg.mlflow.system_metrics_every_s > 0:
        node = f"{ray.util.get_node_ip_address()}-{ray.get_runtime_context().get_node_id()[:6]}"  # hosts may share an address
        system_monitor = mlflow_run.monitor_system(node, cfg.mlflow.system_metrics_every_s)
    keys_log = _open_keys_log(loop_config.get("record_keys_to"), rank, world_size)

    def stream_for(epoch: int, start: Optional[StreamPosition]) -> TrainStream:
        return TrainStream(sources=sources, vocab=vocab, mask_labels=cfg.model.mask_classes, layout=layout,
                           steps_per_epoch=steps_per_epoch, rank=rank, epoch=epoch, seed=cfg.seed,
                           min_sizes=tuple(cfg.data.min_sizes), max_size=cfg.data.max_size,
                           flip_prob=cfg.data.flip_prob, shuffle_buffer=cfg.data.shuffle_buffer, start=start)

    amp = cfg.solver.amp and device.type == "cuda"
    window = Window()
    last_metrics: dict = {}
    while state.iteration < cfg.solver.max_iter:
        epoch = state.iteration // steps_per_epoch
        if state.position.epoch != epoch:
            state.position = StreamPosition(epoch=epoch)
        stream = stream_for(epoch, state.position)
        loader = make_loader(stream, cfg.data.loader_workers, pin_memory=device.type == "cuda")
        for step in train_steps(loader, stream, cfg.data.loader_workers):
            window.batch_arrived()
            weights = [layout.loss_weight(len(batch.keys)) for batch in step.micro_batches]
            losses = engine.train_step(model, optimizer, scheduler, step.micro_batches, device, amp,
                                       cfg.solver.clip_grad_norm, weights)
            state.iteration += 1
            state.position.advance(step)
            if keys_log:
                keys_log.write("".join(f"{state.iteration} {key}\n" for key in step.keys))
                keys_log.flush()
            window.step_done(losses, step.images)
            if state.iteration % cfg.log_every == 0 or state.iteration == cfg.solver.max_iter:
                own = state.position.only(layout.rank_partitions(rank))
                metrics = _training_metrics(window, state.iteration, own, optimizer, world_size, cfg.solver.max_iter, device)
                metrics["train/world_size"] = float(world_size)
                _check_skipped(metrics, cfg.data.max_skipped_fraction)
                last_metrics = metrics
                if metrics_logger:
                    metrics_logger.log(metrics, state.iteration)
                    log.info(console_line(metrics, state.iteration, cfg.solver.max_iter))
                window.reset()
            last = state.iteration == cfg.solver.max_iter
            evaluate_now = cfg.data.val and (last or (cfg.eval_every and state.iteration % cfg.eval_every == 0))
            eval_result = _evaluate(cfg, model, val_sources, vocab, device, rank, world_size) if evaluate_now else None
            if eval_result and metrics_logger:
                metrics_logger.log(eval_result[0], state.iteration)
            if last or state.iteration % cfg.checkpoint.every == 0:
                # Metrics MLflow could not take yet travel with the last checkpoint; the driver sends them.
                unsent = metrics_logger.unsent() if last and metrics_logger and not metrics_logger.flush() else []
                _report_checkpoint(cfg, model, optimizer, scheduler, state, layout, vocab, rank, eval_result,
                                   dict(last_metrics, mlflow_run_id=run_id or ""), unsent)
            if last:
                break
    if system_monitor:
        system_monitor.finish()


def _training_metrics(window: Window, iteration: int, position: StreamPosition, optimizer, world_size: int,
                      max_iter: int, device: torch.device) -> dict[str, float]:
    """Losses averaged over the window's images on every rank, data wait averaged over ranks,
    throughput of the whole job, time per iteration and ETA, the largest peak memory of any rank, lr,
    skipped samples (`position`: this rank's partitions)."""
    names = sorted(window.loss_sums)
    steps = max(window.steps, 1)
    sums = torch.tensor([[window.loss_sums[n] for n in names]
                         + [float(window.images), window.images / window.elapsed_s, window.data_wait_s / steps,
                            float(position.skipped), float(position.drawn)]], dtype=torch.float64)
    peaks = torch.tensor([peak_memory_mb(device)], dtype=torch.float64)
    if dist.is_initialized():
        sums, peaks = sums.to(_collective_device()), peaks.to(_collective_device())
        dist.all_reduce(sums)
        dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
        sums, peaks = sums.cpu(), peaks.cpu()
    values = sums[0].tolist()
    images, throughput, data_wait, skipped, drawn = values[len(names):]
    metrics = {f"loss/{n}": v / max(images, 1.0) for n, v in zip(names, values)}
    seconds_per_iter = window.elapsed_s / steps
    metrics.update({"train/images_per_s": throughput, "train/lr": engine.lr_of(optimizer),
                    "train/s_per_iter": seconds_per_iter, "train/data_time_s": data_wait / world_size,
                    "train/eta_s": seconds_per_iter * (max_iter - iteration),
                    "train/peak_memory_mb": float(peaks[0]),
                    "data/skipped_samples": skipped, "data/drawn_samples": drawn})
    return metrics


def _check_skipped(metrics: dict, max_fraction: float) -> None:
    skipped, drawn = metrics["data/skipped_samples"], metrics["data/drawn_samples"]
    if drawn and skipped / drawn > max_fraction:
        raise RuntimeError(f"data: {int(skipped)} of {int(drawn)} samples drawn so far were unusable "
                           f"({skipped / drawn:.1%} > data.max_skipped_fraction={max_fraction}); "
                           "the skipped samples and their shards are in the worker logs")


def _collective_device() -> torch.device:
    return ray.train.torch.get_device() if dist.get_backend() == "nccl" else torch.device("cpu")


def _gather_to_rank0(obj, rank: int, world_size: int) -> Optional[list]:
    if world_size == 1 or not dist.is_initialized():
        return [obj]
    gathered = [None] * world_size if rank == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def _evaluate(cfg: TrainConfig, model, sources, vocab, device, rank: int, world_size: int):
    """Every rank evaluates its share of the val shards; rank 0 runs COCOeval over all of them."""
    stream = EvalStream(sources, vocab, cfg.data.batch_size, rank, world_size)
    records = engine.eval_records(model, make_loader(stream, 0), device)
    gathered = _gather_to_rank0(records, rank, world_size)
    if rank != 0:
        return None
    metrics, tables = engine.evaluate_records(gathered, vocab, cfg.model.mask_classes or [])
    metrics["data/eval_skipped_samples"] = float(stream.skips.count)
    log.info("eval: box AP %.3f (set A %.3f, set B %.3f), mask AP %.3f (set A %.3f, set B %.3f)",
             metrics["bbox/all/AP"], metrics["bbox/setA/AP"], metrics["bbox/setB/AP"],
             metrics["segm/all/AP"], metrics["segm/setA/AP"], metrics["segm/setB/AP"])
    return metrics, tables


def _report_checkpoint(cfg: TrainConfig, model, optimizer, scheduler, state: TrainState, layout: EpochLayout, vocab,
                       rank: int, eval_result, train_metrics: dict, unsent_metrics: list = ()) -> None:
    """Rank 0 writes the checkpoint, with the data positions of every rank's partitions; every rank
    reports (the call is a barrier). The reported metrics (latest losses, eval metrics when just
    evaluated) are what Ray Tune's schedulers see."""
    own = state.position.only(layout.rank_partitions(rank))
    positions = _gather_to_rank0(own.to_json(), rank, layout.world_size)
    metrics = dict(train_metrics, iteration=state.iteration)
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    merged = StreamPosition.merged([StreamPosition.from_json(p) for p in positions])
    evaluation = None
    if eval_result:
        metrics.update(eval_result[0])
        evaluation = {"metrics": eval_result[0], "per_class_ap": eval_result[1]}
    with tempfile.TemporaryDirectory() as folder:
        contents = run_folder.checkpoint_contents(model, optimizer, scheduler, dataclasses.replace(state, position=merged))
        run_folder.write_checkpoint(folder, contents, dump_config(cfg), vocab, evaluation, unsent_metrics)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                         checkpoint_dir_name=run_folder.checkpoint_name(state.iteration))


def _agreed_resume_state(folder: str, offered: Optional[ray.train.Checkpoint], rank: int) -> Optional[dict]:
    """The state to continue from, the same on every rank: rank 0 finds the newest complete checkpoint
    in the run folder (not only what Ray offers: its record can lag the folder) and the others load
    that one. An error on rank 0 is every rank's, so none waits on a collective that never comes."""
    found = None
    choice: list = [None]
    if rank == 0:
        try:
            found = run_folder.resume_state(folder, offered.path if offered else None)
            choice = [("checkpoint", found[0]) if found else None]
        except ValueError as exc:
            choice = [("error", str(exc))]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(choice, src=0)
    if choice[0] is None:
        return None
    kind, value = choice[0]
    if kind == "error":
        raise ValueError(value)
    return found[1] if rank == 0 else run_folder.load_complete_state(value)


def _open_keys_log(folder: Optional[str], rank: int, world_size: int):
    """Append `ITERATION KEY` for every consumed sample to `folder/rank{R}.txt`, after a
    `node ID WORLD_SIZE UNIX_TIME` line per (re)start. Tests of exact resume read it: iterations redone after a restart appear again, and
    the last occurrence of each iteration is the one the finished model saw."""
    if not folder:
        return None
    os.makedirs(folder, exist_ok=True)
    keys_log = open(os.path.join(folder, f"rank{rank}.txt"), "a")
    keys_log.write(f"node {ray.get_runtime_context().get_node_id()} {world_size} {time.time():.3f}\n")
    return keys_log


def _quiet_ray_reports() -> None:
    """Ray Train logs every `ray.train.report` call as a dict of all metrics, at INFO, from a logger
    named by its file path; maskx's own line says it better. `maskx train --verbose` keeps them."""
    from ray.train.v2._internal.execution import context as ray_train_context

    logging.getLogger(ray_train_context.__file__).setLevel(logging.WARNING)

