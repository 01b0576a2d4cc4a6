"""Visual Genome release files (image_data.json, objects.json) -> image records in shard form."""
from __future__ import annotations

import posixpath
import sys
from dataclasses import dataclass
from typing import Optional

from .coco import clip_box
from .image_files import ImageFiles
from .json_files import iter_json_array
from .shard_format import ImageRecord, Skipped, SourceRecords
from .vocab import Vocabulary


def image_file_names(image: dict) -> list[str]:
    """Where a VG image may be, relative to the images: the release's folder and name from its url
    (`.../VG_100K_2/2345.jpg` -> `VG_100K_2/2345.jpg`), then the name alone (a flat folder)."""
    url = image.get("url") or image.get("image_url") or ""
    name = posixpath.basename(url) if url else f"{image['image_id']}.jpg"
    folder = posixpath.basename(posixpath.dirname(url)) if url else ""
    return [f"{folder}/{name}", name] if folder else [name]


SPLITS = ("train", "val", "test")
PAPER_TEST_IMAGES = 5000


@dataclass(frozen=True)
class PaperSplit:
    """The paper's VG splits (`step_2_build_vg3k_cocoaligned_json.py`): val, the VG images that are
    images of the COCO split evaluated on (its minival2014, i.e. val2017); test, the last
    `test_images` VG images in release order that are no COCO image; train, the rest."""
    split: str
    coco_val_ids: frozenset[int]
    test_images: int = PAPER_TEST_IMAGES

    def image_ids(self, images_in_release_order: list[dict]) -> tuple[frozenset[int], dict[str, int]]:
        """The image ids of this split, and the size of every split."""
        def coco_id(image):
            return None if image.get("coco_id") is None else int(image["coco_id"])

        val = [int(im["image_id"]) for im in images_in_release_order if coco_id(im) in self.coco_val_ids]
        not_coco = [int(im["image_id"]) for im in images_in_release_order if coco_id(im) is None]
        test = not_coco[-self.test_images:] if self.test_images else []
        left_out = set(val) | set(test)
        train = [int(im["image_id"]) for im in images_in_release_order if int(im["image_id"]) not in left_out]
        by_split = {"train": train, "val": val, "test": test}
        return frozenset(by_split[self.split]), {f"{name}_split_images": len(ids) for name, ids in by_split.items()}


def read_visual_genome(image_data_file: str, objects_file: str, images: ImageFiles, vocab: Vocabulary,
                       exclude_coco_ids: frozenset[int] = frozenset(), split: Optional[PaperSplit] = None) -> SourceRecords:
    """Boxes only. Keeps objects with exactly one synset that the vocabulary knows (Sec. 5 of the
    paper), the images of `split` (all without one), and leaves out images whose `coco_id` is in
    `exclude_coco_ids` (the COCO split used for evaluation: about half of VG's images are COCO images)."""
    listed = list(iter_json_array(image_data_file))
    image_data = {int(im["image_id"]): im for im in listed}
    found = SourceRecords()
    in_split = None
    if split is not None:
        in_split, found.split_counts = split.image_ids(listed)
    del listed
    records, skipped, filtered = found.records, found.skipped, found.filtered
    not_kept = {synset: name for name, synset in vocab.coco_targets_not_kept.items() if synset}
    # objects.json streams by (only the kept objects stay in memory, as shard annotations).
    for entry in iter_json_array(objects_file):
        image_id = int(entry["image_id"])
        image = image_data.get(image_id)
        if image is None:
            found.missing.append(Skipped(f"{objects_file}: image {image_id}", "not in image_data.json"))
            continue
        if in_split is not None and image_id not in in_split:
            continue
        if image.get("coco_id") is not None and int(image["coco_id"]) in exclude_coco_ids:
            found.excluded_coco += 1
            continue
        names = image_file_names(image)
        image_path = images.find(names)
        if image_path is None:
            found.missing.append(Skipped(names[0], f"missing image: looked in {images.where(names)}"))
            continue
        width, height = int(image["width"]), int(image["height"])
        annotations = []
        for obj in entry.get("objects", []):
            synsets = obj.get("synsets") or []
            if len(synsets) != 1:
                filtered["not exactly one synset"] += 1
                continue
            label = vocab.label_of_synset(synsets[0])
            if label is None:
                if synsets[0] in not_kept:
                    filtered[f"{synsets[0]} (what COCO's {not_kept[synsets[0]]} means) is not a kept VG class"] += 1
                else:
                    filtered["synset not in vocabulary"] += 1
                continue
            bbox = clip_box([obj.get("x"), obj.get("y"), obj.get("w"), obj.get("h")], width, height) \
                if all(isinstance(obj.get(k), (int, float)) for k in "xywh") else None
            if bbox is None:
                skipped.append(Skipped(f"{objects_file}: object {obj.get('object_id')} of image {image_id}",
                                       f"degenerate or out-of-image box {[obj.get(k) for k in 'xywh']}"))
                continue
            annotations.append({
                "bbox": bbox, "category": vocab.name(label), "vg_synset": sys.intern(synsets[0]),
                "iscrowd": 0, "segmentation": None,
            })
        records.append(ImageRecord(
            key=f"vg-{image_id:012d}", source="vg", image_id=image_id, width=width, height=height,
            image_path=image_path, annotations=annotations,
        ))
    return found
