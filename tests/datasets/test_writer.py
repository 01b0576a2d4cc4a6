import json
import os

import pytest

from maskx.datasets.prepare import prepare_coco
from maskx.datasets.shard_format import load_manifest
from maskx.datasets.writer import RECORDS_DIR


def test_rerun_is_deterministic_and_skips_complete_shards(synth_paths, tmp_path, caplog):
    args = (synth_paths["coco_train_annotations"], synth_paths["coco_train_images"])
    first = prepare_coco(*args, str(tmp_path / "a"), shard_size=7, workers=1, progress=False)
    other = prepare_coco(*args, str(tmp_path / "b"), shard_size=7, workers=2, progress=False)
    assert [s.sha256 for s in first.shards] == [s.sha256 for s in other.shards]  # byte-identical output
    # Damage one shard: the rerun rewrites that one and keeps the rest.
    damaged = tmp_path / "a" / first.shards[1].url
    damaged.write_bytes(damaged.read_bytes()[:100])
    mtimes = {s.url: os.path.getmtime(tmp_path / "a" / s.url) for s in first.shards}
    with caplog.at_level("INFO"):
        again = prepare_coco(*args, str(tmp_path / "a"), shard_size=7, workers=1, progress=False)
    assert f"{len(first.shards) - 1} of {len(first.shards)} shards already complete" in caplog.text
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in first.shards]
    assert os.path.getmtime(tmp_path / "a" / first.shards[0].url) == mtimes[first.shards[0].url]


def test_bad_inputs_are_skipped_and_listed(synth_paths, tmp_path):
    annotations = json.loads(open(synth_paths["coco_train_annotations"]).read())
    annotations["annotations"][0]["bbox"] = [10, 10, 0, 5]                     # degenerate box
    annotations["annotations"][1]["segmentation"] = []                         # empty polygon
    annotations["annotations"][2]["category_id"] = 999                         # unknown category
    images = tmp_path / "images"
    images.mkdir()
    for name in os.listdir(synth_paths["coco_train_images"]):
        (images / name).write_bytes(open(os.path.join(synth_paths["coco_train_images"], name), "rb").read())
    first, second, third = (im["file_name"] for im in annotations["images"][:3])
    (images / first).write_bytes((images / first).read_bytes()[:300])        # truncated JPEG
    (images / second).write_bytes(b"GIF89a not a jpeg")                       # not a JPEG
    (images / third).unlink()                                                 # missing
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(annotations))
    # 3 of 24 images are bad: past the default ceiling, which tests/datasets/test_release_layouts.py covers.
    manifest = prepare_coco(str(path), str(images), str(tmp_path / "out"), shard_size=10, workers=1, progress=False,
                            max_skipped_fraction=0.2)
    reasons = [s.reason for s in manifest.skipped]
    assert any("degenerate" in r for r in reasons)
    assert "empty polygon" in reasons
    assert any("unknown category 999" in r for r in reasons)
    assert any(r.startswith("corrupt JPEG") for r in reasons)
    assert "not a JPEG" in reasons
    assert any(r.startswith("missing image") for r in reasons)
    assert manifest.num_samples == len(annotations["images"]) - 3
    assert load_manifest(str(tmp_path / "out")).skipped == manifest.skipped
    assert (tmp_path / "out" / RECORDS_DIR).is_dir()


def test_missing_manifest_fails_fast_with_its_url(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere" / "manifest.json")):
        load_manifest(str(tmp_path / "nowhere"))


def test_jpeg_check_takes_padding_after_the_end_marker_but_not_a_cut(synth_paths):
    from PIL import Image

    from maskx.datasets.writer import check_jpeg

    path = os.path.join(synth_paths["coco_train_images"], sorted(os.listdir(synth_paths["coco_train_images"]))[0])
    payload = open(path, "rb").read()
    width, height = Image.open(path).size
    assert check_jpeg(payload, width, height) is None
    assert check_jpeg(payload + b"\0" * 200, width, height) is None  # some encoders pad
    assert check_jpeg(payload[: len(payload) - 100], width, height) == "corrupt JPEG (truncated: no end-of-image marker)"
    assert check_jpeg(payload, width + 1, height).startswith("image is")
