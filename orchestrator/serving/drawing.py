"""Ground truth and predictions drawn the same way, as detectron2's Visualizer does: masks filled,
boxes, class names. A set-B class (no masks in training) is named `name [B]` and drawn orange; set A
blue; an object without a mask (a Visual Genome box) is a box alone, named `name (box only)`. One
drawing for every picture maskx makes: `maskx predict --overlays`, `maskx overlay`, the overlays a
registered model logs, the evaluation examples and `maskx browse` (reporting/).
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchvision.io import write_png
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from maskx.datasets.shard_format import rle_from_json
from maskx.datasets.vocab import Vocabulary
from ..evaluation.records import binary_masks
from .inference import LoadedModel, kept, predict, read_image

COLORS = {"A": (31, 119, 180), "B": (255, 127, 14)}  # matplotlib's tab:blue and tab:orange, as in figures.py
MASK_ALPHA = 0.45
BOX_WIDTH = 2


def class_name(vocab: Vocabulary, label: int, set_a: Optional[set[int]]) -> str:
    """The class's name, `[B]` after it for a set-B class (`set_a` None: every class is in set A)."""
    return vocab.name(label) if set_a is None or label in set_a else f"{vocab.name(label)} [B]"


def set_colors(labels: list[int], set_a: Optional[set[int]]) -> list[tuple[int, int, int]]:
    return [COLORS["A" if set_a is None or label in set_a else "B"] for label in labels]


def model_set_a(loaded: LoadedModel) -> Optional[set[int]]:
    """The labels whose masks trained a loaded model (None: every class's)."""
    mask_classes = loaded.config.model.mask_classes
    return set(mask_classes) if mask_classes is not None else None


def draw_objects(image: torch.Tensor, boxes: torch.Tensor, masks: list[Optional[torch.Tensor]], names: list[str],
                 colors: list[tuple[int, int, int]]) -> torch.Tensor:
    """`image` (3, H, W) uint8 with each object's mask (bool (H, W), or None), box and name."""
    canvas = image
    with_mask = [i for i, mask in enumerate(masks) if mask is not None]
    if with_mask:
        canvas = draw_segmentation_masks(canvas, torch.stack([masks[i] for i in with_mask]), alpha=MASK_ALPHA,
                                         colors=[colors[i] for i in with_mask])
    if len(names):
        canvas = draw_bounding_boxes(canvas, boxes, labels=names, colors=colors, width=BOX_WIDTH, font=label_font(),
                                     font_size=max(10, min(image.shape[-2:]) // 30))
    return canvas


@functools.cache
def label_font() -> str:
    """Matplotlib's own DejaVu Sans: readable names at any image size, with no system font needed."""
    from matplotlib import font_manager

    return font_manager.findfont("DejaVu Sans")


def draw_ground_truth(image: torch.Tensor, target: dict, vocab: Vocabulary, set_a: set[int]) -> torch.Tensor:
    """An eval target (`boxes`, `labels`, `segmentations`: RLEs or None) over its image."""
    labels = target["labels"].tolist()
    masks = [torch.from_numpy(mask_utils.decode(rle_from_json(rle))).bool() if rle is not None else None
             for rle in target["segmentations"]]
    names = [class_name(vocab, label, set_a) + ("" if mask is not None else " (box only)")
             for label, mask in zip(labels, masks)]
    return draw_objects(image, target["boxes"], masks, names, set_colors(labels, set_a))


def draw_predictions(image: torch.Tensor, detection: dict, vocab: Vocabulary, set_a: Optional[set[int]],
                     score_threshold: float = 0.5) -> torch.Tensor:
    """A model's output for the image (`masks` or `mask_probs`), the detections scoring at least the threshold."""
    detection = kept(detection, detection["scores"] >= score_threshold)
    labels = detection["labels"].tolist()
    has_masks = "masks" in detection or "mask_probs" in detection
    masks = list(binary_masks(detection, tuple(image.shape[-2:]))) if has_masks else [None] * len(labels)
    names = [f"{class_name(vocab, label, set_a)} {score:.2f}" for label, score in zip(labels, detection["scores"].tolist())]
    return draw_objects(image, detection["boxes"], masks, names, set_colors(labels, set_a))


def as_array(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) uint8 -> (H, W, 3), what matplotlib shows."""
    return image.permute(1, 2, 0).numpy()


def write_overlay(loaded: LoadedModel, image_path: str, out_path: str, score_threshold: float = 0.5) -> int:
    """Predict on one image file and write the drawing as a PNG; returns the number of drawn detections."""
    image = read_image(image_path)
    detection = predict(loaded.model, image)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    write_png(draw_predictions(image, detection, loaded.vocab, model_set_a(loaded), score_threshold), out_path)
    return int((detection["scores"] >= score_threshold).sum())
