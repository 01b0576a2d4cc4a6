"""`train_loop_per_worker` for Ray Train's TorchTrainer: set up, loop, report.

The worker (`worker.py`) holds the model, solver and data position and runs a step; each other
concern (metrics, evaluation, checkpoints, keys log, system metrics) is a hook (`hooks.py`,
`evaluation_hooks.py`), run in the order `build_hooks` gives.
"""
from __future__ import annotations

import logging
from typing import Optional

from ..compat import ray_train_report_logger
from ..redaction import redact_logs
from .evaluation_hooks import KeepBest, PeriodicEvaluation
from .hooks import CheckpointReport, Hook, KeysLog, PreemptionCheckpoint, SystemMetrics, TrainingMetrics
from .step import AmpUnsupported, NonFiniteLoss
from .worker import Worker, WorkerJob

FATAL_ERROR = "fatal_error"  # what the ranks return instead of raising an error no retry can fix


def build_hooks(job: WorkerJob) -> list[Hook]:
    """In the order they run after a step: the evaluation's metrics join the checkpoint it reports."""
    hooks: list[Hook] = [KeysLog(job.record_keys_to)] if job.record_keys_to else []
    return hooks + [TrainingMetrics(), PeriodicEvaluation(), KeepBest(), CheckpointReport(), PreemptionCheckpoint(),
                     SystemMetrics()]


def train_loop_per_worker(loop_config: dict) -> Optional[dict]:
    job: WorkerJob = loop_config["job"]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    redact_logs()
    if not job.verbose:
        # Ray Train logs every report as a dict of all metrics; maskx's console line says it better.
        ray_train_report_logger().setLevel(logging.WARNING)
        logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font cache's INFO lines
    try:
        worker = Worker(job)
    except AmpUnsupported as exc:  # this GPU: every retry would fail the same way
        logging.getLogger(__name__).error("%s", exc)
        return {FATAL_ERROR: str(exc)}
    hooks = build_hooks(job)
    try:
        for hook in hooks:
            hook.before_train(worker)
        for step in worker.steps():
            for hook in hooks:
                hook.before_step(worker)
            try:
                worker.run_step(step)
            except NonFiniteLoss as exc:
                # Every rank is here with the same message (train_step agrees first). Raising would
                # make Ray Train restart from the last checkpoint and replay the same samples into
                # the same NaN, max_failures times: the ranks end the run instead, and the driver fails it.
                logging.getLogger(__name__).error("%s", exc)
                return {FATAL_ERROR: str(exc)}  # rank 0's return value is the driver's Result.return_value
            for hook in hooks:
                hook.after_step(worker)
    finally:
        for hook in hooks:
            hook.after_train(worker)
