"""Sample decoding and detection transforms: shard sample -> (image, target)."""
from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass
from typing import Optional

import torch
from pycocotools import mask as mask_utils
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from .shard_format import FORMAT_VERSION, rle_from_json
from .vocab import Vocabulary

log = logging.getLogger(__name__)


# A training target's keys with one entry per instance (what dropping an instance must drop too).
PER_INSTANCE = ("boxes", "labels", "has_mask")


class BadSample(ValueError):
    """A sample that cannot be used; the stream skips and counts it."""


def decode_sample(sample: dict, vocab: Vocabulary, mask_labels: Optional[set[int]], train: bool) -> tuple[torch.Tensor, dict]:
    """A shard sample -> image (3, H, W) uint8 and a target dict.

    target: boxes (N, 4) xyxy float32, labels (N,) int64, has_mask (N,) bool (a set-A instance with
    an RLE), and for training, when some instance has a mask, `mask_rles`: their RLEs, in order,
    which `decode_masks` turns into masks in the step. Training drops crowd regions (as detectron2);
    evaluation keeps them with iscrowd and the source RLEs.
    """
    key = sample.get("__key__", "?")
    if "json" not in sample or "jpg" not in sample:
        raise BadSample(f"sample {key}: needs .jpg and .json, has {sorted(k for k in sample if not k.startswith('__'))}")
    try:
        record = json.loads(sample["json"])
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadSample(f"sample {key}: broken JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT_VERSION:
        raise BadSample(f"sample {key}: shard format {record.get('format') if isinstance(record, dict) else None!r}, expected {FORMAT_VERSION}")
    try:
        image = decode_jpeg(torch.frombuffer(bytearray(sample["jpg"]), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        raise BadSample(f"sample {key}: corrupt JPEG ({str(exc).splitlines()[0]})") from None
    height, width = image.shape[-2:]
    if (width, height) != (record.get("width"), record.get("height")):
        raise BadSample(f"sample {key}: image is {width}x{height}, record says {record.get('width')}x{record.get('height')}")

    boxes, labels, rles, iscrowd = [], [], [], []
    try:
        for ann in record["annotations"]:
            label = vocab.label(ann["category"])
            if label is None or (train and ann.get("iscrowd", 0)):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            if not all(math.isfinite(v) for v in (x, y, w, h)):
                raise ValueError(f"bbox {ann['bbox']} is not finite")
            boxes.append([x, y, x + w, y + h])
            labels.append(label)
            rles.append(ann.get("segmentation"))
            iscrowd.append(int(ann.get("iscrowd", 0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise BadSample(f"sample {key}: bad annotation ({type(exc).__name__}: {exc})") from None
    if any(r is not None and not is_compressed_rle(r, height, width) for r in rles):
        raise BadSample(f"sample {key}: bad RLE (not a {height}x{width} compressed RLE)")
    has_mask = [r is not None and (mask_labels is None or l in mask_labels) for r, l in zip(rles, labels)]
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "has_mask": torch.tensor(has_mask, dtype=torch.bool),
    }
    if train and any(has_mask):
        # Decoded by the train step (`decode_masks`), not here: RLE decoding cost as much as the JPEG,
        # and the step's process has cores to spare while the GPU works.
        target["mask_rles"] = [r for r, m in zip(rles, has_mask) if m]
    if not train:
        try:
            image_id, source = int(record["image_id"]), str(record["source"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BadSample(f"sample {key}: bad record ({type(exc).__name__}: {exc})") from None
        target.update(image_id=image_id, source=source, iscrowd=torch.tensor(iscrowd, dtype=torch.int64),
                      segmentations=rles, key=key)
    return image, target


def is_compressed_rle(rle, height: int, width: int) -> bool:
    return isinstance(rle, dict) and rle.get("size") == [height, width] and isinstance(rle.get("counts"), str)


def decode_masks(target: dict, key: str = "?") -> dict:
    """`mask_rles` -> `masks` (M, H, W) uint8, one row per instance with `has_mask` (compact: the
    model maps rows to instances through has_mask). An RLE that does not decode drops that
    instance's mask (logged), never the step."""
    if "mask_rles" not in target:
        return target
    target = dict(target)
    rles = target.pop("mask_rles")
    try:
        decoded = mask_utils.decode([rle_from_json(r) for r in rles])
    except Exception as exc:
        log.warning("sample %s: its masks do not decode (%s); trained without them", key, exc)
        target["has_mask"] = torch.zeros_like(target["has_mask"])
        return target
    # RLE runs down columns: pycocotools hands back (H, W, M) in column-major order, which is
    # (M, W, H) row-major; seen through a transposed view, the masks cost no transposing copy.
    target["masks"] = torch.from_numpy(decoded.transpose(2, 1, 0)).transpose(1, 2)
    return target


@dataclass(frozen=True)
class Augmentation:
    """What the train step does to one image, on the device: the shorter side to `min_size` with the
    longer at most `max_size`, then a horizontal flip when `flip`. The stream draws it (seeded, so a
    resumed run draws the same) and ships the image as uint8 at its source size."""
    min_size: int
    max_size: int
    flip: bool


def draw_augmentation(rng: random.Random, min_sizes: list[int], max_size: int, flip_prob: float) -> Augmentation:
    return Augmentation(rng.choice(min_sizes), max_size, rng.random() < flip_prob)


def augment(image: torch.Tensor, target: dict, augmentation: Augmentation) -> tuple[torch.Tensor, dict]:
    return resize_and_flip(image, target, augmentation.min_size, augmentation.max_size, augmentation.flip)


def resize_and_flip(image: torch.Tensor, target: dict, min_size: int, max_size: int, flip: bool) -> tuple[torch.Tensor, dict]:
    """Shorter side to min_size with the longer side at most max_size, then an optional
    horizontal flip; boxes follow. Boxes left under a pixel are dropped. Runs wherever the tensors
    are (the train step calls it on the GPU).

    Masks keep the source resolution and are only flipped: the model maps proposals onto the
    mask grid, so resizing (N, H, W) masks here would be work thrown away by RoIAlign.
    """
    canvas = tuple(image.shape[-2:])
    boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=canvas)
    image = F.resize(image, [min_size], max_size=max_size, antialias=True)
    boxes = F.resize(boxes, list(image.shape[-2:]))
    masks = target.get("masks")
    if flip:
        image, boxes = F.horizontal_flip(image), F.horizontal_flip(boxes)
        masks = masks.flip(-1) if masks is not None else None
    boxes = boxes.as_subclass(torch.Tensor)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
    instances = {"boxes": boxes, "labels": target["labels"], "has_mask": target["has_mask"]}
    if not keep.all():  # rare: indexing copies every (H, W) mask
        if masks is not None:  # one row per instance, or compact: one per instance with a mask
            masks = masks[keep] if len(masks) == len(keep) else masks[keep[target["has_mask"]]]
        instances = {k: v[keep] for k, v in instances.items()}
    # What is not per instance (the sample's sampling seed) goes along unchanged.
    out = {k: v for k, v in target.items() if k not in PER_INSTANCE and k != "masks"}
    out.update(instances)
    if masks is not None and out["has_mask"].any():
        out["masks"] = masks
    return image, out
