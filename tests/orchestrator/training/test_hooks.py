"""The train loop's hooks on their own: what each writes, in which order they run."""
from types import SimpleNamespace

import ray

from maskx.orchestrator.training.hooks import CheckpointReport, KeysLog, PeriodicEvaluation, SystemMetrics, \
    TrainingMetrics, build_hooks


def test_after_a_step_metrics_come_before_the_evaluation_and_both_before_the_checkpoint_that_carries_them():
    kinds = [type(hook) for hook in build_hooks(SimpleNamespace(record_keys_to="/tmp/keys"))]
    assert kinds == [KeysLog, TrainingMetrics, PeriodicEvaluation, CheckpointReport, SystemMetrics]
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
