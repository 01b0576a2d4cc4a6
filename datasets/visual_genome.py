"""Visual Genome release files (image_data.json, objects.json) -> image records in shard form."""
from __future__ import annotations

import json
import os
from collections import Counter

from .coco import clip_box
from .shard_format import ImageRecord, Skipped
from .vocab import Vocabulary


def image_file_name(image: dict) -> str:
    """VG images are named by the last part of their url (`.../VG_100K/2345.jpg`), else by id."""
    url = image.get("url") or image.get("image_url") or ""
    return os.path.basename(url) if url else f"{image['image_id']}.jpg"


def read_visual_genome(
    image_data_file: str, objects_file: str, images_dir: str, vocab: Vocabulary
) -> tuple[list[ImageRecord], list[Skipped], Counter]:
    """Boxes only. Keeps objects with exactly one synset that the vocabulary knows (Sec. 5 of the
    paper); the third value counts objects left out by that filter, which are not errors."""
    with open(image_data_file) as f:
        images = {int(im["image_id"]): im for im in json.load(f)}
    with open(objects_file) as f:
        objects_by_image = {int(entry["image_id"]): entry.get("objects", []) for entry in json.load(f)}
    records, skipped, filtered = [], [], Counter()
    for image_id in sorted(objects_by_image):
        image = images.get(image_id)
        if image is None:
            skipped.append(Skipped(f"{objects_file}: image {image_id}", "not in image_data.json"))
            continue
        width, height = int(image["width"]), int(image["height"])
        annotations = []
        for obj in objects_by_image[image_id]:
            synsets = obj.get("synsets") or []
            if len(synsets) != 1:
                filtered["not exactly one synset"] += 1
                continue
            label = vocab.label_of_synset(synsets[0])
            if label is None:
                filtered["synset not in vocabulary"] += 1
                continue
            bbox = clip_box([obj.get("x"), obj.get("y"), obj.get("w"), obj.get("h")], width, height) \
                if all(isinstance(obj.get(k), (int, float)) for k in "xywh") else None
            if bbox is None:
                skipped.append(Skipped(f"{objects_file}: object {obj.get('object_id')} of image {image_id}",
                                       f"degenerate or out-of-image box {[obj.get(k) for k in 'xywh']}"))
                continue
            annotations.append({
                "bbox": bbox, "category": vocab.name(label), "vg_synset": synsets[0],
                "iscrowd": 0, "segmentation": None,
            })
        records.append(ImageRecord(
            key=f"vg-{image_id:012d}", source="vg", image_id=image_id, width=width, height=height,
            image_path=os.path.join(images_dir, image_file_name(image)), annotations=annotations,
        ))
    return records, skipped, filtered
