"""The train loop's hooks on their own: what each writes, in which order they run."""
from types import SimpleNamespace

import pytest
import ray
import ray.train

from maskx.orchestrator.training import hooks
from maskx.datasets.vocab import Vocabulary, VocabClass
from maskx.orchestrator import run_folder
from maskx.orchestrator.config import TrainConfig
from maskx.orchestrator.evaluation.shards import Evaluation
from maskx.orchestrator.training.evaluation_hooks import KeepBest, PeriodicEvaluation
from maskx.orchestrator.training.hooks import CheckpointReport, KeysLog, PreemptionCheckpoint, SystemMetrics, \
    TrainingMetrics, check_skipped
from maskx.orchestrator.training.train_loop import build_hooks


def test_after_a_step_metrics_come_before_the_evaluation_and_both_before_the_checkpoint_that_carries_them():
    # KeepBest between the evaluation and the checkpoint: it reads the scores the evaluation hands on.
    kinds = [type(hook) for hook in build_hooks(SimpleNamespace(record_keys_to="/tmp/keys"))]
    assert kinds == [KeysLog, TrainingMetrics, PeriodicEvaluation, KeepBest, CheckpointReport, PreemptionCheckpoint,
                     SystemMetrics]
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


def test_the_best_evaluation_is_kept_with_its_own_weights_whenever_its_score_arrives(tmp_path):
    """Evaluations at 2, 4, 6, 8 scored in the background one step late (6's COCOeval fails), the
    last one inline: the best (4) is written with the weights it had at 4, not later ones; the
    previous best's folder goes; a restart keeps it until something beats it."""
    import torch

    metric = "segm/setB/AP"
    config = TrainConfig()
    config.checkpoint.keep_best = metric
    model = torch.nn.Linear(2, 1)
    worker = SimpleNamespace(rank=0, config=config, job=SimpleNamespace(run_folder=str(tmp_path)), model=model,
                             setup=SimpleNamespace(vocab=Vocabulary([VocabClass("kite", 38)])))
    scores = {2: 0.1, 4: 0.3, 8: 0.2}

    def scored(iteration):
        return (iteration, Evaluation({metric: scores[iteration]}, {"segm": {}}, []) if iteration in scores else None)

    hook = KeepBest()
    hook.before_train(worker)
    weights_at = {}
    for worker.iteration in (2, 4, 6, 8):
        torch.nn.init.constant_(model.weight, float(worker.iteration))
        weights_at[worker.iteration] = model.weight.clone()
        worker.evaluated = True
        worker.scored = [scored(worker.iteration - 2)] if worker.iteration > 2 else []
        if worker.iteration == 8:
            worker.scored.append(scored(8))
        hook.after_step(worker)
    hook.after_train(worker)
    best = run_folder.read_best(str(tmp_path))
    assert best == run_folder.BestModel(iteration=4, metric=metric, value=0.3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "best_00000004"] and not hook.candidates
    kept = run_folder.load_complete_state(str(tmp_path / "best_00000004"))
    assert torch.equal(kept["model"]["weight"], weights_at[4]) and kept["iteration"] == 4
    assert run_folder.read_evaluation(str(tmp_path / "best_00000004"))["metrics"] == {metric: 0.3}

    restarted = KeepBest()
    restarted.before_train(worker)
    worker.iteration, worker.evaluated, worker.scored = 10, True, [(10, Evaluation({metric: 0.25}, {}, []))]
    restarted.after_step(worker)
    restarted.after_train(worker)
    assert run_folder.read_best(str(tmp_path)).iteration == 4
