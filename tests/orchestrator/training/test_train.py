"""`maskx train` on a real local Ray instance with 2 CPU workers: checkpoints, resume, eval, predict."""
import json
import os

import pytest

from maskx.orchestrator import run_folder
from maskx.orchestrator.cli import main
from maskx.orchestrator.config import load_config
from maskx.orchestrator.run_folder import MLFLOW_RUN_FILE
from maskx.orchestrator.training.trainer import train

from ...conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

TINY = os.path.join(os.path.dirname(__file__), "..", "..", "..", "configs", "tiny-cpu.yaml")
BEST_BY = "bbox/all/AP"  # first_run's checkpoint.keep_best


@pytest.fixture(scope="module")
def local_ray():
    import ray

    # As `maskx train` does with no cluster running (token auth: tests/conftest.py). The dashboard
    # answers Ray's state API, which the killed-driver test asks whether the run's actors are gone.
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


def tiny_overrides(synth_shards, tmp, max_iter):
    return [f"data.train=[{{manifest: {synth_shards['coco_train']}, weight: 1.0}}, {{manifest: {synth_shards['vg']}, weight: 0.5}}]",
            f"data.val={synth_shards['coco_val']}", "data.batch_size=2", "data.loader_workers=0",
            f"solver.max_iter={max_iter}", "solver.warmup_iters=2", "log_every=2", "checkpoint.every=2",
            f"checkpoint.storage_path={tmp}/ray_results", f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db",
            "mlflow.registered_model=null", "name=test-tiny",
            # 4 iterations score under the default 0.05: keep detections so evaluation has work to do.
            "model.box_score_thresh=0.0",
            # Figures only where a test reads them (first_run's).
            "mlflow.eval_figures=false", "mlflow.eval_images=0"]


@pytest.fixture(scope="module")
def first_run(local_ray, synth_shards, predicting_model, tmp_path_factory):
    """2 workers, 4 iterations, evaluated at 2 (beside training) and 4, from a model that predicts
    something (tests/predicting.py): the evaluations and predictions the tests compare are not empty."""
    from maskx.datasets.vocab import Vocabulary

    start = predicting_model(Vocabulary.load(synth_shards["vocab"]))
    tmp = tmp_path_factory.mktemp("train")
    # Paths relative to the driver's folder, as a user types them: workers run in another folder.
    shards_folder = os.path.dirname(synth_shards["coco_train"])
    relative = {name: os.path.relpath(path, shards_folder) for name, path in synth_shards.items()}
    cwd = os.getcwd()
    os.chdir(shards_folder)
    try:
        cfg = load_config(TINY, tiny_overrides(relative, tmp, 4) + [
            "eval_every=2", f"checkpoint.keep_best={BEST_BY}", "mlflow.eval_figures=true", "mlflow.eval_images=4",
            f"model.init_from={start}", "model.init_from_parts=[backbone, rpn, box_head, mask_head]"])
        result = train(cfg, record_keys_to=str(tmp / "keys-first"))
    finally:
        os.chdir(cwd)
    return tmp, result


def keys_per_rank(folder):
    """rank file -> consumed keys, in order (the `node` line of each start left out)."""
    return {name: [line.split()[1] for line in open(os.path.join(folder, name)) if not line.startswith("node ")]
            for name in sorted(os.listdir(folder))}


@pytest.mark.core
def test_two_workers_train_checkpoint_and_evaluate(first_run):
    tmp, result = first_run
    checkpoints = sorted(d for d in os.listdir(result.run_folder) if d.startswith("checkpoint_0"))
    assert checkpoints == ["checkpoint_00000002", "checkpoint_00000004"]
    assert result.checkpoint.endswith("checkpoint_00000004")
    contents = run_folder.load_state(result.checkpoint)
    assert contents["iteration"] == 4
    # the data position of every partition (2 workers x 1 loader worker), merged from both ranks
    assert contents["data_position"]["steps"] == 4 and sorted(contents["data_position"]["partitions"]) == ["0", "1"]
    assert contents["data_plan"] == {"global_batch": 4, "partitions": 2} and contents["world_size"] == 2
    assert sorted(os.listdir(result.checkpoint)) == ["complete.json", "config.yaml", "eval.json", "state.pt", "vocab.json"]
    assert {"bbox/setA/AP", "bbox/setB/AP", "segm/setA/AP", "segm/setB/AP"} <= set(result.metrics)
    assert result.metrics["eval/images"] == 10
    keys = keys_per_rank(str(tmp / "keys-first"))
    assert sorted(keys) == ["rank0.txt", "rank1.txt"] and all(len(k) == 4 * 2 for k in keys.values())
    assert not set(keys["rank0.txt"]) & set(keys["rank1.txt"])  # ranks stream different samples


@pytest.mark.core
def test_a_periodic_evaluation_is_scored_beside_training_and_logged_at_its_iteration(first_run, synth_shards):
    """eval_every=2 of 4 (eval_mode: background): COCOeval of iteration 2 ran in a Ray task, not in
    rank 0 (its checkpoint carries no evaluation; its metrics say how long COCOeval took there), and
    its metrics, logged at step 2, are that checkpoint's model's. The last evaluation is inline."""
    import mlflow

    from maskx.orchestrator.run_setup import set_up_run
    from maskx.orchestrator.serving.inference import evaluate_model

    _, result = first_run
    second = os.path.join(result.run_folder, "checkpoint_00000002")
    assert run_folder.read_evaluation(second) is None and run_folder.read_evaluation(result.checkpoint) is not None
    client = mlflow.MlflowClient(result.tracking_uri)
    history = {key: {m.step: m.value for m in client.get_metric_history(result.mlflow_run_id, key)}
               for key in ("segm/setB/AP", "bbox/all/AP", "eval/images", "eval/cocoeval_seconds")}
    assert sorted(history["segm/setB/AP"]) == [2, 4] and list(history["eval/cocoeval_seconds"]) == [2]
    # The two evaluations differ, so equal to checkpoint 2's own means it is checkpoint 2's.
    assert history["bbox/all/AP"][2] != history["bbox/all/AP"][4] and history["bbox/all/AP"][2] > 0, history
    cfg = load_config(TINY, tiny_overrides(synth_shards, os.path.dirname(os.path.dirname(result.run_folder)), 4))
    alone = evaluate_model(set_up_run(cfg, train=False), second).metrics
    assert history["eval/images"][2] == alone["eval/images"] == 10
    for key in ("segm/setB/AP", "bbox/all/AP"):
        assert history[key][2] == pytest.approx(alone[key], abs=1e-6), key


@pytest.mark.core
def test_each_evaluation_logs_its_figures_at_its_iteration_and_the_run_ends_with_a_report(first_run, tmp_path, capsys):
    """The UI's image slider: every evaluation figure and every val image drawn with ground truth beside
    predictions, at steps 2 (scored beside training) and 4; the data's classes; `report.html` at the
    end, and `maskx report RUN_ID` building the same page from the run."""
    import mlflow
    from PIL import Image

    from maskx.orchestrator.reporting.evaluation_figures import EXAMPLE, FIGURE_KEYS
    from maskx.orchestrator.reporting.report import REPORT_FILE, stepped_images
    from maskx.orchestrator.tracking.store import Tracking

    _, result = first_run
    client = mlflow.MlflowClient(result.tracking_uri)
    run = Tracking(result.tracking_uri).run(result.mlflow_run_id)
    steps = {}
    for image in stepped_images(run):
        steps.setdefault(image.key, []).append(image.step)
    expected = list(FIGURE_KEYS) + [EXAMPLE.format(i) for i in range(4)]
    assert {key: sorted(found) for key, found in steps.items()} == {key: [2, 4] for key in expected}
    names = {a.path for a in client.list_artifacts(result.mlflow_run_id)} | \
        {a.path for a in client.list_artifacts(result.mlflow_run_id, "data")}
    assert {REPORT_FILE, "data/classes.png"} <= names
    example = [i for i in stepped_images(run) if i.key == EXAMPLE.format(0)][0]
    local = mlflow.artifacts.download_artifacts(run_id=result.mlflow_run_id, artifact_path=example.path,
                                                dst_path=str(tmp_path), tracking_uri=result.tracking_uri)
    width, height = Image.open(local).size
    assert width > height > 200  # two images side by side
    out = tmp_path / "report.html"
    assert main(["report", result.mlflow_run_id, "--tracking-uri", result.tracking_uri, "--out", str(out)]) == 0
    page = out.read_text()
    for key in expected + ["data/classes.png", "Model card", "Config", "Training"]:
        assert key in page, key
    # the latest of each figure, the classes and the training curves, every one embedded
    assert page.count("<img src='data:image/png;base64,") >= len(expected) + 2
    logged = mlflow.artifacts.download_artifacts(run_id=result.mlflow_run_id, artifact_path=REPORT_FILE,
                                                 dst_path=str(tmp_path / "logged"), tracking_uri=result.tracking_uri)
    assert open(logged).read().count("<img") == page.count("<img")


@pytest.mark.core
def test_the_model_logged_at_the_end_is_the_best_evaluation_s_and_its_card_says_so(first_run):
    """checkpoint.keep_best: the best evaluation by it (the first of equals) is kept in the run folder
    beside the newest checkpoints, and its weights, not the last iteration's unless it is the best,
    are the logged model's."""
    import mlflow
    import torch

    from maskx.orchestrator.serving.inference import model_weights

    _, result = first_run
    client = mlflow.MlflowClient(result.tracking_uri)
    history = sorted((m.step, m.value) for m in client.get_metric_history(result.mlflow_run_id, BEST_BY))
    top = max(value for _, value in history)
    best = run_folder.read_best(result.run_folder)
    assert best == run_folder.BestModel(iteration=next(step for step, value in history if value == top), metric=BEST_BY,
                                        value=pytest.approx(top))
    assert [name for name in os.listdir(result.run_folder) if name.startswith("best_")] == [best.folder_name]
    kept = run_folder.load_complete_state(os.path.join(result.run_folder, best.folder_name))["model"]
    logged = model_weights(f"runs:/{result.mlflow_run_id}/model", result.tracking_uri)[2]
    assert kept.keys() == logged.keys() and all(torch.equal(kept[name], logged[name]) for name in kept)
    last = run_folder.load_state(result.checkpoint)["model"]
    assert (best.iteration == 4) == all(torch.equal(last[name], logged[name]) for name in last)
    card = client.get_run(result.mlflow_run_id).data.tags["mlflow.note.content"]
    assert f"best evaluation by `{BEST_BY}` ({top:.4f}): the weights of iteration {best.iteration} of 4" in card


@pytest.mark.core
def test_resume_of_an_unknown_run_names_it(local_ray, synth_shards, tmp_path):
    cfg = load_config(TINY, tiny_overrides(synth_shards, tmp_path, 2))
    with pytest.raises(FileNotFoundError, match="--resume no-such-run: no run of that name"):
        train(cfg, resume="no-such-run")


@pytest.mark.core
def test_eval_and_predict_commands_on_the_checkpoint(first_run, synth_shards, synth_paths, tmp_path, capsys):
    _, result = first_run
    out_json = tmp_path / "eval.json"
    assert main(["eval", "--config", TINY, f"data.val={synth_shards['coco_val']}", "--model", result.checkpoint,
                 "--json", str(out_json)]) == 0
    metrics = json.loads(out_json.read_text())["metrics"]
    assert metrics["eval/images"] == 10 and "segm/setB/AP" in metrics
    assert "mask  all AP" in capsys.readouterr().out

    from torchvision.io import decode_png, read_file

    image = os.path.join(synth_paths["coco_val_images"], sorted(os.listdir(synth_paths["coco_val_images"]))[0])
    out_png = tmp_path / "overlay.png"
    assert main(["predict", "--model", result.checkpoint, "--image", image, "--out", str(out_png), "--score-threshold", "0"]) == 0
    overlay = decode_png(read_file(str(out_png)))
    from maskx.orchestrator.serving.inference import read_image

    original = read_image(image)
    assert overlay.shape == original.shape  # what gets drawn is tested in test_inference.py


@pytest.mark.core
def test_predictions_as_coco_results_score_with_pycocotools_as_maskx_eval_does(first_run, synth_shards, synth_paths,
                                                                                tmp_path, capsys):
    """`maskx predict --images DIR` and `--shards` write COCO results in COCO's category ids; COCOeval of
    them against the original annotation file gives maskx eval's AP."""
    import shutil

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _, result = first_run
    images = tmp_path / "images"
    shutil.copytree(synth_paths["coco_val_images"], images)
    (images / "broken.jpg").write_bytes(b"not a jpeg")  # skipped and listed, not a crash
    assert main(["predict", "--model", result.checkpoint, "--images", str(images), "--out", str(tmp_path / "pred"),
                 "--overlays"]) == 0
    assert "10 images; 1 unreadable files skipped" in capsys.readouterr().out
    assert len(list((tmp_path / "pred" / "overlays").glob("*.jpg.png"))) == 10
    assert main(["predict", "--model", result.checkpoint, "--shards", synth_shards["coco_val"],
                 "--out", str(tmp_path / "pred-shards")]) == 0
    # As predict takes them: the shards and an output folder; set A and eval settings the model's own.
    assert main(["eval", "--model", result.checkpoint, "--shards", synth_shards["coco_val"],
                 "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "eval.json").read_text())["metrics"]
    assert metrics["bbox/all/AP"] > 0 and metrics["segm/all/AP"] > 0, metrics  # something to be equal about

    truth = COCO(synth_paths["coco_val_annotations"])
    for results in (tmp_path / "pred" / "results.json", tmp_path / "pred-shards" / "results.json",
                    tmp_path / "eval" / "results.json"):
        detections = json.loads(results.read_text())
        # COCO classes under COCO's ids (not maskx labels); the VG-only classes of the vocabulary past 1000
        ids = {d["category_id"] for d in detections}
        assert ids & set(truth.getCatIds()) and all(i in truth.getCatIds() or i > 1000 for i in ids)
        for iou_type in ("bbox", "segm"):
            evaluation = COCOeval(truth, truth.loadRes(str(results)), iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            assert evaluation.stats[0] == pytest.approx(metrics[f"{iou_type}/all/AP"], abs=1e-6), (results, iou_type)


@pytest.mark.core
def test_predict_on_a_file_that_is_not_an_image_is_a_clear_error(first_run, tmp_path, capsys):
    _, result = first_run
    bad = tmp_path / "not-an-image.jpg"
    bad.write_bytes(b"this is text")
    assert main(["predict", "--model", result.checkpoint, "--image", str(bad), "--out", str(tmp_path / "o.png")]) == 2
    assert f"image {bad}: not a JPEG or PNG" in capsys.readouterr().err


@pytest.mark.core
def test_a_killed_driver_is_continued_by_resume_from_its_newest_complete_checkpoint(local_ray, synth_shards, tmp_path):
    """`maskx train` killed (SIGKILL) the moment its checkpoint folder at iteration 4 appears, as a lost
    job driver is: that checkpoint may be whole, half-written or only a folder, and Ray's own record
    may not know it yet. `--resume RUN_NAME` continues, in the same MLflow run and run folder, from
    exactly the newest complete checkpoint in the run folder: never from scratch, never from an older
    one; here with a longer schedule (solver.max_iter 8 -> 10), as a user extends a run."""
    import subprocess
    import sys

    import ray

    overrides = tiny_overrides(synth_shards, tmp_path, 8)
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "RAY_AUTH_MODE": "token"}
    repo = os.path.join(os.path.dirname(TINY), "..")
    driver = subprocess.Popen([sys.executable, "-P", "-m", "maskx.orchestrator.cli", "train", "--config", TINY, *overrides], cwd=repo,
                              env=env, stdout=open(tmp_path / "driver.log", "w"), stderr=subprocess.STDOUT)
    found = wait_until(lambda: list((tmp_path / "ray_results").glob("test-tiny-*/checkpoint_00000004")),
                       "the driver's checkpoint at iteration 4", lambda: driver.poll() is None,
                       lambda: (tmp_path / "driver.log").read_text()[-3000:], interval=0.05)
    driver.kill()
    driver.wait()
    folder = found[0].parent

    # The killed job's controller and workers die with their driver (none is detached); once Ray says
    # they are gone, nothing writes the folder any more. (This process's own earlier runs may leave an
    # idle controller behind: Ray Train's SIGINT handler holds its handle.)
    from ray.util.state import list_actors

    ours = ray.get_runtime_context().get_job_id()

    def train_actors_alive():
        """The killed run's controller and workers that Ray calls alive, or whose process has not exited
        yet: Ray marks an actor dead before its process is gone, and a worker finishing its checkpoint
        write in that moment made a checkpoint complete after this test had read the folder."""
        alive = []
        for actor in list_actors(detail=True, limit=10000):
            if actor.class_name not in ("TrainController", "RayTrainWorker") or actor.job_id == ours:
                continue
            if actor.state == "ALIVE" or (actor.pid and os.path.exists(f"/proc/{actor.pid}")):
                alive.append(f"{actor.class_name} {actor.state} pid {actor.pid}")
        return alive

    wait_until(lambda: not train_actors_alive(), "the killed run's controller and workers gone, processes too",
               details=lambda: str(train_actors_alive()), timeout=120, interval=0.5)
    newest_complete = run_folder.resume_state(str(folder))[1]["iteration"]
    recorded = json.loads((folder / MLFLOW_RUN_FILE).read_text())["run_id"]

    longer = tiny_overrides(synth_shards, tmp_path, 10)
    resumed = train(load_config(TINY, longer), resume=folder.name, record_keys_to=str(tmp_path / "keys"))
    assert run_folder.load_state(resumed.checkpoint)["iteration"] == 10
    assert resumed.mlflow_run_id == recorded and resumed.run_folder == str(folder)
    keys = keys_per_rank(str(tmp_path / "keys"))
    iterations = [int(line.split()[0]) for line in open(tmp_path / "keys" / "rank0.txt") if not line.startswith("node")]
    assert newest_complete in (2, 4)
    assert sorted(set(iterations)) == list(range(newest_complete + 1, 11))  # each once, from the one after it
    assert all(len(k) == 2 * (10 - newest_complete) for k in keys.values())  # two images a rank an iteration


def test_a_hung_rank_fails_the_step_after_the_collective_timeout(local_ray, synth_shards, tmp_path):
    """One rank blocks for good (its shard is a pipe nobody writes); the other reaches the gradient
    all-reduce and gives up after scaling.collective_timeout_s instead of torch's 30 minutes."""
    import shutil

    from maskx.datasets.shard_format import load_manifest, save_manifest

    manifest = load_manifest(synth_shards["coco_train"])
    manifest.shards = manifest.shards[:2]
    manifest.location = str(tmp_path / "shards" / "manifest.json")
    (tmp_path / "shards").mkdir()
    shutil.copy(os.path.join(synth_shards["coco_train"], manifest.shards[0].url), tmp_path / "shards")
    hanging = tmp_path / "shards" / manifest.shards[1].url
    os.mkfifo(hanging)  # opening it for reading blocks until a writer comes: never
    save_manifest(manifest)
    overrides = tiny_overrides(synth_shards, tmp_path, 4) + [
        f"data.train=[{{manifest: {tmp_path}/shards}}]", "data.val=null", "checkpoint.max_failures=0",
        "scaling.collective_timeout_s=10"]
    try:
        # gloo's words for its timeout: the waiting side's, or the pair it closed.
        with pytest.raises(RuntimeError, match=r"(?s)failed.*(Timed out waiting 10000ms|Application timeout caused pair closure)") \
                as failure:
            train(load_config(TINY, overrides))
        assert "continue it with `maskx train --config ... --resume test-tiny-" in str(failure.value)
    finally:
        try:  # release a reader still blocked on the pipe, if its worker outlived the run
            os.close(os.open(hanging, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_a_non_finite_loss_fails_the_run_at_once_on_every_rank_instead_of_retrying_into_it(local_ray, synth_shards,
                                                                                         tmp_path):
    """lr 1e4 sends the loss to inf/NaN within a few steps. Both ranks agree on it, end the run, and
    the driver fails it naming the samples; with 3 retries allowed none is spent (a retry replays the
    same samples from the same checkpoint)."""
    from mlflow import MlflowClient

    overrides = tiny_overrides(synth_shards, tmp_path, 20) + [
        "solver.lr=10000", "solver.warmup_iters=0", "data.val=null", "checkpoint.max_failures=3",
        "checkpoint.every=100"]
    with pytest.raises(RuntimeError, match=r"(?s)failed: iteration \d+: loss is not finite \(rank \d: .*in samples "
                                           r".*so it was not retried"):
        train(load_config(TINY, overrides))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("maskx-demo").experiment_id])
    assert run.info.status == "FAILED" and "loss is not finite" in run.data.tags["maskx.end_reason"]
