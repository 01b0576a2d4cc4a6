"""COCO and Visual Genome as they are distributed: folders as the release unzips, the release's zip
archives read in place (local and S3), and a conversion that finds (almost) nothing fails.

The JSON is the real samples' in ../shared/data. The VG sample ships no pixels: placeholder JPEGs
of each listed size stand in for them, laid out where the release puts them (the folder in each
image's url: 51 in VG_100K_2/, 49 in VG_100K/).
"""
import json
import logging
import shutil
import subprocess
import sys
import zipfile

import pytest
from PIL import Image

from maskx.datasets import storage
from maskx.datasets.prepare import TooManySkipped, prepare_coco, prepare_vg
from maskx.datasets.shard_format import MANIFEST_NAME

from ..conftest import SHARED_DATA

COCO_TINY = SHARED_DATA / "coco-tiny"
VG_SAMPLE = SHARED_DATA / "vg-sample"
needs_vg = pytest.mark.skipif(not VG_SAMPLE.exists(), reason="../shared/data/vg-sample not present")
needs_coco = pytest.mark.skipif(not COCO_TINY.exists(), reason="../shared/data/coco-tiny not present")


@pytest.fixture(scope="module")
def vg_release(tmp_path_factory):
    """IMAGES/VG_100K/*.jpg and IMAGES/VG_100K_2/*.jpg as the release unzips, and the two archives
    as downloaded (images.zip holds VG_100K/, images2.zip holds VG_100K_2/)."""
    root = tmp_path_factory.mktemp("vg-release")
    images = root / "IMAGES"
    for image in json.loads((VG_SAMPLE / "image_data.json").read_text()):
        folder, name = image["url"].split("/")[-2:]
        (images / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (image["width"], image["height"]), (image["image_id"] % 256, 90, 120)).save(images / folder / name)
    for archive, folder, compression in (("images.zip", "VG_100K", zipfile.ZIP_DEFLATED),
                                         ("images2.zip", "VG_100K_2", zipfile.ZIP_STORED)):
        with zipfile.ZipFile(root / archive, "w", compression) as zf:
            for path in sorted((images / folder).iterdir()):
                zf.write(path, f"{folder}/{path.name}")
    return root


def prepare_sample_vg(images, out, **kwargs):
    return prepare_vg(str(VG_SAMPLE / "image_data.json"), str(VG_SAMPLE / "objects.json"), images, str(out),
                      shard_size=40, workers=1, progress=False, **kwargs)


def shard_digests(manifest):
    return [(s.url, s.samples, s.sha256) for s in manifest.shards]


@needs_vg
def test_vg_in_its_release_folders_converts_every_image(vg_release, tmp_path):
    manifest = prepare_sample_vg(str(vg_release / "IMAGES"), tmp_path / "vg")
    assert manifest.counts["vg"]["images"] == 100
    assert not [s for s in manifest.skipped if "image" in s.reason and "objects left out" not in s.reason]
    assert (tmp_path / "vg" / MANIFEST_NAME).exists()


@needs_vg
def test_vg_read_from_its_zip_archives_gives_the_same_shards_as_the_folders(vg_release, tmp_path):
    from_folders = prepare_sample_vg(str(vg_release / "IMAGES"), tmp_path / "folders")
    from_zips = prepare_sample_vg([str(vg_release / "images.zip"), str(vg_release / "images2.zip")], tmp_path / "zips")
    assert shard_digests(from_zips) == shard_digests(from_folders)
    assert from_zips.counts == from_folders.counts


@needs_vg
@pytest.mark.integration
@pytest.mark.core
@pytest.mark.s3
def test_vg_zip_archives_on_s3_are_read_in_place_with_ranged_reads(vg_release, s3_endpoint, tmp_path):
    s3 = storage.s3_client()
    s3.create_bucket(Bucket="vg-release")
    for archive in ("images.zip", "images2.zip"):
        s3.upload_file(str(vg_release / archive), "vg-release", f"vg/{archive}")
    local = prepare_sample_vg(str(vg_release / "IMAGES"), tmp_path / "local")
    on_s3 = prepare_sample_vg(["s3://vg-release/vg/images.zip", "s3://vg-release/vg/images2.zip"], "s3://vg-release/shards")
    assert shard_digests(on_s3) == shard_digests(local)
    # An S3 folder in the release layout works the same.
    for path in sorted((vg_release / "IMAGES").rglob("*.jpg")):
        s3.upload_file(str(path), "vg-release", f"unzipped/{path.parent.name}/{path.name}")
    assert shard_digests(prepare_sample_vg("s3://vg-release/unzipped", tmp_path / "s3-folder")) == shard_digests(local)


@needs_vg
def test_vg_pointed_at_one_of_its_two_folders_fails_and_writes_no_manifest(vg_release, tmp_path):
    with pytest.raises(TooManySkipped) as failure:
        prepare_sample_vg(str(vg_release / "IMAGES" / "VG_100K"), tmp_path / "vg")
    message = str(failure.value)
    assert "51 of 100 images" in message and "missing image (51)" in message
    # Where it looked, for an image of VG_100K_2: the release's folder and the flat name.
    assert f"looked in {vg_release}/IMAGES/VG_100K/VG_100K_2/1.jpg, {vg_release}/IMAGES/VG_100K/1.jpg" in message
    assert not (tmp_path / "vg").exists()  # missing images fail before any shard is written
    # Accepted when the user says the loss is expected.
    assert prepare_sample_vg(str(vg_release / "IMAGES" / "VG_100K"), tmp_path / "half",
                             max_skipped_fraction=0.6).counts["vg"]["images"] == 49


@needs_vg
def test_vg_images_in_the_coco_evaluation_split_are_excluded(vg_release, tmp_path):
    # The sample's first 100 images have no coco_id: give ten of them one, and list those ids in a
    # COCO annotation file as the evaluation split.
    image_data = json.loads((VG_SAMPLE / "image_data.json").read_text())
    for i, image in enumerate(image_data[:10]):
        image["coco_id"] = 500000 + i
    (tmp_path / "image_data.json").write_text(json.dumps(image_data))
    (tmp_path / "instances_val.json").write_text(json.dumps(
        {"images": [{"id": 500000 + i, "file_name": "x.jpg", "width": 1, "height": 1} for i in range(10)] + [{"id": 7}],
         "annotations": [], "categories": []}))
    manifest = prepare_vg(str(tmp_path / "image_data.json"), str(VG_SAMPLE / "objects.json"), str(vg_release / "IMAGES"),
                          str(tmp_path / "vg"), shard_size=40, workers=1, progress=False,
                          exclude_coco=[str(tmp_path / "instances_val.json")])
    assert manifest.counts["vg"]["images"] == 90 and manifest.counts["vg"]["excluded_coco_images"] == 10
    from maskx.datasets.stream import EvalStream, Source

    kept = {b.targets[0]["image_id"] for b in EvalStream([Source.from_manifest(manifest)], manifest.vocab(), batch_size=1)}
    assert kept == {image["image_id"] for image in image_data[10:]}


@pytest.fixture(scope="module")
def coco_release(tmp_path_factory):
    """val2017/ as the release unzips and val2017.zip as downloaded (members val2017/X.jpg)."""
    root = tmp_path_factory.mktemp("coco-release")
    shutil.copytree(COCO_TINY / "val2017", root / "val2017")
    with zipfile.ZipFile(root / "val2017.zip", "w", zipfile.ZIP_STORED) as zf:
        for path in sorted((root / "val2017").iterdir()):
            zf.write(path, f"val2017/{path.name}")
    return root


@needs_coco
def test_coco_from_its_folder_and_its_zip_gives_the_same_shards(coco_release, tmp_path):
    annotations = str(COCO_TINY / "annotations" / "instances_val2017.json")
    from_folder = prepare_coco(annotations, str(coco_release / "val2017"), str(tmp_path / "folder"), shard_size=16,
                               workers=1, progress=False)
    from_zip = prepare_coco(annotations, str(coco_release / "val2017.zip"), str(tmp_path / "zip"), shard_size=16,
                            workers=1, progress=False)
    assert from_folder.counts["coco"]["images"] == 50
    assert shard_digests(from_zip) == shard_digests(from_folder)


@needs_coco
def test_coco_with_the_wrong_images_folder_exits_non_zero_naming_where_it_looked(coco_release, tmp_path):
    annotations = str(COCO_TINY / "annotations" / "instances_val2017.json")
    result = subprocess.run([sys.executable, "-P", "-m", "maskx.orchestrator.cli", "prepare", "coco", "--annotations",
                             annotations, "--images", str(COCO_TINY / "train2017"), "--out", str(tmp_path / "coco")],
                            capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "50 of 50 images" in result.stderr and "missing image (50)" in result.stderr
    assert f"looked in {COCO_TINY / 'train2017'}/" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "coco" / MANIFEST_NAME).exists()


@needs_coco
def test_unreadable_jpegs_past_the_ceiling_leave_shards_but_no_manifest(coco_release, tmp_path):
    images = tmp_path / "val2017"
    shutil.copytree(coco_release / "val2017", images)
    for path in sorted(images.iterdir())[:5]:
        path.write_bytes(path.read_bytes()[:500])  # truncated: found, but not a whole JPEG
    with pytest.raises(TooManySkipped, match=r"5 of 50 images .* corrupt JPEG \(5\)"):
        prepare_coco(str(COCO_TINY / "annotations" / "instances_val2017.json"), str(images), str(tmp_path / "coco"),
                     shard_size=16, workers=1, progress=False)
    assert not (tmp_path / "coco" / MANIFEST_NAME).exists()


def test_synth_that_would_write_an_empty_split_fails(tmp_path):
    result = subprocess.run([sys.executable, "-P", "-m", "maskx.orchestrator.cli", "synth", "--out", str(tmp_path),
                             "--shards", "--train-images", "4", "--val-images", "0", "--vg-images", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "lists no images to convert; no manifest written" in result.stderr


def test_progress_in_a_job_log_is_lines_with_real_counts_and_a_final_one(synth_paths, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="maskx.datasets.writer"):
        prepare_coco(synth_paths["coco_train_annotations"], synth_paths["coco_train_images"], str(tmp_path / "coco"),
                     shard_size=10, workers=1, progress=True)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("shards coco")]
    assert lines and "3/3" in lines[-1] and "100%" in lines[-1]
    assert all("\r" not in line for line in lines)
