"""`maskx tune` on a local Ray instance (with its dashboard: Train V2 frees a stopped trial's workers
through the state API) and a real MLflow server. The sweeps share one registered model, so they run
in order: the first sets the champion, a worse one keeps it, and an interrupted-then-resumed better
one takes it."""
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from maskx.orchestrator.config import load_config
from maskx.orchestrator.tuning.search_space import search_space
from maskx.orchestrator.tuning.sweep import sweep
from ...conftest import wait_until

SWEEP = os.path.join(os.path.dirname(__file__), "..", "..", "..", "configs", "sweep-tiny-cpu.yaml")
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
MODEL = "maskx-sweep-test"

pytestmark = pytest.mark.sweep


def sweep_overrides(synth_shards, tmp, tracking_uri, experiment="sweep-test"):
    return [f"data.train=[{{manifest: {synth_shards['coco_train']}, weight: 1.0}}, {{manifest: {synth_shards['vg']}, weight: 0.5}}]",
            f"data.val={synth_shards['coco_val']}", "data.batch_size=2", "solver.max_iter=4", "solver.warmup_iters=1",
            "log_every=1", "checkpoint.every=1", f"checkpoint.storage_path={tmp}/runs", f"sweep.storage_path={tmp}/sweeps",
            f"mlflow.tracking_uri={tracking_uri}", f"mlflow.experiment={experiment}", f"mlflow.registered_model={MODEL}",
            "sweep.metric=loss/loss", "sweep.mode=min",
            # Trials' figures are test_train.py's; the sweep's own page is tested here (CI time).
            "mlflow.eval_figures=false", "mlflow.eval_images=0"]


def test_space_entries_are_checked_by_key():
    cfg = load_config(SWEEP, ["sweep.space={model.box_loss.gamma: {uniform: [0, 2]}}"])
    with pytest.raises(ValueError, match="sweep.space.model.box_loss.gamma: search=grid takes only grid"):
        search_space(cfg.sweep)
    cfg = load_config(SWEEP, ["sweep.space={solver.lr: {normal: [0, 1]}}"])
    with pytest.raises(ValueError, match="sweep.space.solver.lr: expected one of"):
        search_space(cfg.sweep)


@pytest.fixture(scope="module")
def sweep_ray():
    import ray

    context = ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    yield context.address_info["address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def first_sweep(sweep_ray, synth_shards, mlflow_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep1")
    lines = []
    overrides = sweep_overrides(synth_shards, tmp, mlflow_server) + [
        "sweep.reduction_factor=4", "sweep.space={solver.lr: {grid: [0.02, 0.0001]}, model.box_loss.gamma: {grid: [0.0, 2.0]}}"]
    return sweep(load_config(SWEEP, overrides), write=lines.append), lines


@pytest.mark.integration
@pytest.mark.core
def test_four_trial_sweep_stops_some_early_and_sets_the_champion(first_sweep, mlflow_server, synth_shards, tmp_path):
    import mlflow
    import ray

    result, lines = first_sweep
    statuses = sorted(t.status for t in result.trials)
    assert len(result.trials) == 4 and "finished" in statuses and "stopped early" in statuses, result.trials
    assert any("stopped early" in line for line in lines) and any("finished" in line for line in lines), lines

    # Stopped trials give their workers back: the whole cluster is free again.
    wait_until(lambda: ray.available_resources().get("CPU", 0) >= 2, "all CPUs free", timeout=30, interval=1)
    assert ray.available_resources().get("CPU", 0) == 2

    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("sweep-test").experiment_id
    runs = client.search_runs([experiment])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert len(runs) == 5 and len(children) == 4
    assert all(r.info.status != "RUNNING" for r in runs)
    assert sorted(r.info.status for r in children) == sorted("FINISHED" if s == "finished" else "KILLED" for s in statuses), \
        [(r.info.run_name, r.info.status, r.data.tags.get("maskx.end_reason")) for r in children] + result.trials
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id == result.best.mlflow_run_id
    assert result.best.metric == min(t.metric for t in result.trials if t.status == "finished")
    assert result.promotion.decision == "promoted: no champion yet"
    # Its card says what it is and which sweep put it there, on which metric.
    assert "Mask^X R-CNN" in champion.description and f"({result.parent_run_id}): its best trial on `" in champion.description
    assert "promoted: no champion yet" in champion.description
    parent_artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "sweep")}
    assert {"sweep/trials.json", "sweep/metric_by_param.png", "sweep/promotion.json"} <= parent_artifacts
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["promotion.decision"] == "promoted: no champion yet"
    # The sweep's page: its trials, each trial's metric over time with the scheduler's stops, the decision.
    page = open(mlflow.artifacts.download_artifacts(run_id=result.parent_run_id, artifact_path="report.html",
                                                    dst_path=str(tmp_path), tracking_uri=mlflow_server)).read()
    for section in ("<h2>Trials</h2>", "Trials over time (scheduler stops marked)", "Champion decision",
                    "promoted: no champion yet", "sweep/metric_by_param.png"):
        assert section in page, section
    assert all(t.trial in page for t in result.trials)
    # The champion is what `maskx eval` takes by alias (loaded through the safe weights-only path).
    from maskx.orchestrator.cli import main

    overrides = sweep_overrides(synth_shards, tmp_path, mlflow_server)
    assert main(["eval", "--config", SWEEP, *overrides, "--model", f"models:/{MODEL}@champion",
                 "--json", str(tmp_path / "champion.json")]) == 0
    assert "segm/setB/AP" in json.load(open(tmp_path / "champion.json"))["metrics"]
    assert parent.data.metrics["promotion/new_value"] == pytest.approx(result.best.metric)


@pytest.mark.integration
def test_a_sweep_whose_best_is_worse_keeps_the_champion(first_sweep, synth_shards, mlflow_server, tmp_path):
    import mlflow

    champion_before = mlflow.MlflowClient(mlflow_server).get_model_version_by_alias(MODEL, "champion").version
    # lr 0: the model stays at its initialisation, so its loss cannot beat the trained champion's.
    overrides = sweep_overrides(synth_shards, tmp_path, mlflow_server) + ["sweep.scheduler=fifo", "sweep.space={solver.lr: {grid: [0.0]}}"]
    result = sweep(load_config(SWEEP, overrides))

    client = mlflow.MlflowClient(mlflow_server)
    assert result.promotion.decision == "kept the champion: the new model does not beat it", result.promotion
    assert result.promotion.new_value > result.promotion.champion_value == pytest.approx(first_sweep[0].best.metric)
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion_before
    assert client.get_model_version(MODEL, result.promotion.new_version)  # registered all the same
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["promotion.decision"].startswith("kept the champion")
    assert parent.data.metrics["promotion/champion_value"] == pytest.approx(result.promotion.champion_value)


def _wait_for_children(client, experiment: str, proc, timeout: float = 300):
    """The first trial's run once it finished and the second trial has reported (so is mid-run)."""
    def first_finished_second_reporting():
        found = client.get_experiment_by_name(experiment)
        children = [r for r in (client.search_runs([found.experiment_id]) if found else [])
                    if "mlflow.parentRunId" in r.data.tags]
        finished = [r for r in children if r.info.status == "FINISHED"]
        reporting = [r for r in children if r.info.status == "RUNNING" and "loss/loss" in r.data.metrics]
        return finished[0] if finished and reporting else None

    return wait_until(first_finished_second_reporting, "the sweep's second trial running", lambda: proc.poll() is None,
                      proc.stdout.read, timeout, interval=0.5)


@pytest.mark.integration
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(first_sweep, sweep_ray, synth_shards, mlflow_server,
                                                                     tmp_path):
    """Ctrl-C while the second of two trials runs, then `maskx tune --resume`: the finished trial is not
    rerun, the other continues from its checkpoint in its own MLflow run, and this sweep's better best
    takes the champion alias."""
    import mlflow

    client = mlflow.MlflowClient(mlflow_server)
    config_args = ["--config", SWEEP] + sweep_overrides(synth_shards, tmp_path, mlflow_server, "sweep-resume-test") + [
        "solver.max_iter=12", "log_every=4", "checkpoint.every=4", "sweep.scheduler=fifo", "sweep.max_concurrent_trials=1",
        "sweep.space={solver.lr: {grid: [0.02, 0.01]}}"]
    env = {**os.environ, "RAY_ADDRESS": sweep_ray, "RAY_AUTH_MODE": "token", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-P", "-m", "maskx.orchestrator.cli", "tune"] + config_args
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        done_first = _wait_for_children(client, "sweep-resume-test", proc)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    sweep_name = out.split("--resume ")[-1].split()[0]  # by its name, as train's --resume takes a run's
    first_folder = done_first.data.tags["maskx.run_folder"]
    checkpoints_before = sorted(os.listdir(first_folder))

    resumed = subprocess.run(command + ["--resume", sweep_name], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "reproduce: maskx train --config" in resumed.stdout
    sweep_folder = re.search(r"^sweep (\S+) \(MLflow parent run", resumed.stdout, re.M).group(1)
    assert os.path.basename(sweep_folder) == sweep_name

    parent_id = json.load(open(os.path.join(sweep_folder, "maskx_sweep.json")))["parent_run_id"]
    experiment = client.get_experiment_by_name("sweep-resume-test").experiment_id
    runs = client.search_runs([experiment])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert len(runs) == 3 and len(children) == 2  # one parent, no duplicated child for the resumed trial
    assert all(r.info.status == "FINISHED" for r in runs)
    again = client.get_run(done_first.info.run_id)
    assert again.info.end_time == done_first.info.end_time  # the finished trial was not rerun
    assert sorted(os.listdir(first_folder)) == checkpoints_before
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "loss/loss")]
        assert sorted(set(steps)) == [4, 8, 12], steps  # the resumed trial continued where it stopped

    with open(client.download_artifacts(parent_id, "sweep/promotion.json", str(tmp_path))) as f:
        promotion = json.load(f)
    assert promotion["decision"] == "promoted: beats the champion", promotion
    assert promotion["new_value"] < promotion["champion_value"]
    assert client.get_model_version_by_alias(MODEL, "champion").version == promotion["new_version"]


def test_every_knob_of_the_r50_sweep_is_a_config_key_a_trial_can_take():
    """Optuna's suggestions over the shipped COCO+VG space become valid trial configs (the VG mix ratio
    through a list index), with no Ray session."""
    from ray.tune.search.optuna import OptunaSearch

    from maskx.orchestrator.tuning.search_space import trial_config

    cfg = load_config(os.path.join(REPO, "configs", "sweep-coco-vg-r50.yaml"))
    searcher = OptunaSearch(seed=0)
    assert searcher.set_search_properties(cfg.sweep.metric, cfg.sweep.mode, search_space(cfg.sweep))
    for i in range(3):
        overrides = searcher.suggest(f"t{i}")["overrides"]
        trial = trial_config(cfg.to_dict(), overrides)
        assert trial.data.train[1].weight == overrides["data.train.1.weight"]
        assert trial.model.mask_head.transfer_input == overrides["model.mask_head.transfer_input"]
        assert trial.model.box_loss.gamma == pytest.approx(overrides["model.box_loss.gamma"])
        assert trial.solver.lr == pytest.approx(overrides["solver.lr"])


ABLATION_TRAIN = os.path.join(REPO, "configs", "ablation-tiny-cpu.yaml")
ABLATION_SWEEP = os.path.join(REPO, "configs", "ablation-mask-head.yaml")


STAGE_WISE = ["model.init_from=models:/detector/1", "model.init_from_parts=[backbone, rpn, box_head]",
              "model.freeze=[backbone, rpn, box_head]"]


@pytest.mark.parametrize("protocol", ["end to end", "stage-wise"])
@pytest.mark.parametrize("train_config", ["ablation-tiny-cpu.yaml", "voc-to-nonvoc-r50.yaml"])
def test_the_ablation_sweep_runs_unchanged_on_the_cpu_and_the_gpu_config(train_config, protocol):
    """Every variant of configs/ablation-mask-head.yaml is a valid trial of either training config, in
    either protocol, and changes only the mask head; the sweep runs each to the full schedule and
    registers nothing."""
    from maskx.orchestrator.tuning.search_space import VARIANT_KEY, trial_config, trial_overrides

    overrides = STAGE_WISE if protocol == "stage-wise" else []
    cfg = load_config(os.path.join(REPO, "configs", train_config), overrides, sweep_path=ABLATION_SWEEP)
    assert cfg.sweep.scheduler == "fifo" and cfg.sweep.promote is False
    assert list(cfg.sweep.variants) == ["class-agnostic", "class-agnostic+MLP", "transfer (cls)", "transfer (box)",
                                        "transfer (cls+box)", "transfer+MLP (cls+box)"]
    space = search_space(cfg.sweep)
    assert space[VARIANT_KEY] == {"grid_search": list(cfg.sweep.variants)}
    base = cfg.to_dict()
    modes = {}
    for name in cfg.sweep.variants:
        trial = trial_config(base, trial_overrides(cfg.sweep.variants, {VARIANT_KEY: name, "overrides": {"seed": 2}}))
        modes[name] = (trial.model.mask_head.mode, trial.model.mask_head.transfer_input)
        assert trial.seed == 2 and trial.solver == cfg.solver and trial.data == cfg.data
        assert trial.model.backbone == cfg.model.backbone and trial.model.box_loss == cfg.model.box_loss
        assert trial.model.freeze == (["backbone", "rpn", "box_head"] if overrides else [])
        assert trial.model.init_from == ("models:/detector/1" if overrides else None)
    assert modes["class-agnostic"][0] == "class_agnostic" and modes["class-agnostic+MLP"][0] == "class_agnostic+mlp"
    assert [modes[f"transfer ({i})"] for i in ("cls", "box", "cls+box")] == [("transfer", "cls"), ("transfer", "box"),
                                                                          ("transfer", "cls+box")]
    assert modes["transfer+MLP (cls+box)"] == ("transfer+mlp", "cls+box")


def test_resume_takes_a_sweep_by_its_name_as_train_takes_a_run_or_by_its_folder(tmp_path, monkeypatch):
    from maskx.orchestrator.tuning.sweep import sweep_folder_of

    monkeypatch.chdir(tmp_path)
    name = "sweep-tiny-cpu-sweep-20261125-101500"
    assert sweep_folder_of(name, "runs/sweeps") == str(tmp_path / "runs" / "sweeps" / name)
    assert sweep_folder_of(name, "s3://bucket/sweeps") == f"s3://bucket/sweeps/{name}"
    assert sweep_folder_of(f"runs/sweeps/{name}", "elsewhere") == str(tmp_path / "runs" / "sweeps" / name)
    assert sweep_folder_of(f"s3://bucket/sweeps/{name}", "elsewhere") == f"s3://bucket/sweeps/{name}"


def test_variants_need_a_grid_without_early_stopping():
    cfg = load_config(ABLATION_TRAIN, ["sweep.scheduler=asha"], sweep_path=ABLATION_SWEEP)
    with pytest.raises(ValueError, match="sweep.variants: an ablation compares its variants at the same budget"):
        search_space(cfg.sweep)


def test_variant_table_is_mean_and_sample_std_over_finished_seeds():
    from maskx.orchestrator.tuning.sweep_report import variant_table, variant_table_markdown
    from maskx.orchestrator.tuning.trials import Trial

    def trial(variant, status, ap):
        return Trial(trial=f"{variant}-{ap}", status=status, params={}, metric=ap, mlflow_run_id=None, variant=variant,
                     table_metrics={"segm/setB/AP": ap})

    trials = [trial("a", "finished", 0.10), trial("a", "finished", 0.14), trial("a", "error", None),
              trial("b", "finished", 0.30)]
    rows = variant_table(trials, ["b", "a"], ["segm/setB/AP"])
    assert [r.variant for r in rows] == ["b", "a"]
    a = rows[1].metrics["segm/setB/AP"]
    assert a.mean == pytest.approx(0.12) and a.std == pytest.approx(0.02 * 2 ** 0.5) and a.values == [0.10, 0.14]
    assert rows[0].metrics["segm/setB/AP"].std is None
    markdown = variant_table_markdown(rows, ["segm/setB/AP"])
    assert markdown.splitlines()[0] == "| method | set-B mask AP | seeds |"
    assert "| b | 30.0 | 1 |" in markdown and "| a | 12.0 ± 2.8 | 2 of 3 |" in markdown


@pytest.mark.integration
def test_ablation_sweep_logs_the_paper_table_on_its_parent_run(sweep_ray, synth_shards, mlflow_server, tmp_path):
    """Two of the ablation's variants with two seeds each: every trial runs the whole schedule, and the
    parent run's table holds, per variant, the mean and spread of its trials' final set-A/set-B mask AP
    as MLflow recorded them."""
    import statistics

    import mlflow

    shipped = load_config(ABLATION_TRAIN, sweep_path=ABLATION_SWEEP).sweep.variants
    two = {name: shipped[name] for name in ("class-agnostic", "transfer+MLP (cls+box)")}
    overrides = [f"data.train=[{{manifest: {synth_shards['coco_train']}, weight: 1.0}}]", f"data.val={synth_shards['coco_val']}",
                 "data.batch_size=2", "solver.max_iter=4", "solver.warmup_iters=1", "solver.steps=[3]", "log_every=2",
                 # The table is under test, not the head: the MLP on the reduced features keeps each trial's
                 # model and checkpoints small (on the upsampled ones its FC alone holds 39M weights).
                 "model.mask_head.mlp_input=reduced", "model.mask_head.mlp_channels=16",
                 "checkpoint.every=4", f"checkpoint.storage_path={tmp_path}/runs", f"mlflow.tracking_uri={mlflow_server}",
                 "mlflow.experiment=ablation-test", f"sweep.variants={json.dumps(two)}", "sweep.space={seed: {grid: [0, 1]}}",
                 "mlflow.eval_figures=false", "mlflow.eval_images=0"]
    result = sweep(load_config(ABLATION_TRAIN, overrides, sweep_path=ABLATION_SWEEP))

    assert sorted((t.variant, t.status, t.iteration) for t in result.trials) == sorted(
        (name, "finished", 4) for name in two for _ in range(2))
    assert result.promotion.decision == "not registered: sweep.promote is false"
    assert result.sweep_folder.startswith(str(tmp_path / "runs" / "sweeps"))  # default: under checkpoint.storage_path
    client = mlflow.MlflowClient(mlflow_server)
    children = [r for r in client.search_runs([client.get_experiment_by_name("ablation-test").experiment_id])
                if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert len(children) == 4
    with open(client.download_artifacts(result.parent_run_id, "sweep/variants.json", str(tmp_path))) as f:
        logged = json.load(f)  # MLflow's table layout: {"columns": [...], "data": [[row], ...]}
    table = {column: [row[i] for row in logged["data"]] for i, column in enumerate(logged["columns"])}
    with open(client.download_artifacts(result.parent_run_id, "sweep/variants.md", str(tmp_path))) as f:
        markdown = f.read()
    assert markdown == result.variant_table
    assert markdown.splitlines()[0] == "| method | set-A mask AP | set-B mask AP | set-B mask AP50 | set-B mask AP75 | seeds |"
    assert table["method"] == list(two) and table["seeds"] == [2, 2]
    for row, name in enumerate(two):
        runs = [c for c in children if c.data.params["model.mask_head.mode"] == shipped[name]["model.mask_head.mode"]]
        assert sorted(c.data.params["seed"] for c in runs) == ["0", "1"]
        for metric in ("segm/setA/AP", "segm/setB/AP", "segm/setB/AP75"):
            values = [c.data.metrics[metric] for c in runs]
            assert table[f"{metric} mean"][row] == pytest.approx(statistics.fmean(values))
            assert table[f"{metric} std"][row] == pytest.approx(statistics.stdev(values))
