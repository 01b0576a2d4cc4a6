"""Synthetic data where weight transfer can work (`maskx synth --families`; docs/ablation.md).

Forty classes in ten shape families of four colours. Each shape has two colours in set A (its
masks train the mask head) and two in set B (boxes only): shape s is in set A in colours s mod 4 and
(s + 1) mod 4. Every shape and every colour is in both sets, so a set-B class shares its shape, and
with it its mask, with two set-A classes, and its colour with others: a detector that encodes shape
and colour gives set-B classes weights that lie near set-A ones, the situation in which the paper's
T (a giraffe's detector near a horse's) has something to carry. Set A takes the 20 VOC COCO ids and
set B 20 non-VOC ones, so `data.mask_sets: [voc]` splits them as in the paper, and a disjoint split
(whole families held out) is `data.mask_sets` naming its classes.

The mask must need the class: objects overlap and occlude each other (visible masks, as `--occlusion`);
an object that overlaps an earlier one takes that one's exact colour (a different shape) with
probability `same_colour`, so the boundary between them is invisible; unannotated blobs of an
object's colour touch it; Gaussian noise covers everything. Colour alone then does not say where an
object ends; its shape does.
"""
from __future__ import annotations

import os
import random

import numpy as np
from PIL import Image, ImageDraw

from .synth import SynthClass, shard_synthetic, write_coco_split
from .synth_shapes import box_iou, place_boxes, rle_annotation, shape_polygons, visible_masks
from .vocab import COCO_CATEGORIES, VOC_COCO_IDS

# Shapes whose masks stay distinct inside a tight box (not ellipse vs disk, not bar vs square).
SHAPES = ["disk", "square", "triangle", "cross", "ring", "diamond", "halfdisk", "star", "lshape", "hourglass"]
COLOURS = [(220, 60, 60), (60, 190, 60), (60, 90, 230), (230, 200, 40)]


def in_set_a(shape_index: int, colour_index: int) -> bool:
    return colour_index in (shape_index % len(COLOURS), (shape_index + 1) % len(COLOURS))


def family_classes() -> list[SynthClass]:
    """The 40 classes, shape-major: set A on the VOC COCO ids in order, set B on the first 20 non-VOC ids."""
    names = {c["id"]: c["name"] for c in COCO_CATEGORIES}
    voc = sorted(VOC_COCO_IDS)
    nonvoc = [i for i in sorted(names) if i not in VOC_COCO_IDS][:len(voc)]
    classes = []
    for s, shape in enumerate(SHAPES):
        for c, colour in enumerate(COLOURS):
            coco_id = (voc if in_set_a(s, c) else nonvoc).pop(0)
            classes.append(SynthClass(names[coco_id], coco_id, f"{names[coco_id]}.n.01", shape, colour))
    return classes


FAMILY_CLASSES = family_classes()


def _scene(rng: random.Random, width: int, height: int, same_colour: float):
    """(class, polygons) of 2-4 objects, box IoU <= 0.5; one overlapping an earlier object takes that
    one's colour in another shape with probability `same_colour`."""
    objects, boxes = [], place_boxes(rng, width, height, rng.randint(2, 4), max_iou=0.5)
    for i, box in enumerate(boxes):
        touched = [j for j in range(i) if box_iou(box, boxes[j]) > 0]
        if touched and rng.random() < same_colour:
            under = objects[rng.choice(touched)][0]
            family = rng.choice([c for c in FAMILY_CLASSES if c.colour == under.colour and c.shape != under.shape])
        else:
            family = rng.choice(FAMILY_CLASSES)
        objects.append((family, shape_polygons(family.shape, *box)))
    return objects


def _draw(rng: random.Random, width: int, height: int, objects, blobs: tuple[int, int], noise_std: float) -> Image.Image:
    """Background, unannotated blobs touching objects in their colour, the objects (later on top),
    noise. One jitter per colour per image: two objects of a colour are the same colour exactly."""
    jitter = {colour: tuple(max(0, min(255, v + rng.randint(-25, 25))) for v in colour) for colour in COLOURS}
    image = Image.new("RGB", (width, height), tuple(rng.randint(90, 160) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(*blobs)) if objects else ():
        family, polygons = rng.choice(objects)
        x0, x1, y0, y1 = min(polygons[0][0::2]), max(polygons[0][0::2]), min(polygons[0][1::2]), max(polygons[0][1::2])
        # A blob centred on a side of the object's box: part of it joins the object, part lies outside.
        cx, cy = rng.choice([(x0, rng.uniform(y0, y1)), (x1, rng.uniform(y0, y1)),
                             (rng.uniform(x0, x1), y0), (rng.uniform(x0, x1), y1)])
        rx, ry = rng.uniform(5, 12), rng.uniform(5, 12)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=jitter[family.colour])
    for family, polygons in objects:
        for polygon in polygons:
            draw.polygon(list(zip(polygon[0::2], polygon[1::2])), fill=jitter[family.colour])
    pixels = np.asarray(image, dtype=np.float32) + np.random.default_rng(rng.getrandbits(32)).normal(0, noise_std, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _write_split(out: str, split: str, num_images: int, rng: random.Random, first_id: int, same_colour: float,
                 blobs: tuple[int, int], noise_std: float) -> str:
    def draw_scene(rng, width, height):
        shown = visible_masks(_scene(rng, width, height, same_colour), width, height)
        image = _draw(rng, width, height, [(family, polygons) for family, polygons, _ in shown], blobs, noise_std)
        return image, [(family, rle_annotation(visible)) for family, _, visible in shown]

    return write_coco_split(out, split, num_images, rng, first_id, FAMILY_CLASSES, draw_scene)


def write_families(out: str, train_images: int = 1600, val_images: int = 300, seed: int = 0, same_colour: float = 0.5,
                   blobs: tuple[int, int] = (1, 2), noise_std: float = 12.0) -> dict:
    """out/coco/{annotations,train,val} (no Visual Genome). Returns the paths a `maskx prepare` run needs."""
    rng = random.Random(seed)
    settings = dict(same_colour=same_colour, blobs=blobs, noise_std=noise_std)
    train = _write_split(out, "train", train_images, rng, first_id=1, **settings)
    val = _write_split(out, "val", val_images, rng, first_id=100000, **settings)
    return {"coco_train_annotations": train, "coco_train_images": os.path.join(out, "coco", "train"),
            "coco_val_annotations": val, "coco_val_images": os.path.join(out, "coco", "val")}


def write_family_shards(out: str, train_images: int = 1600, val_images: int = 300, seed: int = 0, **settings) -> dict:
    """The family data under out/raw and its shards under out/shards (vocab.json, coco-train, coco-val)."""
    return shard_synthetic(out, write_families(os.path.join(out, "raw"), train_images, val_images, seed, **settings))
