"""The synthetic data: plain (the demo's lone shapes) and occluded (the ablation's, docs/ablation.md)."""
import itertools
import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from maskx.datasets.shard_format import load_manifest, rle_from_json
from maskx.datasets.synth import SYNTH_CLASSES, write_synthetic, write_synthetic_shards
from maskx.datasets.vocab import Vocabulary


def _boxes_overlap(a, b) -> bool:
    return min(a[0] + a[2], b[0] + b[2]) > max(a[0], b[0]) and min(a[1] + a[3], b[1] + b[3]) > max(a[1], b[1])


def test_occluded_masks_are_the_visible_parts_of_overlapping_objects(tmp_path):
    paths = write_synthetic(str(tmp_path), train_images=40, val_images=2, vg_images=0, seed=1, occlusion=True)
    coco = json.load(open(paths["coco_train_annotations"]))
    colours = {c.coco_id: np.array(c.colour) for c in SYNTH_CLASSES if c.coco_id}
    by_image = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    overlapping_images = 0
    for image in coco["images"]:
        pixels = np.asarray(Image.open(os.path.join(paths["coco_train_images"], image["file_name"])), dtype=float)
        anns = by_image.get(image["id"], [])
        masks = [mask_utils.decode(rle_from_json(a["segmentation"])) for a in anns]
        for ann, mask in zip(anns, masks):
            assert ann["iscrowd"] == 0 and mask.sum() == ann["area"] > 0
            assert ann["bbox"] == [round(float(v), 2) for v in mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask)))]
            # The mask is what shows: its pixels carry the class colour (+-25 jitter, JPEG).
            assert np.abs(pixels[mask.astype(bool)].mean(axis=0) - colours[ann["category_id"]]).max() < 40
        for a, b in itertools.combinations(masks, 2):
            assert not (a & b).any()  # no pixel belongs to two objects
        overlapping_images += any(_boxes_overlap(a["bbox"], b["bbox"]) for a, b in itertools.combinations(anns, 2))
    assert overlapping_images >= len(coco["images"]) // 4, overlapping_images


def test_plain_synthetic_objects_stand_alone_as_polygons(tmp_path):
    paths = write_synthetic(str(tmp_path), train_images=20, val_images=2, vg_images=2, seed=1)
    coco = json.load(open(paths["coco_train_annotations"]))
    by_image = {}
    for ann in coco["annotations"]:
        assert isinstance(ann["segmentation"], list)
        by_image.setdefault(ann["image_id"], []).append(ann["bbox"])
    assert not any(_boxes_overlap(a, b) for boxes in by_image.values() for a, b in itertools.combinations(boxes, 2))


def test_synthetic_shards_without_vg(tmp_path):
    paths = write_synthetic_shards(str(tmp_path / "abl"), train_images=6, val_images=3, vg_images=0, occlusion=True)
    assert "vg_shards" not in paths and not os.path.exists(tmp_path / "abl" / "shards" / "vg")
    vocab = Vocabulary.load(paths["vocab"])
    assert vocab.num_classes == 9 and len(vocab.class_set("voc")) == 4
    counts = load_manifest(paths["coco_val_shards"]).counts["coco"]
    assert counts["images"] == 3


def test_vocabulary_save_creates_its_folder(tmp_path):
    vocab = Vocabulary.load(write_synthetic_shards(str(tmp_path / "a"), 2, 1, 0)["vocab"])
    vocab.save(str(tmp_path / "new" / "folder" / "vocab.json"))
    assert Vocabulary.load(str(tmp_path / "new" / "folder" / "vocab.json")).classes == vocab.classes


def test_families_share_shapes_and_colours_across_set_a_and_set_b():
    """`maskx synth --families`: 10 shapes x 4 colours; each shape in set A (the VOC ids) in two colours
    and in set B in the other two, so every set-B class has set-A classes of its shape."""
    from maskx.datasets.synth_families import COLOURS, FAMILY_CLASSES, SHAPES
    from maskx.datasets.vocab import VOC_COCO_IDS

    assert len(FAMILY_CLASSES) == 40 and len({c.coco_id for c in FAMILY_CLASSES}) == 40
    set_a = [c for c in FAMILY_CLASSES if c.coco_id in VOC_COCO_IDS]
    assert len(set_a) == 20
    for shape in SHAPES:
        assert sorted(c.colour in [a.colour for a in set_a if a.shape == shape]
                      for c in FAMILY_CLASSES if c.shape == shape) == [False, False, True, True], shape
    assert {c.colour for c in set_a} == set(COLOURS) == {c.colour for c in FAMILY_CLASSES if c not in set_a}


def test_family_images_hide_object_boundaries_in_their_colour(tmp_path):
    """Same-colour neighbours (another shape), unannotated blobs of an object's colour, noise: colour
    alone does not say where an object ends. Deterministic for a seed."""
    from maskx.datasets.synth_families import FAMILY_CLASSES, write_families

    paths = write_families(str(tmp_path / "a"), train_images=60, val_images=2, seed=4)
    again = write_families(str(tmp_path / "b"), train_images=60, val_images=2, seed=4)
    assert open(paths["coco_train_annotations"]).read() == open(again["coco_train_annotations"]).read()
    coco = json.load(open(paths["coco_train_annotations"]))
    colour_of = {c.coco_id: c.colour for c in FAMILY_CLASSES}
    shape_of = {c.coco_id: c.shape for c in FAMILY_CLASSES}
    by_image = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    same_colour_touching, colour_outside_masks = 0, 0
    for image in coco["images"]:
        anns = by_image.get(image["id"], [])
        masks = [mask_utils.decode(rle_from_json(a["segmentation"])).astype(bool) for a in anns]
        for (a, ma), (b, mb) in itertools.combinations(zip(anns, masks), 2):
            touching = (np.roll(ma, 1, 0) & mb).any() or (np.roll(ma, 1, 1) & mb).any() or (ma & np.roll(mb, 1, 0)).any()
            same_colour_touching += touching and colour_of[a["category_id"]] == colour_of[b["category_id"]] \
                and shape_of[a["category_id"]] != shape_of[b["category_id"]]
        pixels = np.asarray(Image.open(os.path.join(paths["coco_train_images"], image["file_name"])), dtype=float)
        annotated = np.zeros(pixels.shape[:2], dtype=bool)
        for mask in masks:
            annotated |= mask
        for ann in anns:  # pixels of an object's colour that belong to no object: a blob
            near = np.abs(pixels - np.array(colour_of[ann["category_id"]])).max(axis=2) < 30
            colour_outside_masks += int((near & ~annotated).sum() > 20)
    assert same_colour_touching >= 5, same_colour_touching
    assert colour_outside_masks >= len(coco["images"]) // 2, colour_outside_masks
