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
    assert vocab.label_of_synset("person.n.01") == vocab.label("person")
    assert vocab.name(vocab.label_of_synset("man.n.01")) == "man.n.01"  # a VG class of its own (set B), as in the paper
    assert vocab.label_of_synset("tree.n.01") is not None and vocab.label_of_synset("tree.n.01") > 80


def papers_vocabulary(objects: list[dict], coco_names: list[str], n: int) -> tuple[list[str], dict[str, str]]:
    """The official scripts' steps (step_1/step_2 of ronghanghu/seg_every_thing's VG-3k processing),
    kept as written, with frequency ties broken by name: the kept synsets sorted, and the COCO
    classes' synsets among them."""
    from collections import Counter

    from maskx.datasets.vocab import COCO_TO_VG_SYNSET_BY_HAND

    counter = Counter(synset for img in objects for obj in img["objects"] for synset in obj["synsets"])
    top_synsets = [s for s, _ in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))][:n]
    clean = [name[:-5].replace("_", " ") for name in top_synsets]
    clean2original = {n1: n2 for n1, n2 in zip(clean[::-1], top_synsets[::-1])}
    name_map = {name: clean2original[name] for name in set(clean) & set(coco_names)}
    name_map.update({k: v for k, v in COCO_TO_VG_SYNSET_BY_HAND.items() if v in top_synsets})
    return sorted(top_synsets), name_map


@pytest.mark.skipif(not VG_SAMPLE.exists(), reason="../shared/data/vg-sample not present")
def test_the_vocabulary_is_the_papers_on_the_real_vg_sample():
    """COCO's 80 first, each with the one synset the official scripts align it to, then the rest of
    the top K synsets sorted; the count is over every synset of every object."""
    from maskx.datasets.vocab import synset_counts

    objects = json.loads((VG_SAMPLE / "objects.json").read_text())
    k = 100
    vocab = prepare_vocabulary(None, str(VG_SAMPLE / "objects.json"), vg_classes=k)
    kept, name_map = papers_vocabulary(objects, [c["name"] for c in COCO_CATEGORIES], k)
    assert [c.name for c in vocab.classes[:80]] == [c["name"] for c in COCO_CATEGORIES]
    assert {c.name: c.vg_synsets[0] for c in vocab.classes[:80] if c.vg_synsets} == name_map
    assert [c.name for c in vocab.classes[80:]] == sorted(set(kept) - set(name_map.values()))
    # K classes, plus one for each COCO class whose synset is not among the K (listed in the vocabulary).
    assert len(vocab.classes) == k + len(vocab.coco_targets_not_kept)
    assert set(vocab.coco_targets_not_kept) == {c["name"] for c in COCO_CATEGORIES} - set(name_map)
    assert vocab.coco_targets_not_kept["fire hydrant"] == "water_faucet.n.01"  # by hand, though not kept here
    assert vocab.label_of_synset("table.n.02") > 80 and vocab.label_of_synset("sofa.n.01") == vocab.label("couch")
    # An object with two synsets counts for both (it is kept under neither).
    multi = [o for img in objects for o in img["objects"] if len(o["synsets"]) > 1]
    assert multi and synset_counts(objects)[multi[0]["synsets"][1]] == sum(
        multi[0]["synsets"][1] in o["synsets"] for img in objects for o in img["objects"])


def test_vocabulary_named_sets_and_size():
    from collections import Counter

    counts = Counter({"tree.n.01": 9, "man.n.01": 8, "sky.n.01": 7, "person.n.01": 5, "television.n.01": 3})
    vocab = build_vocabulary(COCO_CATEGORIES, counts, vg_classes=3)
    assert len(vocab.class_set("coco")) == 80 and len(vocab.class_set("voc")) == 20 and len(vocab.class_set("nonvoc")) == 60
    assert [vocab.name(l) for l in vocab.class_set("vg")] == ["man.n.01", "sky.n.01", "tree.n.01"]  # sorted
    assert vocab.label_of_synset("person.n.01") is None and vocab.coco_targets_not_kept["person"] == "person.n.01"
    assert vocab.coco_targets_not_kept["tv"] == "television.n.01" and vocab.coco_targets_not_kept["bus"] is None
    assert vocab.num_classes == 80 + 3 + 1
    vocab = build_vocabulary(COCO_CATEGORIES, counts, vg_classes=4)
    assert vocab.label_of_synset("person.n.01") == vocab.label("person") and vocab.num_classes == 80 + 3 + 1
    with pytest.raises(ValueError, match="class set 'pascal'"):
        vocab.class_set("pascal")
    # Every COCO class aligned to a kept synset: exactly K classes, as the paper's 3000.
    from maskx.datasets.vocab import COCO_TO_VG_SYNSET_BY_HAND

    aligned = Counter({COCO_TO_VG_SYNSET_BY_HAND.get(c["name"], c["name"].replace(" ", "_") + ".n.01"): 10
                       for c in COCO_CATEGORIES})
    assert len(aligned + counts) == 83  # person.n.01 and television.n.01 are in both
    vocab = build_vocabulary(COCO_CATEGORIES, aligned + counts, vg_classes=83)
    assert vocab.num_classes - 1 == 83 and not vocab.coco_targets_not_kept


def test_a_vocabulary_file_from_before_the_papers_rule_still_loads_and_compares(tmp_path):
    from maskx.datasets.vocab import Vocabulary

    old = {"classes": [{"name": "person", "coco_id": 1, "vg_synsets": ["person.n.01", "man.n.01"]},
                       {"name": "tree.n.01", "coco_id": None, "vg_synsets": ["tree.n.01"]}]}
    (tmp_path / "vocab.json").write_text(json.dumps(old))
    vocab = Vocabulary.load(str(tmp_path / "vocab.json"))
    assert vocab.label_of_synset("man.n.01") == 1 and vocab.to_json() == old
    vocab.require_same(Vocabulary.from_json(old), "shards", "the run")
    with pytest.raises(ValueError, match="another vocabulary"):
        vocab.require_same(build_vocabulary(COCO_CATEGORIES[:1], None), "shards", "the run")


@pytest.mark.skipif(not VG_SAMPLE.exists(), reason="../shared/data/vg-sample not present")
def test_the_papers_vg_splits(tmp_path):
    """val: the VG images of the COCO val annotations; test: the last N VG images in release order that
    are no COCO image; train: the rest. Disjoint, together every image, counted in each manifest."""
    image_data = json.loads((VG_SAMPLE / "image_data.json").read_text())
    for i, image in enumerate(image_data[:30]):  # the sample's images have no coco_id: give 30 of them one
        image["coco_id"] = 5000 + i
    (tmp_path / "image_data.json").write_text(json.dumps(image_data))
    coco_val = {"images": [{"id": 5000 + i, "width": 1, "height": 1, "file_name": "x.jpg"} for i in range(0, 30, 3)],
                "annotations": [], "categories": COCO_CATEGORIES}
    (tmp_path / "coco_val.json").write_text(json.dumps(coco_val))
    images_dir = tmp_path / "images"  # no pixels in the sample: placeholders of each listed size
    images_dir.mkdir()
    for image in image_data:
        Image.new("RGB", (image["width"], image["height"]), (128, 128, 128)).save(images_dir / image["url"].rsplit("/", 1)[-1])
    ids = {}
    for split in ("train", "val", "test"):
        manifest = prepare_vg(str(tmp_path / "image_data.json"), str(VG_SAMPLE / "objects.json"), str(images_dir),
                              str(tmp_path / split), split=split, coco_val=str(tmp_path / "coco_val.json"), test_images=20,
                              shard_size=50, workers=1, progress=False)
        samples, _ = eval_samples(tmp_path / split)
        ids[split] = set(samples)
        counts = manifest.counts["vg"]
        assert counts["split"] == split and counts["images"] == len(samples)
        assert (counts["train_split_images"], counts["val_split_images"], counts["test_split_images"]) == (70, 10, 20)
    release_order = [im["image_id"] for im in image_data]
    assert ids["val"] == {im["image_id"] for im in image_data[:30:3]}
    assert ids["test"] == set([i for i, im in zip(release_order, image_data) if im["coco_id"] is None][-20:])
    assert ids["train"] == set(release_order) - ids["val"] - ids["test"]
    with pytest.raises(ValueError, match=r"split val has no images \(no VG image in .*image_data.json has a coco_id "
                                         r"among the images of .*instances_train2017.json\)"):
        prepare_vg(str(tmp_path / "image_data.json"), str(VG_SAMPLE / "objects.json"), str(images_dir),
                   str(tmp_path / "empty"), split="val", progress=False,
                   coco_val=str(SHARED_DATA / "coco-tiny" / "annotations" / "instances_train2017.json"))
    with pytest.raises(ValueError, match="split must be one of train, val, test and needs coco_val"):
        prepare_vg(str(tmp_path / "image_data.json"), str(VG_SAMPLE / "objects.json"), str(images_dir),
                   str(tmp_path / "bad"), split="train", progress=False)


@pytest.mark.skipif(not VG_SAMPLE.exists(), reason="../shared/data/vg-sample not present")
def test_vg_objects_of_a_coco_class_whose_synset_is_not_kept_are_counted_in_the_manifest(tmp_path):
    from maskx.datasets.prepare import prepare_vocabulary as build

    images_dir = tmp_path / "images"
    images_dir.mkdir()
    for image in json.loads((VG_SAMPLE / "image_data.json").read_text()):
        Image.new("RGB", (image["width"], image["height"]), (128, 128, 128)).save(images_dir / image["url"].rsplit("/", 1)[-1])
    build(None, str(VG_SAMPLE / "objects.json"), vg_classes=20).save(str(tmp_path / "vocab.json"))
    manifest = prepare_vg(str(VG_SAMPLE / "image_data.json"), str(VG_SAMPLE / "objects.json"), str(images_dir),
                          str(tmp_path / "vg"), vocab_path=str(tmp_path / "vocab.json"), shard_size=50, workers=1,
                          progress=False)
    objects = json.loads((VG_SAMPLE / "objects.json").read_text())
    lone = {name: sum(o["synsets"] == [synset] for img in objects for o in img["objects"])
            for name, synset in manifest.vocab().coco_targets_not_kept.items()}
    assert lone["bed"] and "person" not in lone  # the sample has a few beds; persons are among its top 20
    reasons = [s.reason for s in manifest.skipped]
    for name, n in lone.items():
        synset = manifest.vocab().coco_targets_not_kept[name]
        assert (f"{n} objects left out: {synset} (what COCO's {name} means) is not a kept VG class" in reasons) == (n > 0)
    assert manifest.counts["vg"]["coco_classes_without_vg_class"] == len(manifest.vocab().coco_targets_not_kept)


def test_synthetic_vocabulary_splits_set_a_and_b(synth_paths):
    vocab = prepare_vocabulary(synth_paths["coco_train_annotations"], synth_paths["vg_objects"])
    assert {vocab.name(l) for l in vocab.class_set("voc")} == {"person", "car", "dog", "chair"}
    assert {vocab.name(l) for l in vocab.class_set("nonvoc")} == {"giraffe", "kite", "clock", "umbrella"}
    assert {vocab.name(l) for l in vocab.class_set("vg")} == {"tree.n.01", "building.n.01"}


def test_mask_sets_name_sets_classes_or_labels_in_any_mix():
    """`data.mask_sets`: a disjoint split names exactly the classes it trains masks on."""
    vocab = build_vocabulary(COCO_CATEGORIES)
    person, car, giraffe = vocab.label("person"), vocab.label("car"), vocab.label("giraffe")
    assert vocab.resolve_sets(["voc"]) == vocab.class_set("voc")
    assert vocab.resolve_sets(["person", "car", giraffe]) == sorted([person, car, giraffe])
    assert vocab.resolve_sets(["voc", "giraffe"]) == sorted(vocab.class_set("voc") + [giraffe])
    with pytest.raises(ValueError, match="'unicorn' is neither a class set .* a class name of this vocabulary nor a label"):
        vocab.resolve_sets(["unicorn"])
    with pytest.raises(ValueError, match="label 81 is not a class of this vocabulary"):
        vocab.resolve_sets([81])
