"""COCO instances JSON -> image records in shard form, through pycocotools."""
from __future__ import annotations

from collections import defaultdict

from pycocotools import mask as mask_utils

from .image_files import ImageFiles
from .json_files import iter_json_array
from .shard_format import ImageRecord, Skipped, SourceRecords, rle_to_json
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


def _shard_annotation(ann: dict, image: dict, category_names: dict, vocab: Vocabulary, annotation_file: str):
    """A COCO annotation in shard form, or the Skipped entry saying why it cannot be one."""
    where = f"{annotation_file}: annotation {ann.get('id')} of image {image['id']}"
    name = category_names.get(ann.get("category_id"))
    if name is None or vocab.label(name) is None:
        return Skipped(where, f"unknown category {ann.get('category_id')}")
    bbox = clip_box(ann.get("bbox"), int(image["width"]), int(image["height"]))
    if bbox is None:
        return Skipped(where, f"degenerate or out-of-image box {ann.get('bbox')}")
    problem = _segmentation_problem(ann.get("segmentation"))
    if problem:
        return Skipped(where, problem)
    return {
        "bbox": bbox,
        "category": name,
        "coco_category_id": int(ann["category_id"]),
        "iscrowd": int(ann.get("iscrowd", 0)),
        # Polygons, uncompressed or compressed RLE: all become compressed RLE.
        "segmentation": shard_rle(ann["segmentation"], int(image["height"]), int(image["width"])),
    }


def _segmentation_problem(segmentation) -> str | None:
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
        return None if polygons else "empty polygon"
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        return None
    return "segmentation is neither polygons nor RLE"


def coco_image_ids(annotation_file: str) -> frozenset[int]:
    """The image ids of a COCO annotation file (e.g. instances_val2017.json)."""
    return frozenset(int(image["id"]) for image in iter_json_array(annotation_file, "images.item"))


def shard_rle(segmentation, height: int, width: int) -> dict:
    """Polygons, uncompressed or compressed RLE -> the shard's compressed RLE (what COCO.annToRLE does)."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return rle_to_json(rle)


def read_coco(annotation_file: str, images: ImageFiles, vocab: Vocabulary) -> SourceRecords:
    """Image records of every image found, with the annotations skipped and the images not found.

    Three streaming passes (categories, images, annotations: the release lists categories last);
    each annotation is checked and its mask compressed to RLE as it streams by."""
    category_names = {c["id"]: c["name"] for c in iter_json_array(annotation_file, "categories.item")}
    image_entries = {int(image["id"]): image for image in iter_json_array(annotation_file, "images.item")}
    # Per image, in file order: a shard annotation, or why the annotation was skipped.
    outcomes: dict[int, list] = defaultdict(list)
    for ann in iter_json_array(annotation_file, "annotations.item"):
        image = image_entries.get(int(ann.get("image_id", -1)))
        if image is not None:
            outcomes[int(image["id"])].append(_shard_annotation(ann, image, category_names, vocab, annotation_file))
    found = SourceRecords()
    records, skipped, missing = found.records, found.skipped, found.missing
    for image_id in sorted(image_entries):
        image = image_entries[image_id]
        names = [image["file_name"]]
        image_path = images.find(names)
        if image_path is None:
            missing.append(Skipped(names[0], f"missing image: looked in {images.where(names)}"))
            continue
        width, height = int(image["width"]), int(image["height"])
        annotations = []
        for outcome in outcomes.pop(image_id, []):
            (skipped if isinstance(outcome, Skipped) else annotations).append(outcome)
        records.append(ImageRecord(
            key=f"coco-{image_id:012d}", source="coco", image_id=int(image_id), width=width, height=height,
            image_path=image_path, annotations=annotations,
        ))
    return found
