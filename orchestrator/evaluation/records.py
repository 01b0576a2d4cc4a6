"""COCO records of a model's work: image entries and ground-truth annotations from eval targets, result
entries from its detections (masks as COCO RLEs), category id = maskx label."""
from __future__ import annotations

from typing import Iterable, Iterator, Optional

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import nn
from torchvision.models.detection.roi_heads import paste_masks_in_image

from maskx.datasets.batch import Batch
from maskx.datasets.shard_format import rle_from_json, rle_to_json

MASK_THRESHOLD = 0.5  # a pixel belongs to the mask where the predicted probability exceeds this

# One rank's records: COCO image entries, ground-truth annotations, detections (category id = label).
Records = tuple[list[dict], list[dict], list[dict]]


@torch.no_grad()
def records_of(model: nn.Module, batches: Iterable[Batch], device: torch.device) -> Records:
    """COCO image entries, ground-truth annotations and detections for every batch."""
    model.eval()
    images, annotations, detections = [], [], []
    for batch in batches:
        inputs, _ = batch.to_device(device)
        outputs = model(inputs)
        for image, target, output in zip(batch.images, batch.targets, outputs):
            entry, anns = ground_truth_records(target, tuple(image.shape[-2:]))
            images.append(entry)
            annotations += anns
            detections += detection_records(target["image_id"], {k: v.cpu() for k, v in output.items()},
                                            tuple(image.shape[-2:]))
    return images, annotations, detections


def ground_truth_records(target: dict, image_size: tuple[int, int]) -> tuple[dict, list[dict]]:
    """A COCO image entry and annotation entries (category id = maskx label) from an eval target."""
    height, width = image_size
    image = {"id": target["image_id"], "width": width, "height": height}
    annotations = []
    for box, label, crowd, rle in zip(target["boxes"].tolist(), target["labels"].tolist(), target["iscrowd"].tolist(),
                                      target["segmentations"]):
        x0, y0, x1, y1 = box
        entry = {"image_id": target["image_id"], "category_id": int(label), "bbox": [x0, y0, x1 - x0, y1 - y0],
                 "iscrowd": int(crowd), "area": (x1 - x0) * (y1 - y0)}
        if rle is not None:
            entry["segmentation"] = rle
            entry["area"] = float(mask_utils.area(rle_from_json(rle)))
        annotations.append(entry)
    return image, annotations


def detection_records(image_id: int, detection: dict, image_size: tuple[int, int],
                      mask_threshold: float = MASK_THRESHOLD) -> list[dict]:
    """COCO result entries from one image's model output (boxes xyxy, labels, scores, and `masks` or
    `mask_probs`: `binary_masks`); `image_size` is the (H, W) the model was given."""
    records = []
    rles = mask_rles(detection, image_size, mask_threshold)
    for i, (box, label, score) in enumerate(zip(detection["boxes"].tolist(), detection["labels"].tolist(), detection["scores"].tolist())):
        x0, y0, x1, y1 = box
        entry = {"image_id": image_id, "category_id": int(label), "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)}
        if rles is not None:
            entry["segmentation"] = rles[i]
        records.append(entry)
    return records


def binary_masks(detection: dict, image_size: tuple[int, int], threshold: float = MASK_THRESHOLD) -> Iterator[torch.Tensor]:
    """Each detection's mask on the whole image, (H, W) bool, one at a time: from probabilities pasted
    already (`masks`, (N, 1, H, W)) or from the head's (`mask_probs`, (N, 1, M, M), pasted here one by
    one, so that memory holds one full-size float mask, not N: `PreResizedTransform.paste_masks`)."""
    if "masks" in detection:
        for probs in detection["masks"]:
            yield probs[0] > threshold
        return
    for probs, box in zip(detection["mask_probs"], detection["boxes"]):
        yield paste_masks_in_image(probs[None], box[None], image_size)[0, 0] > threshold


def mask_rles(detection: dict, image_size: tuple[int, int], threshold: float = MASK_THRESHOLD) -> Optional[list[dict]]:
    """COCO RLEs (`{"size": [H, W], "counts": str}`) of `binary_masks`, or None without masks."""
    if "masks" not in detection and "mask_probs" not in detection:
        return None
    return [rle_to_json(mask_utils.encode(np.asfortranarray(mask.cpu().numpy(), dtype=np.uint8)))
            for mask in binary_masks(detection, image_size, threshold)]
