"""COCOeval beside training: the periodic evaluations' scoring in a Ray task, not in the ranks.

At an evaluation every rank predicts its share of `data.val` (fast where training is fast: on the
training devices) and rank 0 gathers the records; COCOeval, the slow half (minutes on one core at
COCO val's size, while the inference takes seconds on 8 GPUs), runs in a Ray task while the ranks
train on. Rank 0 logs a task's metrics at the evaluated iteration when it has finished (looked at
after every step, without waiting), and waits for any still running before the run's last
evaluation, which is scored in the ranks as before: a run ends with every evaluation logged.

The task is placed beside rank 0 (its records stay on the node) and takes `eval_cpus` CPUs: 0 by
default, a core Ray has not handed out (COCOeval runs one thread); where training holds every CPU
Ray knows of, a task asking for one would wait for training to end.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Optional

import ray

from maskx.datasets.vocab import Vocabulary

from ..evaluation.records import Records
from ..evaluation.shards import Evaluation, score_shares

log = logging.getLogger(__name__)


@ray.remote(max_retries=0)
def _score(shares: list[tuple[Records, int]], vocab: Vocabulary, set_a: list[int], backend: str,
           error_analysis: bool) -> Evaluation:
    started = time.perf_counter()
    evaluation = score_shares(shares, vocab, set_a, backend, error_analysis)
    evaluation.metrics["eval/cocoeval_seconds"] = time.perf_counter() - started
    return dataclasses.replace(evaluation, detections=[])  # rank 0 has them; only the scores travel back


class BackgroundScoring:
    """Rank 0's COCOeval tasks in flight, by the iteration they evaluate. At the run's end it waits
    `wait_s` for them at most; a task not done by then (one that never got its CPUs, say) is
    cancelled and its records scored here, so the last step never waits forever."""

    def __init__(self, *, vocab: Vocabulary, set_a: list[int], backend: str, cpus: float, error_analysis: bool,
                 wait_s: float = 600.0):
        self.vocab, self.set_a, self.backend, self.cpus = vocab, set_a, backend, cpus
        self.error_analysis, self.wait_s = error_analysis, wait_s
        self.pending: list[tuple[int, ray.ObjectRef]] = []
        self.shares: dict[int, list[tuple[Records, int]]] = {}  # kept to score here if a task never ends

    def submit(self, shares: list[tuple[Records, int]], iteration: int) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        task = _score.options(num_cpus=self.cpus, scheduling_strategy=here).remote(
            shares, vocab=self.vocab, set_a=self.set_a, backend=self.backend, error_analysis=self.error_analysis)
        self.pending.append((iteration, task))
        self.shares[iteration] = shares

    def finished(self, wait: bool = False) -> list[tuple[int, Optional[Evaluation]]]:
        """(iteration, evaluation) of the tasks done (all of them with `wait`), in iteration order; a
        task that failed is logged and gives None: training does not stop for an evaluation."""
        tasks = [task for _, task in self.pending]
        done, _ = ray.wait(tasks, num_returns=len(tasks), timeout=self.wait_s if wait else 0) if tasks else ([], [])
        results = []
        for iteration, task in [p for p in self.pending if p[1] in done]:
            try:
                results.append((iteration, ray.get(task)))
            except Exception as exc:
                log.warning("evaluation of iteration %d failed in its COCOeval task: %s", iteration, exc)
                results.append((iteration, None))
            del self.shares[iteration]
        self.pending = [p for p in self.pending if p[1] not in done]
        if wait:
            for iteration, task in self.pending:
                log.warning("the COCOeval task of iteration %d did not end within %.0f s (eval_wait_s): cancelled, "
                            "scored here", iteration, self.wait_s)
                ray.cancel(task, force=True)
                results.append((iteration, score_shares(self.shares.pop(iteration), self.vocab, self.set_a,
                                                        self.backend, self.error_analysis)))
            self.pending = []
        return sorted(results, key=lambda result: result[0])


def log_line(metrics: dict[str, float], iteration: Optional[int] = None) -> str:
    where = f" of iteration {iteration} (scored beside training)" if iteration is not None else ""
    return (f"eval{where}: box AP {metrics['bbox/all/AP']:.3f} (set A {metrics['bbox/setA/AP']:.3f}, "
            f"set B {metrics['bbox/setB/AP']:.3f}), mask AP {metrics['segm/all/AP']:.3f} "
            f"(set A {metrics['segm/setA/AP']:.3f}, set B {metrics['segm/setB/AP']:.3f})")
