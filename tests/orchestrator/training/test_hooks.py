"""The train loop's hooks on their own: what each writes, in which order they run."""
from types import SimpleNamespace

import pytest
import ray
import ray.train

from maskx.orchestrator.training import hooks
from maskx.orchestrator.training.hooks import CheckpointReport, KeysLog, PeriodicEvaluation, PreemptionCheckpoint, \
    SystemMetrics, TrainingMetrics, build_hooks, check_skipped


def test_after_a_step_metrics_come_before_the_evaluation_and_both_before_the_checkpoint_that_carries_them():
    kinds = [type(hook) for hook in build_hooks(SimpleNamespace(record_keys_to="/tmp/keys"))]
    assert kinds == [KeysLog, TrainingMetrics, PeriodicEvaluation, CheckpointReport, PreemptionCheckpoint, SystemMetrics]
    assert KeysLog not in [type(hook) for hook in build_hooks(SimpleNamespace(record_keys_to=None))]


def test_the_keys_log_writes_each_start_and_step_and_closes_its_file(tmp_path, monkeypatch):
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "node7"))
    hook = KeysLog(str(tmp_path))
    worker = SimpleNamespace(rank=1, world_size=2, iteration=3, step=SimpleNamespace(keys=["coco-1", "vg-2"]))
    hook.before_train(worker)
    hook.after_step(worker)
    hook.after_train(worker)
    assert hook.file.closed
    start, *steps = (tmp_path / "rank1.txt").read_text().splitlines()
    assert start.split()[:3] == ["node", "node7", "2"]
    assert steps == ["3 coco-1", "3 vg-2"]


def test_more_unusable_samples_than_the_ceiling_fail_the_step_naming_the_key():
    check_skipped({"data/skipped_samples": 1.0, "data/drawn_samples": 4.0}, 0.5)
    check_skipped({"data/skipped_samples": 0.0, "data/drawn_samples": 0.0}, 0.0)
    with pytest.raises(RuntimeError, match=r"data: 1 of 4 samples drawn so far were unusable \(25.0% > data.max_skipped_fraction=0.0\)"):
        check_skipped({"data/skipped_samples": 1.0, "data/drawn_samples": 4.0}, 0.0)


@pytest.mark.parametrize("notice_at, checkpoint_every, expected", [(6, 100, [6]), (6, 3, []), (None, 100, [])])
def test_a_preemption_notice_is_asked_for_every_n_iterations_and_checkpointed_once(monkeypatch, notice_at,
                                                                                  checkpoint_every, expected):
    """Asked every 2 iterations (a barrier: all ranks at the same ones); the first notice gives a
    checkpoint of that iteration unless it is a checkpoint iteration anyway; later ones none."""
    asked, reported = [], []
    worker = SimpleNamespace(iteration=0, last=False, config=SimpleNamespace(
        checkpoint=SimpleNamespace(preemption_check_every=2, every=checkpoint_every)))
    worker.due = lambda every: worker.iteration % every == 0

    def preemption_info():
        asked.append(worker.iteration)
        noticed = notice_at is not None and worker.iteration >= notice_at
        return SimpleNamespace(preempted_node_ids=["n1"], preempted_ranks=[1], deadline_ms=None) if noticed else None

    monkeypatch.setattr(ray.train, "get_preemption_info", preemption_info)
    monkeypatch.setattr(hooks, "report_checkpoint", lambda w: reported.append(w.iteration))
    hook = PreemptionCheckpoint()
    for worker.iteration in range(1, 12):
        hook.after_step(worker)
    assert asked == ([2, 4, 6] if notice_at else [2, 4, 6, 8, 10]) and reported == expected
