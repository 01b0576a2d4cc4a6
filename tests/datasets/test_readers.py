import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from maskx.datasets.prepare import prepare_coco, prepare_vg, prepare_vocabulary
from maskx.datasets.shard_format import load_manifest, rle_from_json
from maskx.datasets.stream import EvalStream, Source
from maskx.datasets.vocab import COCO_CATEGORIES, build_vocabulary

from ..conftest import SHARED_DATA

COCO_TINY = SHARED_DATA / "coco-tiny"
VG_SAMPLE = SHARED_DATA / "vg-sample"


def eval_samples(manifest_dir):
    manifest = load_manifest(manifest_dir)
    stream = EvalStream([Source.from_manifest(manifest)], manifest.vocab(), batch_size=1)
    return {b.targets[0]["image_id"]: (b.images[0], b.targets[0]) for b in stream}, manifest


@pytest.mark.skipif(not COCO_TINY.exists(), reason="../shared/data/coco-tiny not present")
def test_real_coco_round_trip_masks_equal_ann_to_mask(tmp_path):
    annotations = str(COCO_TINY / "annotations" / "instances_val2017.json")
    manifest = prepare_coco(annotations, str(COCO_TINY / "val2017"), str(tmp_path / "coco"), shard_size=16, workers=1, progress=False)
    coco = COCO(annotations)
    assert manifest.num_samples == len(coco.getImgIds())  # every image, those without annotations too
    samples, manifest = eval_samples(tmp_path / "coco")
    vocab = manifest.vocab()
    crowd_seen = 0
    for image_id, (image, target) in samples.items():
        anns = coco.imgToAnns.get(image_id, [])
        assert len(anns) == len(target["labels"])
        assert tuple(image.shape[-2:]) == (coco.imgs[image_id]["height"], coco.imgs[image_id]["width"])
        for ann, label, box, rle, crowd in zip(anns, target["labels"], target["boxes"], target["segmentations"], target["iscrowd"]):
            assert vocab.name(int(label)) == coco.cats[ann["category_id"]]["name"]
            x, y, w, h = ann["bbox"]
            np.testing.assert_allclose(box.numpy(), [x, y, x + w, y + h], atol=0.01)
            assert np.array_equal(mask_utils.decode(rle_from_json(rle)), coco.annToMask(ann))
            crowd_seen += int(crowd)
    assert crowd_seen > 0, "coco-tiny has crowd RLEs; they must survive conversion"


@pytest.mark.skipif(not VG_SAMPLE.exists(), reason="../shared/data/vg-sample not present")
def test_real_visual_genome_boxes_and_synset_mapping(tmp_path):
    # The VG sample ships no pixels: placeholder JPEGs of each listed size stand in for them.
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    image_data = json.loads((VG_SAMPLE / "image_data.json").read_text())
    for image in image_data:
        name = image["url"].rsplit("/", 1)[-1]
        Image.new("RGB", (image["width"], image["height"]), (128, 128, 128)).save(images_dir / name)
    manifest = prepare_vg(str(VG_SAMPLE / "image_data.json"), str(VG_SAMPLE / "objects.json"), str(images_dir),
                          str(tmp_path / "vg"), shard_size=25, workers=1, progress=False)
    vocab = manifest.vocab()
    objects = {e["image_id"]: e["objects"] for e in json.loads((VG_SAMPLE / "objects.json").read_text())}
    samples, _ = eval_samples(tmp_path / "vg")
    assert len(samples) == len(objects)
    for image_id, (_, target) in samples.items():
        kept = [o for o in objects[image_id] if len(o["synsets"]) == 1 and vocab.label_of_synset(o["synsets"][0])]
        assert len(kept) == len(target["labels"])
        for obj, label, box in zip(kept, target["labels"], target["boxes"]):
            assert int(label) == vocab.label_of_synset(obj["synsets"][0])
            assert box[0] == pytest.approx(obj["x"], abs=0.01) and box[1] == pytest.approx(obj["y"], abs=0.01)
            assert "masks" not in target
    person = vocab.label("person")
    assert vocab.label_of_synset("man.n.01") == person  # merged into the COCO class
    assert vocab.label_of_synset("tree.n.01") is not None and vocab.label_of_synset("tree.n.01") > 80


def test_vocabulary_named_sets():
    from collections import Counter

    vocab = build_vocabulary(COCO_CATEGORIES, Counter({"tree.n.01": 9, "man.n.01": 8, "television.n.01": 3, "sky.n.01": 7}), vg_classes=1)
    assert len(vocab.class_set("coco")) == 80 and len(vocab.class_set("voc")) == 20 and len(vocab.class_set("nonvoc")) == 60
    assert [vocab.name(l) for l in vocab.class_set("vg")] == ["tree.n.01"]  # K=1 keeps the most frequent
    assert vocab.label_of_synset("man.n.01") == vocab.label("person")
    assert vocab.label_of_synset("television.n.01") == vocab.label("tv")
    assert vocab.label_of_synset("sky.n.01") is None
    assert vocab.num_classes == 82
    with pytest.raises(ValueError, match="class set 'pascal'"):
        vocab.class_set("pascal")


def test_synthetic_vocabulary_splits_set_a_and_b(synth_paths):
    vocab = prepare_vocabulary(synth_paths["coco_train_annotations"], synth_paths["vg_objects"])
    assert {vocab.name(l) for l in vocab.class_set("voc")} == {"person", "car", "dog", "chair"}
    assert {vocab.name(l) for l in vocab.class_set("nonvoc")} == {"giraffe", "kite", "clock", "umbrella"}
    assert {vocab.name(l) for l in vocab.class_set("vg")} == {"tree.n.01", "building.n.01"}
