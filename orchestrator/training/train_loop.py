"""`train_loop_per_worker` for Ray Train's TorchTrainer: set up, loop, report.

The worker (`worker.py`) holds the model, solver and data position and runs a step; each other
concern (metrics, evaluation, checkpoints, keys log, system metrics) is a hook (`hooks.py`).
"""
from __future__ import annotations

import logging

from ..compat import ray_train_report_logger
from .hooks import build_hooks
from .worker import Worker, WorkerJob


def train_loop_per_worker(loop_config: dict) -> None:
    job: WorkerJob = loop_config["job"]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not job.verbose:
        # Ray Train logs every report as a dict of all metrics; maskx's console line says it better.
        ray_train_report_logger().setLevel(logging.WARNING)
    worker = Worker(job)
    hooks = build_hooks(job)
    try:
        for hook in hooks:
            hook.before_train(worker)
        for step in worker.steps():
            for hook in hooks:
                hook.before_step(worker)
            worker.run_step(step)
            for hook in hooks:
                hook.after_step(worker)
    finally:
        for hook in hooks:
            hook.after_train(worker)
