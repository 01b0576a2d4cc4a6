"""The registered model serves: `mlflow models serve -m models:/NAME/VERSION` answers a plain HTTP POST
of a real JPEG with what maskx itself predicts on the same file."""
import base64
import contextlib
import json
import logging
import os
import subprocess
import sys
import urllib.request
import warnings
from pathlib import Path

import pytest
import torch

from maskx.datasets.stream import load_sources
from maskx.orchestrator import run_folder
from maskx.orchestrator.config import dump_config
from maskx.orchestrator.serving.inference import load_model
from maskx.orchestrator.serving.model_logging import log_model
from maskx.orchestrator.serving.pyfunc import detections_json
from maskx.orchestrator.tracking.store import Tracking

from ...conftest import SHARED_DATA, free_port, wait_for_http

pytestmark = [pytest.mark.integration, pytest.mark.serving]

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def registered(mlflow_server, synth_shards, predicting_model, tmp_path_factory):
    """A model logged and registered as `maskx train` does it: one that predicts something
    (tests/predicting.py), whose scores straddle serving's default threshold of 0.5."""
    _, vocab = load_sources([(synth_shards["coco_train"], 1.0)])
    folder = predicting_model(vocab)
    loaded = load_model(folder)
    cfg = loaded.config
    tracking = Tracking(mlflow_server)
    run = tracking.start_run("serving", "serve-test", cfg.to_dict(), dump_config(cfg))
    files = run_folder.model_files(folder, loaded.model, str(tmp_path_factory.mktemp("model-files")))
    with warnings.catch_warnings(record=True) as warned, logged_warnings("mlflow") as logged:
        warnings.simplefilter("always")
        version = log_model(run, files, jpeg_bytes(), "maskx-serve-test")
    return mlflow_server, f"models:/maskx-serve-test/{version}", [str(w.message) for w in warned] + logged


@contextlib.contextmanager
def logged_warnings(logger_name: str):
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def jpeg_path() -> str:
    real = sorted((SHARED_DATA / "coco-tiny" / "val2017").glob("*.jpg"))
    if real:
        return str(real[0])
    from torchvision.io import encode_jpeg

    path = Path(os.environ.get("TMPDIR", "/tmp")) / "maskx-serving-test.jpg"
    path.write_bytes(encode_jpeg(torch.randint(0, 255, (3, 160, 200), dtype=torch.uint8)).numpy().tobytes())
    return str(path)


def jpeg_bytes() -> bytes:
    return Path(jpeg_path()).read_bytes()


@pytest.fixture(scope="module")
def served(registered, tmp_path_factory):
    tracking_uri, model_uri, _ = registered
    port = free_port()
    log = open(tmp_path_factory.mktemp("serve") / "serve.log", "w")
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, PATH=f"{BIN}:{os.environ['PATH']}")
    process = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
                                "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", process, timeout=180)
        yield f"http://127.0.0.1:{port}", tracking_uri, model_uri, process
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.mark.core
def test_a_posted_jpeg_gets_what_maskx_predicts_on_the_file(served):
    url, tracking_uri, model_uri, _ = served
    image = base64.b64encode(jpeg_bytes()).decode()
    status, answer = post(url, {"dataframe_split": {"columns": ["image"], "data": [[image]]},
                                "params": {"score_threshold": 0.0, "max_detections": 20}})
    assert status == 200, answer
    [served_detections] = answer["predictions"]
    expected = detections_json(load_model(model_uri, tracking_uri), jpeg_bytes(), 0.0, 20)
    assert served_detections["class_ids"] == expected["class_ids"] and len(expected["class_ids"]) == 20
    assert len(set(expected["class_ids"])) > 1  # not one class everywhere: a permutation would show
    assert served_detections["class_names"] == expected["class_names"]
    assert torch.allclose(torch.tensor(served_detections["boxes"]), torch.tensor(expected["boxes"]), atol=0.05)
    assert torch.allclose(torch.tensor(served_detections["scores"]), torch.tensor(expected["scores"]), atol=1e-4)
    height, width = (int(v) for v in served_detections["masks"][0]["size"])
    from maskx.orchestrator.serving.inference import read_image

    assert (height, width) == tuple(read_image(jpeg_path()).shape[-2:])
    assert [m["counts"] for m in served_detections["masks"]] == [m["counts"] for m in expected["masks"]]


@pytest.mark.core
def test_records_and_the_default_threshold_and_a_bad_image(served, synth_paths):
    """No params: serving's documented defaults, score 0.5 and 100 detections, as maskx in this process
    answers with them, over every val image in one request: the model's scores sit close on both sides
    of 0.5 there, so a default moved out of the narrow band between them changes the answer."""
    url, tracking_uri, model_uri, _ = served
    loaded = load_model(model_uri, tracking_uri)
    images = [path.read_bytes() for path in sorted(Path(synth_paths["coco_val_images"]).glob("*.jpg"))]
    expected = [detections_json(loaded, data, 0.5, 100) for data in images]
    scores = [score for data in images for score in detections_json(loaded, data, 0.0, 100)["scores"]]
    below, above = max(s for s in scores if s < 0.5), min(s for s in scores if s >= 0.5)
    # Measured on the predicting model (2026-12-07): 0.417 and 0.515, so a default of 0.3 or 0.6 fails here.
    assert below > 0.35 and above < 0.6, (below, above)
    status, answer = post(url, {"dataframe_records": [{"image": base64.b64encode(data).decode()} for data in images]})
    assert status == 200 and len(answer["predictions"]) == len(images)
    for served_detections, wanted in zip(answer["predictions"], expected):
        assert served_detections["class_ids"] == wanted["class_ids"]
        assert torch.allclose(torch.tensor(served_detections["scores"]), torch.tensor(wanted["scores"]), atol=1e-4)
    status, answer = post(url, {"dataframe_records": [{"image": base64.b64encode(b"not an image").decode()}]})
    assert status >= 400 and "not a JPEG or PNG" in json.dumps(answer)


# A request's own peak memory, over what the server held before it (docs/benchmarks.md, "Memory per request").
REQUEST_MEMORY_BOUND_GB = 3.0


def server_pids(server: subprocess.Popen) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) == server.pid:
                pids.append(int(pid))
        except ProcessLookupError:
            continue
    return pids


def peak_resident_gb(server: subprocess.Popen) -> float:
    """The highest resident memory any process of the server's process group has had (VmHWM) since
    `reset_peaks`."""
    peak = 0
    for pid in server_pids(server):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        peak = max([peak] + [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")])
    return peak / 2**20


def reset_peaks(server: subprocess.Popen) -> None:
    """Each server process's high-water mark back to what it holds now (Linux: 5 to clear_refs), so
    that the next peak is this request's, not an earlier test's."""
    for pid in server_pids(server):
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except (FileNotFoundError, PermissionError):
            continue


def test_a_48_megapixel_photo_in_bounded_memory_and_a_decompression_bomb_refused(served, synth_paths):
    """Masks are pasted and encoded one kept detection at a time: a 6000x8000 photo with 10 full-size
    masks stays within the bound (pasted all at once, as torchvision does, the model's 100 detections
    would take 100 x 48M x 4 bytes = 19 GB). A PNG whose header claims 900 megapixels is refused with
    a 400 naming the limit before anything is decoded, and the server answers on."""
    import io

    from PIL import Image

    from .test_inference import png_of_zeros

    url, _, _, process = served
    # A val image the model finds objects in, blown up to 8000 x 6000: the model sees it at its own
    # size again, and keeps as many detections as it does on the original.
    small = sorted(Path(synth_paths["coco_val_images"]).glob("*.jpg"))[0]
    photo, encoded = Image.open(small).convert("RGB").resize((8000, 6000), Image.BILINEAR), io.BytesIO()
    photo.save(encoded, "JPEG", quality=80)
    jpeg = base64.b64encode(encoded.getvalue()).decode()
    del photo, encoded
    reset_peaks(process)
    before = peak_resident_gb(process)
    status, answer = post(url, {"dataframe_split": {"columns": ["image"], "data": [[jpeg]]},
                                "params": {"score_threshold": 0.0, "max_detections": 10}})
    assert status == 200, answer
    [detections] = answer["predictions"]
    assert len(detections["masks"]) == 10 and all(m["size"] == [6000, 8000] for m in detections["masks"])
    request_peak = peak_resident_gb(process) - before
    print(f"48-megapixel request: server peak {before:.2f} -> {before + request_peak:.2f} GB")
    assert request_peak < REQUEST_MEMORY_BOUND_GB, request_peak

    bomb = base64.b64encode(png_of_zeros(30000, 30000)).decode()
    status, answer = post(url, {"dataframe_split": {"columns": ["image"], "data": [[bomb]]}})
    assert status == 400 and "over the limit of 64000000 pixels (MASKX_MAX_IMAGE_PIXELS)" in answer["message"], answer
    status, answer = post(url, {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(jpeg_bytes()).decode()]]}})
    assert status == 200 and len(answer["predictions"]) == 1


@pytest.mark.core
def test_the_logged_model_has_a_signature_an_example_and_no_pickle(registered, tmp_path):
    tracking_uri, model_uri, warned = registered
    # MLflow says nothing about the model: no "Failed to validate serving input example", no pickle or
    # type-hint warning (torchvision's and pandas' deprecation notices are theirs to fix).
    assert not [w for w in warned if any(word in w.lower() for word in ("input example", "pickle", "type hint", "signature"))], warned
    folder = Tracking(tracking_uri).download(model_uri, str(tmp_path))
    import yaml

    mlmodel = yaml.safe_load(Path(folder, "MLmodel").read_text())
    assert mlmodel["flavors"]["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert Path(folder, "pyfunc_model.py").exists()  # a model from code: built by running this file
    assert json.loads(mlmodel["signature"]["inputs"]) == [{"type": "binary", "name": "image", "required": True}]
    assert {p["name"] for p in json.loads(mlmodel["signature"]["params"])} == {"score_threshold", "max_detections"}
    assert not list(Path(folder).rglob("*.pkl"))
    assert Path(folder, "serving_input_example.json").exists()


@pytest.mark.core
def test_loading_a_model_from_mlflow_leaves_no_download_behind(registered, tmp_path, monkeypatch):
    import tempfile

    tracking_uri, model_uri, _ = registered
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    loaded = load_model(model_uri, tracking_uri)
    assert loaded.vocab.num_classes > 0
    assert not list(tmp_path.glob("maskx-model-*"))  # read into memory, then removed


@pytest.mark.core
def test_an_exported_file_registered_beside_its_model_version(registered, tmp_path, monkeypatch, capsys):
    """`maskx export --register`: the file in the version's run under exports/, named in its tag."""
    from maskx.orchestrator.cli import main
    from maskx.orchestrator.serving.export import load_exported

    tracking_uri, model_uri, _ = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    out = tmp_path / "maskx.onnx"
    assert main(["export", "--model", model_uri, "--format", "onnx", "--out", str(out), "--size", "96,128",
                 "--register"]) == 0
    name, version = model_uri[len("models:/"):].split("/")
    exported_uri = Tracking(tracking_uri).version_tags(name, version)["maskx.export.onnx"]
    assert exported_uri.startswith("runs:/") and exported_uri.endswith("/exports/maskx.onnx")
    assert f"logged as {exported_uri}" in capsys.readouterr().out
    import mlflow

    downloaded = mlflow.artifacts.download_artifacts(artifact_uri=exported_uri, dst_path=str(tmp_path / "down"),
                                                     tracking_uri=tracking_uri)
    boxes, labels, scores, masks = load_exported(downloaded)(torch.rand(3, 96, 128))
    assert masks.shape[1:] == (1, 96, 128) and len(boxes) == len(labels) == len(scores)
