import os
import socket
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def synth_paths(tmp_path_factory):
    from datasets.synth import write_synthetic

    return write_synthetic(str(tmp_path_factory.mktemp("synth")), train_images=24, val_images=10, vg_images=12, seed=3)


@pytest.fixture(scope="session")
def synth_shards(synth_paths, tmp_path_factory):
    """Synthetic COCO train/val and VG prepared with one vocabulary; returns their folders."""
    from datasets.prepare import prepare_coco, prepare_vg, prepare_vocabulary

    root = tmp_path_factory.mktemp("shards")
    vocab_path = str(root / "vocab.json")
    prepare_vocabulary(synth_paths["coco_train_annotations"], synth_paths["vg_objects"]).save(vocab_path)
    out = {"vocab": vocab_path}
    for split in ("train", "val"):
        out[f"coco_{split}"] = str(root / f"coco-{split}")
        prepare_coco(synth_paths[f"coco_{split}_annotations"], synth_paths[f"coco_{split}_images"], out[f"coco_{split}"],
                     vocab_path, shard_size=5, workers=1, progress=False)
    out["vg"] = str(root / "vg")
    prepare_vg(synth_paths["vg_image_data"], synth_paths["vg_objects"], synth_paths["vg_images"], out["vg"], vocab_path,
               shard_size=4, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API (moto's server mode) on 127.0.0.1, reached through AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    from datasets import storage

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    storage.s3_client.cache_clear()
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    storage.s3_client.cache_clear()


def wait_for_http(url: str, process, timeout: float = 120.0) -> None:
    import time
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def start_mlflow_server(store, port):
    """`maskx mlflow-server` (real `mlflow server`, sqlite, proxied artifacts, 127.0.0.1 by default)."""
    import subprocess
    import sys

    log = open(os.path.join(store, f"server-{port}.log"), "a")
    process = subprocess.Popen([str(Path(sys.executable).parent / "maskx"), "mlflow-server", "--store", str(store),
                                "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_http(f"http://127.0.0.1:{port}/health", process)
    return process


def stop_mlflow_server(process):
    import signal

    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 for the session; yields its URI."""
    port = free_port()
    process = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_mlflow_server(process)
