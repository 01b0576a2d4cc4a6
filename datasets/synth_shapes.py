"""The synthetic data's geometry: shapes as polygons in their box, boxes placed with bounded overlap,
each object's visible part once later ones cover it, as a COCO RLE annotation."""
from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from .shard_format import rle_to_json


def shape_polygons(shape: str, x: float, y: float, w: float, h: float) -> list[list[float]]:
    """Polygons (COCO's flat [x0, y0, x1, y1, ...]) of a shape filling the box; a ring is two
    polygons traced as one outline with a slit, so it stays a single simple polygon."""
    cx, cy, rx, ry = x + w / 2, y + h / 2, w / 2, h / 2

    def ellipse(sx, sy, a0=0.0, a1=2 * math.pi, n=24):
        return [(cx + sx * math.cos(a0 + (a1 - a0) * i / n), cy + sy * math.sin(a0 + (a1 - a0) * i / n)) for i in range(n + 1)]

    if shape in ("disk", "ellipse"):
        points = ellipse(rx, ry if shape == "disk" else ry * 0.6)
    elif shape == "square":
        points = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
    elif shape == "triangle":
        points = [(cx, y), (x + w, y + h), (x, y + h)]
    elif shape == "cross":
        t = w / 3
        u = h / 3
        points = [(x + t, y), (x + 2 * t, y), (x + 2 * t, y + u), (x + w, y + u), (x + w, y + 2 * u), (x + 2 * t, y + 2 * u),
                  (x + 2 * t, y + h), (x + t, y + h), (x + t, y + 2 * u), (x, y + 2 * u), (x, y + u), (x + t, y + u)]
    elif shape == "ring":
        outer = ellipse(rx, ry, 0.05, 2 * math.pi - 0.05)
        inner = [(cx + 0.5 * rx * math.cos(a), cy + 0.5 * ry * math.sin(a)) for a in
                 [2 * math.pi - 0.05 - (2 * math.pi - 0.1) * i / 24 for i in range(25)]]
        points = outer + inner
    elif shape == "diamond":
        points = [(cx, y), (x + w, cy), (cx, y + h), (x, cy)]
    elif shape == "halfdisk":
        points = [(cx + rx * math.cos(a), y + h - 2 * ry * math.sin(a)) for a in [math.pi * i / 24 for i in range(25)]]
    elif shape == "star":
        points = [(cx + (rx if i % 2 == 0 else 0.45 * rx) * math.sin(math.pi * i / 5),
                   cy - (ry if i % 2 == 0 else 0.45 * ry) * math.cos(math.pi * i / 5)) for i in range(10)]
    elif shape == "bar":
        points = [(x, y + h * 0.3), (x + w, y + h * 0.3), (x + w, y + h * 0.7), (x, y + h * 0.7)]
    elif shape == "lshape":
        points = [(x, y), (x + 0.4 * w, y), (x + 0.4 * w, y + 0.6 * h), (x + w, y + 0.6 * h), (x + w, y + h), (x, y + h)]
    elif shape == "hourglass":
        points = [(x, y), (x + w, y), (cx + 0.12 * w, cy), (x + w, y + h), (x, y + h), (cx - 0.12 * w, cy)]
    else:
        raise ValueError(f"unknown shape {shape}")
    return [[round(v, 2) for p in points for v in p]]


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def place_boxes(rng: random.Random, width: int, height: int, count: int,
           max_iou: float | None = None) -> list[tuple[float, float, float, float]]:
    """Up to `count` boxes (x, y, w, h): apart from each other (max_iou None), or overlapping by at
    most `max_iou`, so that none mostly covers another."""
    def fits(box, other) -> bool:
        if max_iou is not None:
            return box_iou(box, other) <= max_iou
        (x, y, w, h), (bx, by, bw, bh) = box, other
        return x + w < bx or bx + bw < x or y + h < by or by + bh < y

    boxes: list[tuple[float, float, float, float]] = []
    for _ in range(count * 20):
        if len(boxes) == count:
            break
        w, h = rng.uniform(28, 64), rng.uniform(28, 64)
        box = (rng.uniform(0, width - w), rng.uniform(0, height - h), w, h)
        if all(fits(box, other) for other in boxes):
            boxes.append(box)
    return boxes


def _raster(polygons, width: int, height: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    for polygon in polygons:
        ImageDraw.Draw(canvas).polygon(list(zip(polygon[0::2], polygon[1::2])), fill=1)
    return np.asarray(canvas, dtype=np.uint8)


def visible_masks(objects, width: int, height: int, min_visible: float = 0.4):
    """(class, polygons, visible mask) of the objects drawn in order, later ones on top; an object with
    less than `min_visible` of its area showing is left out (not drawn), as COCO annotators would
    skip a sliver."""
    kept, above = [], np.zeros((height, width), dtype=bool)
    for synth_class, polygons in reversed(objects):
        full = _raster(polygons, width, height).astype(bool)
        visible = full & ~above
        if full.sum() == 0 or visible.sum() < min_visible * full.sum():
            continue
        kept.append((synth_class, polygons, visible))
        above |= full
    return kept[::-1]


def rle_annotation(visible: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
    bbox = [round(float(v), 2) for v in mask_utils.toBbox(rle)]
    return {"bbox": bbox, "area": float(mask_utils.area(rle)),
            "segmentation": rle_to_json(rle)}
