import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from maskx.datasets.shard_format import load_manifest, rle_from_json
from maskx.datasets.stream import EvalStream, Source
from maskx.orchestrator.evaluation.coco_scoring import coco_api, evaluate
from maskx.orchestrator.evaluation.records import detection_records, ground_truth_records
from maskx.datasets.shard_format import rle_to_json

from ...conftest import SHARED_DATA


def perfect_detections(target):
    """Model-shaped output that reproduces the ground truth exactly."""
    masks = torch.stack([torch.from_numpy(mask_utils.decode(rle_from_json(r))).float() for r in target["segmentations"]])[:, None] \
        if target["segmentations"] and all(r is not None for r in target["segmentations"]) else None
    out = {"boxes": target["boxes"], "labels": target["labels"], "scores": torch.ones(len(target["labels"]))}
    if masks is not None:
        out["masks"] = masks
    return out


def evaluate_val_split(synth_shards, detect, backend="faster-coco-eval"):
    """Ground truth of the synthetic val split against detect(target) for every image."""
    manifest = load_manifest(synth_shards["coco_val"])
    vocab = manifest.vocab()
    images, annotations, detections = [], [], []
    for batch in EvalStream([Source.from_manifest(manifest)], vocab, batch_size=4):
        for image, target in zip(batch.images, batch.targets):
            entry, anns = ground_truth_records(target, tuple(image.shape[-2:]))
            images.append(entry)
            annotations += anns
            detections += detection_records(target["image_id"], detect(target), tuple(image.shape[-2:]))
    return evaluate(images, annotations, detections, vocab.num_classes, vocab.class_set("voc"), backend)


def test_predictions_equal_to_ground_truth_give_ap_one(synth_shards):
    metrics, tables, _ = evaluate_val_split(synth_shards, perfect_detections)
    for iou_type in ("bbox", "segm"):
        for subset in ("all", "setA", "setB"):
            assert metrics[f"{iou_type}/{subset}/AP"] == 1.0, (iou_type, subset)
    assert all(v == -1.0 or abs(v - 1.0) < 1e-9 for v in tables["segm"].values()), tables


def test_wrong_labels_give_low_ap(synth_shards):
    num_classes = load_manifest(synth_shards["coco_val"]).vocab().num_classes

    def shifted(target):
        wrong = perfect_detections(target)
        wrong["labels"] = (wrong["labels"] % (num_classes - 1)) + 1  # every label shifted by one
        return wrong

    metrics, _, _ = evaluate_val_split(synth_shards, shifted)
    assert metrics["bbox/all/AP"] < 0.2


def noisy(target, rng):
    """A model's kind of output: boxes and masks shifted a little, some missed, some on the wrong class,
    scores at random, and a stray detection."""
    out = perfect_detections(target)
    n = len(out["labels"])
    shift = torch.from_numpy(rng.integers(-6, 7, size=(n, 4))).float()
    out["boxes"] = out["boxes"] + shift
    out["scores"] = torch.from_numpy(rng.uniform(0.05, 1.0, size=n)).float()
    out["labels"] = torch.where(torch.from_numpy(rng.uniform(size=n) < 0.15), (out["labels"] % 10) + 1, out["labels"])
    if "masks" in out:
        out["masks"] = torch.roll(out["masks"], shifts=(int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), dims=(2, 3))
    keep = torch.from_numpy(rng.uniform(size=n) > 0.1)
    return {k: v[keep] for k, v in out.items()}


def coco_tiny_records(rng):
    """The real coco-tiny val annotations as maskx's evaluation records (COCO ids as labels, RLE masks)
    and detections made from them as `noisy` makes them."""
    coco = COCO(str(SHARED_DATA / "coco-tiny" / "annotations" / "instances_val2017.json"))
    images, annotations, detections = [], [], []
    for image in coco.dataset["images"]:
        images.append({"id": image["id"], "width": image["width"], "height": image["height"]})
        for ann in coco.imgToAnns[image["id"]]:
            rle = coco.annToRLE(ann)
            annotations.append({"image_id": image["id"], "category_id": ann["category_id"], "bbox": ann["bbox"],
                                "iscrowd": ann["iscrowd"], "area": float(mask_utils.area(rle)),
                                "segmentation": rle_to_json(rle)})
            if rng.uniform() < 0.1:
                continue  # missed
            mask = np.roll(coco.annToMask(ann), (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), axis=(0, 1))
            x, y, w, h = ann["bbox"]
            detections.append({"image_id": image["id"], "bbox": [x + rng.uniform(-5, 5), y + rng.uniform(-5, 5), w, h],
                               "category_id": ann["category_id"] if rng.uniform() > 0.1 else int(rng.integers(1, 91)),
                               "score": float(rng.uniform(0.05, 1)),
                               "segmentation": rle_to_json(mask_utils.encode(np.asfortranarray(mask)))})
    return images, annotations, detections


def test_faster_coco_eval_gives_pycocotools_numbers(synth_shards):
    """Every AP figure and per-class AP equal to 1e-6 with either backend, on the real coco-tiny val
    annotations (polygons, crowd RLEs, 80 classes) and on the synthetic val split, against detections
    with the errors a model makes."""
    assert coco_api("faster-coco-eval")[0].__module__.startswith("faster_coco_eval")  # installed, so compared
    records = coco_tiny_records(np.random.default_rng(0))
    as_json = json.dumps(records)
    voc = [1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72]
    results = {backend: evaluate(*records, 91, voc, backend) for backend in ("faster-coco-eval", "pycocotools")}
    assert json.dumps(records) == as_json  # left as they were: `maskx eval --json` writes the detections
    rng = {backend: np.random.default_rng(1) for backend in ("faster-coco-eval", "pycocotools")}
    synthetic = {backend: evaluate_val_split(synth_shards, lambda target: noisy(target, rng[backend]), backend)
                 for backend in ("faster-coco-eval", "pycocotools")}
    for (faster_metrics, faster_tables, faster_curves), (metrics, tables, curves) in ((results["faster-coco-eval"], results["pycocotools"]),
                                                              (synthetic["faster-coco-eval"], synthetic["pycocotools"])):
        assert faster_metrics.keys() == metrics.keys() and 0.1 < metrics["segm/all/AP"] < 0.95, metrics
        assert all(abs(faster_metrics[k] - metrics[k]) < 1e-6 for k in metrics), (faster_metrics, metrics)
        assert faster_tables.keys() == tables.keys() == {"bbox", "segm"}
        for iou_type, table in tables.items():
            assert faster_tables[iou_type].keys() == table.keys()
            assert all(abs(faster_tables[iou_type][c] - ap) < 1e-6 for c, ap in table.items()), iou_type
        for iou_type, subsets in curves.items():  # the error analysis too
            for subset, levels in subsets.items():
                for level, curve in levels.items():
                    assert np.allclose(faster_curves[iou_type][subset][level], curve, atol=1e-6), (iou_type, subset, level)


def test_an_unknown_backend_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="eval_backend: 'fast' is not one of faster-coco-eval, pycocotools"):
        coco_api("fast")


def test_a_subset_s_figures_are_what_cocoeval_gives_on_that_subset_alone():
    """evaluate() runs COCOeval once over every class and reads set A's and set B's AP from their
    columns: the same figures as pycocotools' summarize() of a COCOeval run on each subset alone."""
    from pycocotools.cocoeval import COCOeval

    images, annotations, detections = coco_tiny_records(np.random.default_rng(0))
    voc = [1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72]
    metrics, _, _ = evaluate(images, annotations, detections, 91, voc, "pycocotools")
    gt = COCO()
    gt.dataset = {"images": images, "annotations": [dict(a, id=i + 1) for i, a in enumerate(annotations)],
                  "categories": [{"id": c} for c in range(1, 91)]}
    gt.createIndex()
    dt = gt.loadRes([dict(d, segmentation=dict(d["segmentation"])) for d in detections])
    present = sorted({a["category_id"] for a in annotations})
    for subset, cat_ids in (("setA", [c for c in present if c in voc]), ("setB", [c for c in present if c not in voc])):
        alone = COCOeval(gt, dt, "segm")
        alone.params.catIds = cat_ids
        alone.evaluate()
        alone.accumulate()
        alone.summarize()
        for name, value in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), alone.stats):
            assert metrics[f"segm/{subset}/{name}"] == pytest.approx(max(value, 0.0), abs=1e-9), (subset, name)
