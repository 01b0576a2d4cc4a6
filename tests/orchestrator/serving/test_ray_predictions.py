"""`maskx predict --ray` on a 2-node local Ray cluster (`ray.cluster_utils.Cluster`): the same
detections as one process, on the demo's val images, on ../shared/data/coco-tiny and on shards; a
worker node killed mid-job; a rerun that finishes a job; unreadable images listed."""
import json
import os
import shutil
import threading
import time

import pytest
import torch

from maskx.datasets.shard_format import load_manifest
from maskx.datasets.vocab import Vocabulary
from maskx.models import build_model
from maskx.orchestrator import run_folder
from maskx.orchestrator.cli import main
from maskx.orchestrator.config import dump_config, load_config
from maskx.orchestrator.serving import predictions
from maskx.orchestrator.serving.inference import load_model, model_weights
from maskx.orchestrator.serving.ray_predictions import predict_on_ray, read_results
from maskx.orchestrator.training.step import build_lr_scheduler, build_optimizer
from ...conftest import SHARED_DATA

pytestmark = [pytest.mark.integration, pytest.mark.serving, pytest.mark.cluster]

TINY = os.path.join(os.path.dirname(__file__), "..", "..", "..", "configs", "tiny-cpu.yaml")
COCO_TINY = str(SHARED_DATA / "coco-tiny")


@pytest.fixture(scope="module")
def two_nodes(s3_endpoint):
    """A head and a worker node; Ray Data spreads the two model actors over them. (The S3 endpoint
    first: the nodes' workers take its address and keys from the environment they start with.)"""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()


def untrained_model(folder, vocab: Vocabulary) -> str:
    """A checkpoint of an untrained tiny model that keeps every detection (score threshold 0): 100
    boxes and masks an image, whose equality says more than a trained model's few."""
    cfg = load_config(TINY, [f"model.num_classes={vocab.num_classes}", "model.box_score_thresh=0.0"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    optimizer = build_optimizer(model, cfg.solver)
    contents = run_folder.checkpoint_contents(model, optimizer, build_lr_scheduler(optimizer, cfg.solver),
                                              run_folder.TrainState(iteration=1))
    run_folder.write_checkpoint(str(folder), contents, dump_config(cfg), vocab)
    return str(folder)


@pytest.fixture(scope="module")
def coco_tiny_model(tmp_path_factory):
    if not os.path.isdir(COCO_TINY):
        pytest.skip(f"no {COCO_TINY} here (the project's real COCO sample)")
    from maskx.datasets.vocab import COCO_CATEGORIES, build_vocabulary

    return untrained_model(tmp_path_factory.mktemp("coco-tiny-model"), build_vocabulary(COCO_CATEGORIES))


@pytest.fixture(scope="module")
def synth_model(synth_shards, tmp_path_factory):
    return untrained_model(tmp_path_factory.mktemp("synth-model"), Vocabulary.load(synth_shards["vocab"]))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The single-process reference, computed once per (model, input, batch size) for the module's tests."""
    computed = {}

    def reference(model: str, images=None, shards=None, batch_size=2) -> list[dict]:
        key = (model, images, shards, batch_size)
        if key not in computed:
            computed[key] = predict_in_one_process(model, tmp_path_factory.mktemp("one-process"), images, shards,
                                                   batch_size)
        return computed[key]

    return reference


def predict_in_one_process(model: str, out, images=None, shards=None, batch_size=2) -> list[dict]:
    """`maskx predict` with one thread: as many as an actor with one CPU has (Ray sets
    OMP_NUM_THREADS), so that not even float rounding differs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loaded = load_model(model)
        if images:
            summary = predictions.predict_images(loaded, images, str(out), batch_size, progress=False)
        else:
            summary = predictions.predict_shards(loaded, shards, str(out), batch_size, progress=False)
    finally:
        torch.set_num_threads(threads)
    return json.loads(open(summary.results).read())


def on_ray(model: str, out, **inputs) -> list[dict]:
    summary = predict_on_ray(model, model_weights(model), str(out), actors=(2, 2), **inputs)
    assert summary.images and summary.blocks
    return read_results(str(out))


def by_image(results: list[dict]) -> list[dict]:
    return sorted(results, key=lambda r: (r["image_id"], -r["score"], r["category_id"], r["bbox"]))


def average_precisions(annotations: str, results: list[dict], tmp_path) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    path = tmp_path / f"results-{len(os.listdir(tmp_path))}.json"
    path.write_text(json.dumps(results))
    truth, stats = COCO(annotations), []
    for iou_type in ("bbox", "segm"):
        evaluation = COCOeval(truth, truth.loadRes(str(path)), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        stats += list(evaluation.stats)
    return stats


@pytest.mark.parametrize("data", [pytest.param("demo-val", marks=pytest.mark.core), "coco-tiny"])
def test_on_ray_the_same_detections_and_ap_as_one_process(data, two_nodes, synth_paths, synth_model, request,
                                                          one_process, tmp_path):
    if data == "demo-val":
        model, images, annotations = synth_model, synth_paths["coco_val_images"], synth_paths["coco_val_annotations"]
    else:
        model = request.getfixturevalue("coco_tiny_model")
        images, annotations = f"{COCO_TINY}/val2017", f"{COCO_TINY}/annotations/instances_val2017.json"
    expected = one_process(model, images=images)
    got = on_ray(model, tmp_path / "ray", images=images, batch_size=2, block_size=4)
    assert len(got) == len(expected) > 0
    assert by_image(got) == by_image(expected)  # boxes, scores, classes and RLE masks, to the bit
    ap = average_precisions(annotations, got, tmp_path)
    assert ap == average_precisions(annotations, expected, tmp_path)
    print(data, "bbox AP", ap[0], "segm AP", ap[12])


def test_on_ray_from_an_s3_prefix_to_s3(two_nodes, synth_paths, synth_model, one_process, tmp_path):
    from pathlib import Path

    from maskx.datasets import storage

    storage.s3_client().create_bucket(Bucket="ray-predict")
    for path in sorted(Path(synth_paths["coco_val_images"]).glob("*.jpg")):
        storage.s3_client().upload_file(str(path), "ray-predict", f"photos/{path.name}")
    expected = one_process(synth_model, images=synth_paths["coco_val_images"])
    got = on_ray(synth_model, "s3://ray-predict/predictions", images="s3://ray-predict/photos", batch_size=2,
                 block_size=4)
    assert by_image(got) == by_image(expected)
    assert storage.stat("s3://ray-predict/predictions/blocks/000002.json") is not None


def test_on_ray_over_shards_a_shard_is_a_block(two_nodes, synth_shards, synth_model, one_process, tmp_path):
    expected = one_process(synth_model, shards=synth_shards["coco_val"], batch_size=1)
    got = on_ray(synth_model, tmp_path / "ray", shards=synth_shards["coco_val"], batch_size=1, block_size=2)
    assert by_image(got) == by_image(expected)
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["blocks"] == len(load_manifest(synth_shards["coco_val"]).shards) == 2


def test_a_rerun_writes_only_missing_blocks_lists_unreadable_images_and_refuses_another_job(
        two_nodes, synth_paths, synth_model, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(synth_paths["coco_val_images"], images)
    (images / "broken.jpg").write_bytes(b"not a jpeg")  # listed, not fatal
    out = tmp_path / "out"
    command = ["predict", "--ray", "--model", synth_model, "--images", str(images), "--out", str(out),
               "--batch-size", "2", "--block-size", "4", "--actors", "2"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "on 10 images in 3 blocks" in printed and "1 unreadable" in printed and "broken.jpg" in printed
    first = read_results(str(out))
    for block in ("000000", "000002"):  # as if the job had died before writing them
        os.remove(out / "blocks" / f"{block}.json")
        os.remove(out / "results" / f"{block}.json")
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "in 2 blocks" in printed and "1 blocks written by an earlier run skipped" in printed
    assert read_results(str(out)) == first
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["images_predicted"] == 10 and [u["image"] for u in manifest["unreadable"]] == [str(images / "broken.jpg")]

    assert main(command[:-4] + ["--block-size", "2", "--actors", "2"]) == 2
    assert "holds another job's blocks (block_size 4 -> 2, blocks 3 -> 6)" in capsys.readouterr().err


def test_a_worker_node_killed_mid_job_the_job_finishes_with_every_image_once(two_nodes, coco_tiny_model, one_process,
                                                                             tmp_path):
    cluster, worker = two_nodes
    images = f"{COCO_TINY}/val2017"
    expected = one_process(coco_tiny_model, images=images)  # batches of 2: a block is one batch
    out, outcome = tmp_path / "ray", {}

    def job():
        try:
            outcome["summary"] = predict_on_ray(coco_tiny_model, model_weights(coco_tiny_model), str(out),
                                                images=images, batch_size=2, block_size=2, actors=(2, 2))
        except BaseException as exc:  # the assertion below reports it
            outcome["error"] = exc

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.monotonic() + 300
    while len(os.listdir(out / "blocks") if (out / "blocks").is_dir() else []) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    written_before_kill = len(os.listdir(out / "blocks"))
    cluster.remove_node(worker)
    thread.join(timeout=600)
    assert not thread.is_alive() and "error" not in outcome, outcome
    summary = outcome["summary"]
    assert written_before_kill < 25 and summary.blocks == 25 and summary.images == 50
    got = read_results(str(out))
    assert sorted({r["image_id"] for r in got}) == sorted({r["image_id"] for r in expected})
    assert by_image(got) == by_image(expected)  # every image once: no block written twice, none missing
