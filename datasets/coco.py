"""COCO instances JSON -> image records in shard form, through pycocotools."""
from __future__ import annotations

import contextlib
import io
import os

from pycocotools.coco import COCO

from .shard_format import ImageRecord, Skipped, rle_to_json
from .vocab import Vocabulary


def clip_box(bbox, width: int, height: int):
    """COCO [x, y, w, h] clipped to the image, or None when nothing of it is left."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    x, y, w, h = (float(v) for v in bbox)
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    if x1 - x0 < 1.0 or y1 - y0 < 1.0:
        return None
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]


def _segmentation_problem(segmentation) -> str | None:
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
        return None if polygons else "empty polygon"
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        return None
    return "segmentation is neither polygons nor RLE"


def read_coco(annotation_file: str, images_dir: str, vocab: Vocabulary) -> tuple[list[ImageRecord], list[Skipped]]:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO(annotation_file)
    category_names = {c["id"]: c["name"] for c in coco.dataset.get("categories", [])}
    records, skipped = [], []
    for image_id in sorted(coco.getImgIds()):
        image = coco.imgs[image_id]
        width, height = int(image["width"]), int(image["height"])
        annotations = []
        for ann in coco.imgToAnns.get(image_id, []):
            where = f"{annotation_file}: annotation {ann.get('id')} of image {image_id}"
            name = category_names.get(ann.get("category_id"))
            if name is None or vocab.label(name) is None:
                skipped.append(Skipped(where, f"unknown category {ann.get('category_id')}"))
                continue
            bbox = clip_box(ann.get("bbox"), width, height)
            if bbox is None:
                skipped.append(Skipped(where, f"degenerate or out-of-image box {ann.get('bbox')}"))
                continue
            problem = _segmentation_problem(ann.get("segmentation"))
            if problem:
                skipped.append(Skipped(where, problem))
                continue
            annotations.append({
                "bbox": bbox,
                "category": name,
                "coco_category_id": int(ann["category_id"]),
                "iscrowd": int(ann.get("iscrowd", 0)),
                # Polygons, uncompressed or compressed RLE: all become compressed RLE.
                "segmentation": rle_to_json(coco.annToRLE(ann)),
            })
        records.append(ImageRecord(
            key=f"coco-{image_id:012d}", source="coco", image_id=int(image_id), width=width, height=height,
            image_path=os.path.join(images_dir, image["file_name"]), annotations=annotations,
        ))
    return records, skipped
