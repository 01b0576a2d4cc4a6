import torch
from pycocotools import mask as mask_utils

from maskx.datasets.shard_format import load_manifest, rle_from_json
from maskx.datasets.stream import EvalStream, Source
from maskx.orchestrator.serving.evaluation import detection_records, evaluate, ground_truth_records


def perfect_detections(target):
    """Model-shaped output that reproduces the ground truth exactly."""
    masks = torch.stack([torch.from_numpy(mask_utils.decode(rle_from_json(r))).float() for r in target["segmentations"]])[:, None] \
        if target["segmentations"] and all(r is not None for r in target["segmentations"]) else None
    out = {"boxes": target["boxes"], "labels": target["labels"], "scores": torch.ones(len(target["labels"]))}
    if masks is not None:
        out["masks"] = masks
    return out


def evaluate_val_split(synth_shards, detect):
    """Ground truth of the synthetic val split against detect(target) for every image."""
    manifest = load_manifest(synth_shards["coco_val"])
    vocab = manifest.vocab()
    images, annotations, detections = [], [], []
    for batch in EvalStream([Source.from_manifest(manifest)], vocab, batch_size=4):
        for image, target in zip(batch.images, batch.targets):
            entry, anns = ground_truth_records(target, tuple(image.shape[-2:]))
            images.append(entry)
            annotations += anns
            detections += detection_records(target["image_id"], detect(target))
    return evaluate(images, annotations, detections, vocab.num_classes, vocab.class_set("voc"))


def test_predictions_equal_to_ground_truth_give_ap_one(synth_shards):
    metrics, tables = evaluate_val_split(synth_shards, perfect_detections)
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

    metrics, _ = evaluate_val_split(synth_shards, shifted)
    assert metrics["bbox/all/AP"] < 0.2
