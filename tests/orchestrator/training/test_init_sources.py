"""Where a run starts from, as a cluster user names it: `model.init_from` a registered model
(`models:/NAME/VERSION`) or a checkpoint folder on S3, `model.backbone.weights` an S3 object; each read
by `maskx train` itself (a driver process starting its own local Ray, its workers reaching S3 through
AWS_ENDPOINT_URL as on a cluster), with the run folder on S3 too."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.io import encode_jpeg
from torchvision.models import resnet

from maskx.datasets import storage
from maskx.datasets.vocab import Vocabulary
from maskx.orchestrator import run_folder
from maskx.orchestrator.config import dump_config, load_config
from maskx.orchestrator.run_setup import bind_to_vocabulary, with_absolute_paths
from maskx.orchestrator.serving.model_logging import log_model
from maskx.orchestrator.tracking.store import Tracking
from maskx.orchestrator.training.init_from import initialize_from, local_backbone_weights
from maskx.orchestrator.training.model_checkpoint import write_model_checkpoint

REPO = Path(__file__).resolve().parents[3]
TINY = str(REPO / "configs" / "tiny-cpu.yaml")
BUCKET = "init-sources"
STARTED_FROM = "maskx.init_from"  # the tag a run that took model.init_from carries (worker.INIT_FROM_TAG)


def test_mlflow_and_s3_sources_are_not_made_local_paths():
    """The driver makes relative paths absolute for workers that run elsewhere; a URI is no path
    (it asked for `/.../models:/maskx-demo/1` before)."""
    for source in ("models:/maskx-vg3k-detector-r50/1", "models:/detector@champion", "runs:/abc123/model",
                   "s3://bucket/runs/stage-1/checkpoint_00090000"):
        cfg = with_absolute_paths(load_config(TINY, [f"model.init_from={source}", f"model.backbone.weights={source}"]))
        assert cfg.model.init_from == source and cfg.model.backbone.weights == source
    cfg = with_absolute_paths(load_config(TINY, ["model.init_from=detector.pth", "root=/data/me"]))
    assert cfg.model.init_from == "/data/me/detector.pth"


def backbone_state(seed: int) -> dict:
    """A ResNet-18 state dict with the tiny config's GroupNorm, as one saves ImageNet weights once."""
    torch.manual_seed(seed)
    return resnet.resnet18(weights=None, norm_layer=lambda channels: nn.GroupNorm(32, channels)).state_dict()


@pytest.fixture(scope="module")
def sources(s3_endpoint, synth_shards, tmp_path_factory):
    """A start checkpoint registered as models:/init-start/1 in a sqlite store, the same folder on S3,
    and backbone weights on S3."""
    import boto3

    tmp = tmp_path_factory.mktemp("init-sources")
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    vocab = Vocabulary.load(synth_shards["vocab"])
    cfg = bind_to_vocabulary(load_config(TINY, ["seed=11"]), vocab)
    start = write_model_checkpoint(str(tmp / "start"), cfg, vocab)
    folder_url = f"s3://{BUCKET}/runs/stage-1/checkpoint_00000004"
    for name in os.listdir(start):
        storage.write_bytes(storage.join(folder_url, name), Path(start, name).read_bytes())
    weights_url = f"s3://{BUCKET}/weights/resnet18-gn.pth"
    torch.save(backbone_state(5), tmp / "resnet18-gn.pth")
    storage.write_bytes(weights_url, (tmp / "resnet18-gn.pth").read_bytes())
    tracking_uri = f"sqlite:///{tmp}/mlflow.db"
    from maskx.orchestrator.serving.inference import load_model

    loaded = load_model(start)
    run = Tracking(tracking_uri).start_run("stage-1", "stage-1", cfg.to_dict(), dump_config(cfg))
    files = run_folder.model_files(start, loaded.model, str(tmp / "model-files"))
    example = encode_jpeg(torch.zeros(3, 64, 64, dtype=torch.uint8)).numpy().tobytes()
    version = log_model(run, files, example, "init-start")
    return {"tmp": tmp, "vocab": vocab, "start": start, "folder_url": folder_url, "weights_url": weights_url,
            "tracking_uri": tracking_uri, "model_uri": f"models:/init-start/{version}"}


@pytest.mark.integration
def test_an_s3_checkpoint_folder_and_s3_backbone_weights_are_read_where_the_model_is_built(sources):
    vocab = sources["vocab"]
    cfg = bind_to_vocabulary(load_config(TINY, [f"model.backbone.weights={sources['weights_url']}"]), vocab)
    from maskx.models import build_model

    scratch = sources["tmp"] / "scratch"
    scratch.mkdir()
    model = build_model(local_backbone_weights(cfg.model, str(scratch), sources["tracking_uri"]))
    expected = backbone_state(5)
    assert all(torch.equal(tensor, expected[name]) for name, tensor in model.backbone.body.state_dict().items())
    taken = initialize_from(model, sources["folder_url"], vocab, ["rpn"])
    start = run_folder.load_state(sources["start"])["model"]
    assert "took" in taken and all(torch.equal(t, start[n]) for n, t in model.state_dict().items() if n.startswith("rpn."))
    with pytest.raises(FileNotFoundError, match="model.backbone.weights: no S3 object at s3://init-sources/weights/none.pth"):
        cfg.model.backbone.weights = f"s3://{BUCKET}/weights/none.pth"
        local_backbone_weights(cfg.model, str(scratch))


def train(sources, name: str, init_from: str, extra=()) -> tuple[str, str]:
    """`maskx train` in a process of its own, as a user runs it: (its run folder on S3, its output)."""
    overrides = [f"data.train=[{{manifest: {sources['shards']['coco_train']}, weight: 1.0}}]", "data.val=null",
                 "data.batch_size=2", "data.loader_workers=0", "solver.max_iter=2", "solver.warmup_iters=1",
                 "log_every=1", "checkpoint.every=2", f"checkpoint.storage_path=s3://{BUCKET}/runs",
                 f"mlflow.tracking_uri={sources['tracking_uri']}", "mlflow.registered_model=null",
                 "scaling.num_workers=1", f"name={name}", f"model.init_from={init_from}",
                 # The stage-wise protocol's second stage: the detector taken and frozen, the mask branch new.
                 "model.init_from_parts=[rpn, box_head]", "model.freeze=[backbone, rpn, box_head]", *extra]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-P", "-m", "maskx.orchestrator.cli", "train", "--config", TINY,
                           "--run-name", name, *overrides], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return f"s3://{BUCKET}/runs/{name}", done.stdout + done.stderr


def trained_state(run_folder_url: str, scratch: Path) -> dict:
    scratch.mkdir()
    return run_folder.load_state(run_folder.local_checkpoint(f"{run_folder_url}/checkpoint_00000002", str(scratch)))["model"]


def init_from_tag(sources, run_name: str) -> str:
    import mlflow

    client = mlflow.MlflowClient(sources["tracking_uri"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"attributes.run_name = '{run_name}'")
    return runs[0].data.tags[STARTED_FROM]


@pytest.fixture(scope="module")
def shards_in(sources, synth_shards):
    sources["shards"] = synth_shards
    return sources


@pytest.mark.integration
@pytest.mark.core
def test_maskx_train_starts_from_a_registered_model_with_backbone_weights_on_s3(shards_in):
    sources = shards_in
    folder, output = train(sources, "from-registry", sources["model_uri"],
                           [f"model.backbone.weights={sources['weights_url']}"])
    state = trained_state(folder, sources["tmp"] / "registry-run")
    start, backbone = run_folder.load_state(sources["start"])["model"], backbone_state(5)
    # Frozen, so still what they were taken from: the backbone from the S3 weights, the detector from the registry.
    assert all(torch.equal(state[f"backbone.body.{n}"], t) for n, t in backbone.items() if not n.startswith("fc."))
    assert all(torch.equal(t, start[n]) for n, t in state.items() if n.startswith(("rpn.", "roi_heads.box_head.")))
    assert any(not torch.equal(t, start[n]) for n, t in state.items() if n.startswith("roi_heads.mask_head."))  # trained
    assert init_from_tag(sources, "from-registry").startswith(f"model.init_from {sources['model_uri']}: took ")


@pytest.mark.integration
def test_maskx_train_starts_from_a_checkpoint_folder_on_s3(shards_in):
    sources = shards_in
    folder, _ = train(sources, "from-s3-folder", sources["folder_url"])
    state = trained_state(folder, sources["tmp"] / "s3-folder-run")
    start = run_folder.load_state(sources["start"])["model"]
    assert all(torch.equal(t, start[n]) for n, t in state.items() if n.startswith(("rpn.", "roi_heads.box_head.")))
    assert init_from_tag(sources, "from-s3-folder").startswith(f"model.init_from {sources['folder_url']}: took ")
