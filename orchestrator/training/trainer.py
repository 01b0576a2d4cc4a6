"""`maskx train` on the driver: set the run up once, open its MLflow run, run the TorchTrainer (each
worker gets the set-up, nothing to derive again), then log the evaluation, overlays and the model,
and register it.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Optional

from .. import run_folder
from ..config import TrainConfig, dump_config
from ..evaluation.coco_scoring import coco_metric_names
from ..ray_cluster import connect
from ..redaction import error_summary, redact
from ..reporting.data_figures import log_classes
from ..reporting.report import log_report
from ..run_setup import RunSetup, set_up_run
from ..tracking.store import TrackedRun, Tracking, connection_errors
from .class_frequency import log_class_frequency
from .cluster_checks import check_eval_cpus_fit, check_paths_reach_every_node, cluster_cpus, spans_several_hosts
from .finished_run import log_finished_run
from .train_loop import FATAL_ERROR, train_loop_per_worker
from .worker import WorkerJob

log = logging.getLogger(__name__)

GIT_TIMEOUT_S = 10  # asking git for the checkout's commit


@dataclass
class TrainingResult:
    run_name: str
    run_folder: str
    checkpoint: Optional[str]
    metrics: dict
    mlflow_run_id: Optional[str]
    tracking_uri: str
    model_version: Optional[str]


def train(cfg: TrainConfig, resume: Optional[str] = None, record_keys_to: Optional[str] = None,
          run_name: Optional[str] = None, parent_run_id: Optional[str] = None, callbacks: list = (),
          verbose: bool = False) -> TrainingResult:
    """Train (or continue run `resume`) on the connected Ray cluster, or a local one when none is running.

    A sweep trial passes its own `run_name`, the sweep's MLflow `parent_run_id` and Tune's report callback.
    `verbose` keeps Ray Train's per-report records and MLflow's upload progress bars."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .metric_logger import FailureRecorder
    from .process_group import NodeAddressTorchConfig

    if not verbose:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    setup = set_up_run(cfg)
    cfg = setup.config
    if cfg.checkpoint.keep_best:
        check_keep_best(cfg)
    tracking = Tracking(cfg.mlflow.tracking_uri)
    connect()
    if spans_several_hosts(cfg):
        check_paths_reach_every_node(cfg, tracking.uri)
    check_eval_cpus_fit(cfg, cluster_cpus())
    if resume and run_name and resume != run_name:
        raise ValueError(f"--resume {resume} and --run-name {run_name}: one run at a time")
    # --resume continues a run that exists; --run-name (a sweep's trial, a retried cluster job) creates
    # the run or continues it; otherwise a new name, which nothing else can be using.
    run_name = resume or run_name or run_folder.new_run_name(cfg.name)
    folder = run_folder.run_folder(cfg.checkpoint.storage_path, run_name)
    if resume and run_folder.read_mlflow_run(folder) is None:
        raise FileNotFoundError(f"--resume {resume}: no run of that name under {cfg.checkpoint.storage_path}")
    mlflow_run = _mlflow_run(setup, run_name, folder, tracking, parent_run_id)
    log.info("run %s: checkpoints in %s, MLflow run %s at %s", run_name, folder, mlflow_run.run_id, tracking.redacted_uri)

    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = cfg.scaling.gpus_per_worker
    job = WorkerJob(setup=setup, run_folder=folder, mlflow_run_id=mlflow_run.run_id, tracking_uri=tracking.uri,
                    record_keys_to=record_keys_to and os.path.abspath(record_keys_to), verbose=verbose)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(num_workers=cfg.scaling.ray_num_workers(), use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker=resources, placement_strategy=cfg.scaling.placement_strategy,
                                     elastic_resize_monitor_interval_s=cfg.scaling.elastic_resize_monitor_interval_s),
        torch_config=NodeAddressTorchConfig(timeout_s=cfg.scaling.collective_timeout_s),
        run_config=RunConfig(
            name=run_name,
            storage_path=cfg.checkpoint.storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep),
            failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures),
            callbacks=[FailureRecorder(tracking.uri, mlflow_run.run_id), *callbacks],
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:
        try:  # only if still open: a sweep marks a trial its scheduler stopped KILLED
            mlflow_run.close_if_open("FAILED", f"training failed: {type(exc).__name__}")
        except connection_errors() as unreachable:  # the training failure is the news, not the tracking server
            log.warning("MLflow run %s left open: %s unreachable (%s)", mlflow_run.run_id, tracking.redacted_uri,
                        error_summary(unreachable))
        raise RuntimeError(redact(f"run {run_name} failed ({exc}); its checkpoints are in {folder}; "
                                  f"continue it with `maskx train --config ... --resume {run_name}`")) from exc

    fatal = (result.return_value or {}).get(FATAL_ERROR)
    if fatal:  # the ranks ended the run on an error no restart can fix (train_loop.py)
        mlflow_run.close_if_open("FAILED", error_summary(RuntimeError(fatal)))
        raise RuntimeError(redact(f"run {run_name} failed: {fatal}. Its checkpoints are in {folder}; a retry "
                                  "would replay the same samples, so it was not retried"))

    checkpoint = result.checkpoint.path if result.checkpoint else None
    metrics, version = {}, None
    try:
        if result.checkpoint is not None:
            best = run_folder.read_best(folder) if cfg.checkpoint.keep_best else None
            with result.checkpoint.as_directory() as checkpoint_folder, tempfile.TemporaryDirectory() as scratch:
                chosen = (best, run_folder.local_best(folder, best, scratch)) if best else None
                metrics, version = log_finished_run(setup, checkpoint_folder, mlflow_run, run_name, best=chosen)
        log_report(mlflow_run)
        mlflow_run.end()
    except connection_errors() as exc:
        raise RuntimeError(
            f"run {run_name} trained to the end (checkpoint {checkpoint}), but its last metrics, evaluation, "
            f"overlays and model could not be logged to MLflow at {tracking.redacted_uri} "
            f"({type(exc).__name__}: {error_summary(exc)}); once the server is back, "
            f"`maskx train --config ... --resume {run_name}` logs them") from None
    return TrainingResult(run_name, folder, checkpoint, metrics, mlflow_run.run_id, tracking.uri, version)


def check_keep_best(cfg: TrainConfig) -> None:
    names = coco_metric_names()
    if cfg.checkpoint.keep_best not in names:
        raise ValueError(f"checkpoint.keep_best: {cfg.checkpoint.keep_best!r} is not a COCO metric maskx computes; one "
                         f"of {', '.join(names)}")
    if not cfg.data.val:
        raise ValueError(f"checkpoint.keep_best: {cfg.checkpoint.keep_best} needs data.val to evaluate on")


def _mlflow_run(setup: RunSetup, run_name: str, folder: str, tracking: Tracking,
                parent_run_id: Optional[str] = None) -> TrackedRun:
    """The run's MLflow run: the one recorded in its folder when resuming, else a new one."""
    run_id = run_folder.read_mlflow_run(folder)
    if run_id is not None:
        mlflow_run = tracking.run(run_id)
        mlflow_run.reopen()
        return mlflow_run
    cfg = setup.config
    mlflow_run = tracking.start_run(cfg.mlflow.experiment, run_name, cfg.to_dict(), dump_config(cfg),
                                    tags=run_tags(cfg, folder, parent_run_id), extra_params=setup.manifest_params())
    mlflow_run.log_datasets(setup.lineage())
    if setup.class_frequency is not None:
        log_class_frequency(mlflow_run, setup.class_frequency, cfg.data.repeat_threshold, setup.vocab)
    log_classes(mlflow_run, [use.manifest for use in setup.manifests if use.context == "train"], setup.set_a)
    try:
        run_folder.write_mlflow_run(folder, mlflow_run.run_id, tracking.redacted_uri)
    except FileExistsError:
        mlflow_run.close_if_open("FAILED", "another driver started this run name at the same time")
        raise
    return mlflow_run


def run_tags(cfg: TrainConfig, folder: str, parent_run_id: Optional[str]) -> dict[str, str]:
    tags = {"maskx.run_folder": folder, "maskx.config": cfg.name, "maskx.num_classes": str(cfg.model.num_classes),
            "maskx.mask_sets": ",".join(map(str, cfg.data.mask_sets)), "mlflow.source.name": "maskx train",
            "mlflow.source.type": "JOB"}
    commit = source_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return tags


def source_commit() -> Optional[str]:
    """The git commit of the maskx code running, when it runs from a checkout."""
    import subprocess

    try:
        found = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "HEAD"],
                               capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found.stdout.strip() if found.returncode == 0 else None
