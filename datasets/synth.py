"""A small synthetic dataset in the real COCO and Visual Genome file formats.

Each class is drawn as its own shape and colour, so boxes, classes and masks are learnable in
minutes on a CPU, and a set-B class's mask shape is class-specific: a class-agnostic mask head
can be told from its colour. COCO classes use their real names and ids, so the named sets voc and
nonvoc split them as in the paper.

`occlusion=True` writes the ablation's data (docs/ablation.md): objects overlap and occlude each
other, and each mask is the object's visible part (compressed RLE, as COCO stores such masks). A box
then holds pieces of other objects, so a mask head must know which class it segments, and a
class-agnostic head is at a real disadvantage, as on COCO; without occlusion every object is a lone
blob on a plain background that any head segments from contrast alone.
"""
from __future__ import annotations

import functools
import json
import os
import random
from dataclasses import dataclass
from typing import Callable

from PIL import Image, ImageDraw

from .synth_shapes import place_boxes, rle_annotation, shape_polygons, visible_masks


@dataclass(frozen=True)
class SynthClass:
    name: str
    coco_id: int | None
    synset: str
    shape: str
    colour: tuple[int, int, int]


# Four VOC (set A) and four non-VOC (set B) COCO classes, and two VG-only classes.
SYNTH_CLASSES = [
    SynthClass("person", 1, "person.n.01", "disk", (220, 60, 60)),
    SynthClass("car", 3, "car.n.01", "square", (60, 200, 60)),
    SynthClass("dog", 18, "dog.n.01", "triangle", (60, 90, 230)),
    SynthClass("chair", 62, "chair.n.01", "cross", (230, 200, 40)),
    SynthClass("giraffe", 25, "giraffe.n.01", "ring", (200, 60, 210)),
    SynthClass("kite", 38, "kite.n.03", "diamond", (40, 210, 210)),
    SynthClass("clock", 85, "clock.n.01", "halfdisk", (240, 140, 40)),
    SynthClass("umbrella", 28, "umbrella.n.01", "star", (150, 150, 250)),
    SynthClass("tree", None, "tree.n.01", "ellipse", (30, 120, 40)),
    SynthClass("building", None, "building.n.01", "bar", (120, 100, 80)),
]
COCO_SYNTH = [c for c in SYNTH_CLASSES if c.coco_id is not None]


def _draw_image(rng: random.Random, width: int, height: int, objects) -> Image.Image:
    base = tuple(rng.randint(90, 160) for _ in range(3))
    image = Image.new("RGB", (width, height), base)
    draw = ImageDraw.Draw(image)
    for _ in range(6):  # clutter that belongs to no class
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        draw.line([(x, y), (x + rng.uniform(-40, 40), y + rng.uniform(-40, 40))],
                  fill=tuple(rng.randint(60, 200) for _ in range(3)), width=2)
    for synth_class, polygons in objects:
        colour = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in synth_class.colour)
        for polygon in polygons:
            draw.polygon(list(zip(polygon[0::2], polygon[1::2])), fill=colour)
    return image


def _bbox(polygons) -> list[float]:
    xs = [v for p in polygons for v in p[0::2]]
    ys = [v for p in polygons for v in p[1::2]]
    return [round(min(xs), 2), round(min(ys), 2), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]


def write_coco_split(out: str, split: str, num_images: int, rng: random.Random, first_id: int, classes,
                     draw_scene: Callable) -> str:
    """out/coco/SPLIT/*.jpg and its annotations file: `draw_scene(rng, width, height)` draws one image
    and returns it with its objects' (class, annotation fields)."""
    images_dir = os.path.join(out, "coco", split)
    os.makedirs(images_dir, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image_id = first_id + i
        width, height = rng.choice([(160, 128), (192, 144), (144, 144)])
        image, labels = draw_scene(rng, width, height)
        file_name = f"{image_id:012d}.jpg"
        image.save(os.path.join(images_dir, file_name), quality=90)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height, "license": 0})
        for synth_class, label in labels:
            annotations.append({"id": len(annotations) + first_id * 10, "image_id": image_id,
                                "category_id": synth_class.coco_id, "iscrowd": 0, **label})
    return write_coco_annotations(out, split, images, annotations, classes)


def _coco_scene(rng: random.Random, width: int, height: int, occlusion: bool):
    objects = []
    count = rng.randint(2, 4) if occlusion else rng.randint(1, 3)
    for x, y, w, h in place_boxes(rng, width, height, count, max_iou=0.5 if occlusion else None):
        synth_class = rng.choice(COCO_SYNTH)
        objects.append((synth_class, shape_polygons(synth_class.shape, x, y, w, h)))
    if occlusion:
        shown = visible_masks(objects, width, height)
        objects = [(synth_class, polygons) for synth_class, polygons, _ in shown]
        labels = [(synth_class, rle_annotation(visible)) for synth_class, _, visible in shown]
    else:
        labels = []
        for synth_class, polygons in objects:
            bbox = _bbox(polygons)
            labels.append((synth_class, {"bbox": bbox, "area": round(bbox[2] * bbox[3], 2), "segmentation": polygons}))
    return _draw_image(rng, width, height, objects), labels


def _write_coco_split(out: str, split: str, num_images: int, rng: random.Random, first_id: int, occlusion: bool = False) -> str:
    scene = functools.partial(_coco_scene, occlusion=occlusion)
    return write_coco_split(out, split, num_images, rng, first_id, COCO_SYNTH, scene)


def write_coco_annotations(out: str, split: str, images: list[dict], annotations: list[dict], classes) -> str:
    """out/coco/annotations/instances_SPLIT.json, COCO's layout, `classes` (with their COCO ids) as categories."""
    categories = [{"id": c.coco_id, "name": c.name, "supercategory": "synthetic"} for c in sorted(classes, key=lambda c: c.coco_id)]
    path = os.path.join(out, "coco", "annotations", f"instances_{split}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"info": {"description": "maskx synthetic COCO"}, "licenses": [{"id": 0, "name": "CC0"}],
                   "images": images, "annotations": annotations, "categories": categories}, f)
    return path


def _write_visual_genome(out: str, num_images: int, rng: random.Random) -> None:
    vg = os.path.join(out, "vg")
    images_dir = os.path.join(vg, "images")
    os.makedirs(images_dir, exist_ok=True)
    image_data, objects_json = [], []
    object_id = 1
    for i in range(num_images):
        image_id = 1 + i
        width, height = rng.choice([(160, 128), (192, 144)])
        placed = []
        for x, y, w, h in place_boxes(rng, width, height, rng.randint(1, 4)):
            synth_class = rng.choice(SYNTH_CLASSES)
            placed.append((synth_class, shape_polygons(synth_class.shape, x, y, w, h)))
        _draw_image(rng, width, height, placed).save(os.path.join(images_dir, f"{image_id}.jpg"), quality=90)
        image_data.append({"image_id": image_id, "url": f"https://example.invalid/VG_100K/{image_id}.jpg",
                           "width": width, "height": height, "coco_id": None, "flickr_id": None})
        objects = []
        for synth_class, polygons in placed:
            x, y, w, h = _bbox(polygons)
            objects.append({"object_id": object_id, "x": int(x), "y": int(y), "w": int(round(w)), "h": int(round(h)),
                            "names": [synth_class.name], "synsets": [synth_class.synset], "merged_object_ids": []})
            object_id += 1
        objects_json.append({"image_id": image_id, "image_url": image_data[-1]["url"], "objects": objects})
    with open(os.path.join(vg, "image_data.json"), "w") as f:
        json.dump(image_data, f)
    with open(os.path.join(vg, "objects.json"), "w") as f:
        json.dump(objects_json, f)


def write_synthetic(out: str, train_images: int = 200, val_images: int = 50, vg_images: int = 200, seed: int = 0,
                    occlusion: bool = False) -> dict:
    """Writes out/coco/{annotations,train,val}, out/vg/{image_data.json,objects.json,images}.
    Returns the paths a `maskx prepare` run needs."""
    rng = random.Random(seed)
    train = _write_coco_split(out, "train", train_images, rng, first_id=1, occlusion=occlusion)
    val = _write_coco_split(out, "val", val_images, rng, first_id=100000, occlusion=occlusion)
    _write_visual_genome(out, vg_images, rng)
    return {
        "coco_train_annotations": train, "coco_train_images": os.path.join(out, "coco", "train"),
        "coco_val_annotations": val, "coco_val_images": os.path.join(out, "coco", "val"),
        "vg_image_data": os.path.join(out, "vg", "image_data.json"),
        "vg_objects": os.path.join(out, "vg", "objects.json"), "vg_images": os.path.join(out, "vg", "images"),
    }


def write_synthetic_shards(out: str, train_images: int = 300, val_images: int = 60, vg_images: int = 200, seed: int = 0,
                           occlusion: bool = False) -> dict:
    """The synthetic data under out/raw and its shards under out/shards (vocab.json, coco-train,
    coco-val and, with VG images, vg): what configs/tiny-cpu.yaml and ablation-tiny-cpu.yaml read."""
    return shard_synthetic(out, write_synthetic(os.path.join(out, "raw"), train_images, val_images, vg_images, seed,
                                                occlusion))


def shard_synthetic(out: str, paths: dict) -> dict:
    """`paths` (what a synthetic writer returns) prepared under out/shards with one vocabulary; VG too
    where it wrote VG images."""
    from .prepare import prepare_coco, prepare_vg, prepare_vocabulary

    vg_images = "vg_images" in paths and bool(os.listdir(paths["vg_images"]))
    shards = os.path.join(out, "shards")
    vocab_path = os.path.join(shards, "vocab.json")
    os.makedirs(shards, exist_ok=True)
    prepare_vocabulary(paths["coco_train_annotations"], paths["vg_objects"] if vg_images else None).save(vocab_path)
    for split in ("train", "val"):
        paths[f"coco_{split}_shards"] = os.path.join(shards, f"coco-{split}")
        prepare_coco(paths[f"coco_{split}_annotations"], paths[f"coco_{split}_images"], paths[f"coco_{split}_shards"],
                     vocab_path, shard_size=50, workers=2, progress=False)
    if vg_images:
        paths["vg_shards"] = os.path.join(shards, "vg")
        prepare_vg(paths["vg_image_data"], paths["vg_objects"], paths["vg_images"], paths["vg_shards"], vocab_path,
                   shard_size=50, workers=2, progress=False)
    paths["vocab"] = vocab_path
    return paths
