"""End to end as a user runs it: `ray start --head` (token auth), `ray job submit -- maskx train`, and a
real MLflow tracking server that ends up with the run's params, metrics, eval artifacts and a
registered model that loads and predicts."""
import json
import os
import secrets
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.core, pytest.mark.cluster, pytest.mark.tracking]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PLANTED_SECRET = "FAKEplantedSECRETvalue0123456789"


@pytest.fixture(scope="module")
def ray_head(team_server):
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
               PATH=f"{BIN}:{os.environ['PATH']}")
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # the job brings its user's own
        env.pop(name, None)
    dashboard = free_port()
    subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={free_port()}", f"--dashboard-port={dashboard}",
                    "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", "--num-cpus=3",
                    "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=180)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_the_job_agent(env, address)
        yield env, address
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


def wait_for_the_job_agent(env: dict, address: str, timeout: float = 120) -> None:
    """Ray's job server answers "No available agent" when the head's agent is not up within 10 s of a
    submission (a loaded 2-core CI machine took longer once): submit a job that does nothing until
    one runs."""
    import tempfile
    import time

    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory() as empty:
        while True:
            done = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", empty,
                                   "--", "true"], env=env, capture_output=True, text=True, timeout=180)
            if done.returncode == 0 or "No available agent" not in done.stdout + done.stderr \
                    or time.monotonic() > deadline:
                assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
                return
            time.sleep(2)


def test_ray_job_submit_trains_logs_and_registers(ray_head, team_server, synth_shards, synth_paths, predicting_model,
                                                 tmp_path):
    """Through the team's server (PostgreSQL, S3, logins) as its user, whose credentials the job
    carries in MLflow's own variables; the database is killed and restarted mid-run. The run starts
    from a model that predicts something (tests/predicting.py): 4 iterations from scratch keep no
    detection, and every comparison below would hold on empty lists."""
    from maskx.datasets.vocab import Vocabulary

    env, address = ray_head
    start = predicting_model(Vocabulary.load(synth_shards["vocab"]))
    mlflow_server = team_server.uri
    user, password = team_server.user
    # The user's password, and a planted secret, sit where maskx could leak them: in the job's
    # environment. (Credentials in the tracking URI would replace MLflow's variables in every request.)
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": mlflow_server, "AWS_SECRET_ACCESS_KEY": PLANTED_SECRET,
                                "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}}
    overrides = [f"data.train=[{{manifest: {synth_shards['coco_train']}, weight: 1.0}}, {{manifest: {synth_shards['vg']}, weight: 0.5}}]",
                 f"data.val={synth_shards['coco_val']}", "data.batch_size=2", "data.loader_workers=0",
                 "solver.max_iter=4", "solver.warmup_iters=2", "log_every=2", "checkpoint.every=2",
                 f"checkpoint.storage_path={tmp_path}/ray_results", "mlflow.experiment=job-submit",
                 "mlflow.registered_model=maskx-job-test", "mlflow.system_metrics_every_s=1",
                 "mlflow.eval_figures=false", "mlflow.eval_images=0",  # figures: test_train.py
                 f"model.init_from={start}", "model.init_from_parts=[backbone, rpn, box_head, mask_head]"]
    job = subprocess.Popen(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
         "--runtime-env-json", json.dumps(runtime_env), "--",
         # The uploaded working dir is on sys.path there (as on the workers): no top-level package of
         # maskx's may come with it to shadow an installed one (Hugging Face's `datasets`).
         "sh", "-c", "python -c 'import importlib.util as u; print(\"uploaded datasets:\", u.find_spec(\"datasets\"))' && "
         "maskx train --config configs/tiny-cpu.yaml " + " ".join(shlex.quote(o) for o in overrides)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    restarted_mid_run = kill_the_database_once_the_run_logs(team_server, "job-submit", job)
    stdout, stderr = job.communicate(timeout=900)
    submitted = subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr)
    assert submitted.returncode == 0, submitted.stdout[-5000:] + submitted.stderr[-3000:]
    assert restarted_mid_run, "the run ended before its first metrics reached the database"
    assert PLANTED_SECRET not in submitted.stdout + submitted.stderr  # the job's whole log
    assert password not in submitted.stdout + submitted.stderr
    assert "succeeded" in submitted.stdout.lower()
    assert "uploaded datasets: None" in submitted.stdout
    # The console: maskx's line per log_every, not Ray's record of every report.
    assert "iter 4/4  eta 0:00:00" in submitted.stdout and " s/iter  data " in submitted.stdout
    assert "Reporting training result" not in submitted.stdout

    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("job-submit").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["solver.max_iter"] == "4" and run.data.params["model.backbone.name"] == "resnet18"
    losses = client.get_metric_history(run.info.run_id, "loss/loss")
    assert [m.step for m in losses] == [2, 4]
    assert {"train/data_time_s", "train/eta_s", "train/s_per_iter", "train/peak_memory_mb"} <= set(run.data.metrics)
    assert "segm/setB/AP" in run.data.metrics and "bbox/setA/AP" in run.data.metrics
    assert run.data.metrics["bbox/all/AP"] > 0 and run.data.metrics["segm/all/AP"] > 0  # something to score
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "eval", "overlays"} <= artifacts
    eval_files = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/per_class_ap.json", "eval/eval.json"} <= eval_files
    assert len(client.list_artifacts(run.info.run_id, "overlays")) == 4

    # No secret from the job's environment reaches params, tags or the saved config.
    logged = json.dumps(run.data.params) + json.dumps(run.data.tags)
    logged += Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="config.yaml")).read_text()
    assert PLANTED_SECRET not in logged and password not in logged
    read = 0
    for path in Path(tmp_path / "ray_results").rglob("*"):  # run folder: checkpoints' config, run records
        if path.is_file() and path.suffix in (".json", ".yaml", ".txt", ".log"):
            text = path.read_text(errors="replace")
            assert PLANTED_SECRET not in text and password not in text, path
            read += 1
    assert read >= 4, read  # at least the two checkpoints' config.yaml and vocab.json

    version = client.get_model_version("maskx-job-test", "1")
    assert version.run_id == run.info.run_id

    # Lineage: what trained it, in the UI's Datasets, and where it came from.
    datasets = {(d.dataset.name, next(t.value for t in d.tags if t.key == "mlflow.data.context"))
                for d in run.inputs.dataset_inputs}
    assert datasets == {("coco/coco-train", "train"), ("vg/vg", "train"), ("coco/coco-val", "val")}
    assert all(len(d.dataset.digest) == 16 for d in run.inputs.dataset_inputs)
    tags = run.data.tags
    assert tags["maskx.config"] == "tiny-cpu" and tags["maskx.num_classes"] == "11" and tags["maskx.mask_sets"] == "voc"
    assert tags["mlflow.source.name"] == "maskx train"
    assert len(tags["mlflow.source.git.commit"]) == 40  # this checkout's
    # Model cards: the run, the version and the registered model say what it is and how good.
    card = tags["mlflow.note.content"]
    assert "Mask^X R-CNN" in card and "| set B (masks by transfer) |" in card and "coco-val" in card
    assert f"{run.data.metrics['segm/setB/AP']:.3f}" in card
    assert version.description == card and "mlflow models serve -m models:/maskx-job-test/1" in card
    assert card in client.get_registered_model("maskx-job-test").description
    # System metrics, named by node.
    system = [k for k in run.data.metrics if k.startswith("system/")]
    assert any(k.endswith("/cpu_utilization_percentage") for k in system), sorted(run.data.metrics)
    assert all(k.split("/")[1].count("-") == 1 for k in system)  # system/ADDRESS-NODE/...
    import pandas as pd

    from maskx.orchestrator.serving.inference import load_model, predict, read_image

    # The registered model is a pyfunc: JPEG/PNG bytes in, detections out (served in test_serving.py).
    image = os.path.join(synth_paths["coco_val_images"], sorted(os.listdir(synth_paths["coco_val_images"]))[0])
    served = mlflow.pyfunc.load_model("models:/maskx-job-test/1")
    [answer] = served.predict(pd.DataFrame({"image": [Path(image).read_bytes()]}), params={"score_threshold": 0.0})
    assert set(answer) == {"boxes", "class_ids", "class_names", "scores", "masks"}
    assert len(answer["scores"]) > 1 and len(set(answer["class_ids"])) > 1
    assert all(mask["size"] == list(read_image(image).shape[-2:]) for mask in answer["masks"])
    assert answer["scores"] == sorted(answer["scores"], reverse=True)

    # maskx's own loader takes the weights alone (weights_only=True), no unpickling.
    loaded = load_model("models:/maskx-job-test/1", mlflow_server)
    detection = predict(loaded.model, read_image(image))
    assert torch.allclose(detection["scores"], torch.tensor(answer["scores"]), atol=1e-4)
    assert loaded.vocab.num_classes == loaded.config.model.num_classes

    # `maskx eval` of the registered model, through the server as its user, scores what the run did.
    from maskx.orchestrator.cli import main

    out = tmp_path / "eval" / "eval.json"
    assert main(["eval", "--config", str(REPO / "configs" / "tiny-cpu.yaml"), f"data.val={synth_shards['coco_val']}",
                 f"mlflow.tracking_uri={mlflow_server}", "--model", "models:/maskx-job-test/1", "--json", str(out)]) == 0
    scored = json.loads(out.read_text())["metrics"]
    for key in ("segm/setB/AP", "bbox/all/AP", "eval/images"):
        assert scored[key] == pytest.approx(run.data.metrics[key], abs=1e-6), key


def kill_the_database_once_the_run_logs(team_server, experiment, job) -> bool:
    """Once the run's first losses are in, SIGKILL PostgreSQL and start it again on its folder 3 s
    later, while the job trains on (its MLflow calls retry, or wait in maskx's buffer). Returns
    whether that happened before the job ended."""
    import time

    import mlflow

    client = mlflow.MlflowClient(team_server.uri)
    while job.poll() is None:
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id]) if found else []
        if runs and "loss/loss" in runs[0].data.metrics:
            team_server.postgres.stop(kill=True)
            time.sleep(3)
            team_server.postgres.start()
            return True
        time.sleep(0.5)
    return False
