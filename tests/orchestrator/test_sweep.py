"""`maskx tune` on a local Ray instance with a real MLflow server: 4 trials of 1 worker each, ASHA,
one parent run with 4 children, champion alias set by the first sweep."""
import os

import pytest

from orchestrator.config import load_config
from orchestrator.sweep import search_space, sweep


SWEEP = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "sweep-tiny-cpu.yaml")


def sweep_overrides(synth_shards, tmp, tracking_uri):
    return [f"data.train=[{{manifest: {synth_shards['coco_train']}, weight: 1.0}}, {{manifest: {synth_shards['vg']}, weight: 0.5}}]",
            f"data.val={synth_shards['coco_val']}", "data.batch_size=2", "solver.max_iter=4", "solver.warmup_iters=1",
            "log_every=1", "checkpoint.every=1", f"checkpoint.storage_path={tmp}/runs", f"sweep.storage_path={tmp}/sweeps",
            f"mlflow.tracking_uri={tracking_uri}", "mlflow.experiment=sweep-test", "mlflow.registered_model=maskx-sweep-test",
            "sweep.metric=loss/loss", "sweep.mode=min", "sweep.reduction_factor=4",
            "sweep.space={solver.lr: {grid: [0.02, 0.0001]}, model.box_loss.gamma: {grid: [0.0, 2.0]}}"]


def test_space_entries_are_checked_by_key():
    cfg = load_config(SWEEP, ["sweep.space={model.box_loss.gamma: {uniform: [0, 2]}}"])
    with pytest.raises(ValueError, match="sweep.space.model.box_loss.gamma: search=grid takes only grid"):
        search_space(cfg.sweep)
    cfg = load_config(SWEEP, ["sweep.space={solver.lr: {normal: [0, 1]}}"])
    with pytest.raises(ValueError, match="sweep.space.solver.lr: expected one of"):
        search_space(cfg.sweep)


@pytest.mark.integration
@pytest.mark.skip(reason="sweeps (#5) are written but not yet run end to end; unskip when they are")
def test_four_trial_sweep_stops_some_early_and_sets_the_champion(synth_shards, mlflow_server, tmp_path):
    import mlflow
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = sweep(load_config(SWEEP, sweep_overrides(synth_shards, tmp_path, mlflow_server)))
    finally:
        ray.shutdown()
    statuses = sorted(t["status"] for t in result.trials)
    assert len(result.trials) == 4 and "finished" in statuses and "stopped early" in statuses, result.trials

    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("sweep-test").experiment_id
    runs = client.search_runs([experiment])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert len(runs) == 5 and len(children) == 4
    assert all(r.info.status != "RUNNING" for r in runs)  # no orphan left open
    champion = client.get_model_version_by_alias("maskx-sweep-test", "champion")
    assert champion.run_id == result.best["mlflow_run_id"]
    assert result.promotion["decision"] == "promoted: no champion yet"
    parent_artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "sweep")}
    assert {"sweep/trials.json", "sweep/metric_by_param.png", "sweep/promotion.json"} <= parent_artifacts
