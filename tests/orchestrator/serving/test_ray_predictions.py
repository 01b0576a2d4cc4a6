"""`maskx predict --ray` on a 2-node local Ray cluster (`ray.cluster_utils.Cluster`): the same
detections as one process, on the demo's val images, on ../shared/data/coco-tiny and on shards; a
worker node killed mid-job; a rerun that finishes a job; unreadable images listed."""
import json
import os
import shutil
import threading

import pytest
import torch

from maskx.datasets.shard_format import load_manifest
from maskx.datasets.vocab import Vocabulary
from maskx.orchestrator.cli import main
from maskx.orchestrator.serving import predictions
from maskx.orchestrator.serving.inference import load_model, model_weights
from maskx.orchestrator.serving.block_folder import read_results
from maskx.orchestrator.serving.ray_predictions import predict_on_ray
from ...conftest import SHARED_DATA, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.serving, pytest.mark.cluster]

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


# Models that predict something (tests/predicting.py): trained on the demo's data, with known logits
# (about 100 detections an image, scores from ~0.1 to ~0.9) for coco-tiny's COCO vocabulary.
@pytest.fixture(scope="module")
def coco_tiny_model(predicting_model):
    if not os.path.isdir(COCO_TINY):
        pytest.skip(f"no {COCO_TINY} here (the project's real COCO sample)")
    from maskx.datasets.vocab import COCO_CATEGORIES, build_vocabulary

    return predicting_model(build_vocabulary(COCO_CATEGORIES))


@pytest.fixture(scope="module")
def synth_model(synth_shards, predicting_model):
    return predicting_model(Vocabulary.load(synth_shards["vocab"]))


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
    if data == "demo-val":  # the model trained on it (coco-tiny's has known logits: boxes from no training)
        assert ap[0] > 0 and ap[12] > 0, ap  # box and mask AP: something to be equal about
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
    kept = [out / folder / "000001.json" for folder in ("blocks", "results")]
    before = [(path.stat().st_ino, path.stat().st_mtime_ns) for path in kept]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "in 2 blocks" in printed and "1 blocks written by an earlier run skipped" in printed
    assert [(path.stat().st_ino, path.stat().st_mtime_ns) for path in kept] == before  # not written again
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

    def entries():
        folder = out / "blocks"
        return [json.loads((folder / name).read_text()) for name in sorted(os.listdir(folder))] if folder.is_dir() else []

    thread = threading.Thread(target=job)
    thread.start()
    # The worker node has predicted a block, and holds a live model actor, when it goes.
    wait_until(lambda: len(entries()) >= 3 and any(worker.node_id in e["nodes"] for e in entries()),
               "three blocks, one predicted on the worker node", thread.is_alive, lambda: outcome, timeout=300)
    from ray.util.state import list_actors

    held = [a for a in list_actors(filters=[("node_id", "=", worker.node_id), ("state", "=", "ALIVE")])
            if "BlockPredictor" in a.class_name]
    written_before_kill = {e["block"] for e in entries()}
    cluster.remove_node(worker)
    thread.join(timeout=600)
    assert not thread.is_alive() and "error" not in outcome, outcome
    assert held, "no model actor on the worker node when it was removed"
    summary = outcome["summary"]
    assert len(written_before_kill) < 25 and summary.blocks == 25 and summary.images == 50
    # The pool's work went on on the node left: the blocks written last were predicted there (the few
    # written just after the kill may have been predicted on the worker node before it went).
    last = sorted(os.listdir(out / "blocks"), key=lambda name: (out / "blocks" / name).stat().st_mtime_ns)[-3:]
    assert all(json.loads((out / "blocks" / name).read_text())["nodes"] == [cluster.head_node.node_id] for name in last)
    got = read_results(str(out))
    assert sorted({r["image_id"] for r in got}) == sorted({r["image_id"] for r in expected})
    assert by_image(got) == by_image(expected)  # every image once: no block written twice, none missing
