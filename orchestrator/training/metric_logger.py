"""Rank 0's metrics during training, and the world size of an elastic run, to MLflow.

A tracking server that is down does not stop training: metrics wait in a buffer and go out with the
next call that reaches the server (or travel with the last checkpoint for the driver to send).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Optional

from ray.train import UserCallback

from maskx.datasets.partitions import EpochLayout

from ..redaction import error_summary
from ..tracking.store import TrackedRun, Tracking, log_metric_batches

log = logging.getLogger(__name__)

RESIZE_TAG = "maskx.resize."  # maskx.resize.1, .2, ...: one per change of world size
FAILURE_TAG = "maskx.last_failure"


class MetricLogger:
    """Metrics with steps from rank 0.

    A restarted run redoes the iterations since its checkpoint on the same samples; the steps the
    interrupted pass already logged are not logged again, so no step of a metric appears twice."""

    def __init__(self, run: Optional[TrackedRun], in_training_process: bool = False):
        self.run = run
        self.pending: list = []
        self.already_logged: dict[str, set[int]] = {}
        self._warned = False
        if in_training_process:
            # MLflow's client retries a refused request for minutes (process-wide settings); a
            # training step must not wait on it: fail at once and keep the metrics for later.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

    def resume_after(self, iteration: int) -> None:
        """The run continues after `iteration`: note what its interrupted pass logged beyond that."""
        if self.run is None:
            return
        try:
            self.already_logged = self.run.logged_steps(after=iteration)
        except Exception as exc:  # the server is down: redone steps may then be logged twice
            log.warning("MLflow at %s unreachable (%s): if this pass redoes iterations after %d, their metrics may "
                        "appear twice", self.run.tracking.redacted_uri, type(exc).__name__, iteration)
        redone = sorted(set().union(*self.already_logged.values())) if self.already_logged else []
        if redone:
            log.info("steps %s were logged before the restart; their metrics are not logged again", redone)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in metrics.items()
                         if step not in self.already_logged.get(k, ())]
        self.flush()

    def flush(self) -> bool:
        if self.run is None or not self.pending:
            return True
        try:
            log_metric_batches(self.run.client, self.run.run_id, self.pending)
            self.pending = []
            self._warned = False
            return True
        except Exception as exc:  # the server is down or restarting: keep the metrics, keep training
            if not self._warned:
                log.warning("MLflow at %s unreachable (%s); %d metric values buffered until it is back",
                            self.run.tracking.redacted_uri, type(exc).__name__, len(self.pending))
                self._warned = True
            return False

    def unsent(self) -> list[dict]:
        return [{"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step} for m in self.pending]

    def log_world_size(self, iteration: int, previous: Optional[int], layout: EpochLayout) -> None:
        """`train/world_size` at the (re)start, and a `maskx.resize.N` tag when it differs from the
        world size the run last trained at: the last one logged, else the checkpoint writer's (`previous`).
        A shrink and a grow before the next checkpoint are two resizes, though both restarts load the
        same checkpoint. The tag says when, from, to, why."""
        current, plan = layout.world_size, layout.plan
        if self.run is not None and previous is not None:
            try:
                previous = int(self.run.latest_metrics().get("train/world_size", previous))
            except Exception:  # the server is down: the checkpoint writer's world size it is
                pass
        self.log({"train/world_size": float(current)}, iteration)
        if self.run is None or previous is None or previous == current:
            return
        try:
            tags = self.run.tags()
            number = 1 + sum(key.startswith(RESIZE_TAG) for key in tags)
            if current < previous:
                why = f"fewer workers after a failure ({tags.get(FAILURE_TAG, 'a worker or its node was lost')})"
            else:
                why = "more workers: capacity returned (or a --resume with more)"
            self.run.set_tags({f"{RESIZE_TAG}{number}": (
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} iteration {iteration}: {previous} -> {current} "
                f"workers, {len(layout.micro_batch_sizes(0, 0))} micro-batches per step on rank 0, global batch "
                f"{plan.global_batch} kept ({plan.partitions} data partitions); {why}")})
        except Exception as exc:  # the server is down: the metric waits in the buffer, the tag is lost
            log.warning("MLflow unreachable (%s): the resize %d -> %d is not tagged", type(exc).__name__, previous, current)


class FailureRecorder(UserCallback):
    """On Ray Train's controller: the latest worker failure as the run's `maskx.last_failure` tag,
    which the restarted rank 0 quotes as the reason when it records a resize."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri, self.run_id = tracking_uri, run_id

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        rank, error = min(worker_exceptions.items())
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            Tracking(self.tracking_uri).run(self.run_id).set_tags(
                {FAILURE_TAG: f"{when} rank {rank}: {type(error).__name__}: {error_summary(error)}"})
        except Exception as exc:  # never let bookkeeping stop Ray's recovery
            log.warning("could not tag the failure in MLflow (%s)", type(exc).__name__)
