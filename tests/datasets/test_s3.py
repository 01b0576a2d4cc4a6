"""Shards written to and streamed from a real S3 API (moto's server) on 127.0.0.1."""
import pytest

from maskx.datasets import storage
from maskx.datasets.prepare import prepare_coco
from maskx.datasets.shard_format import load_manifest
from maskx.datasets.stream import EvalStream, load_sources, make_loader

# moto in this process, a second each: all in the CI lane.
pytestmark = [pytest.mark.integration, pytest.mark.core, pytest.mark.s3]


@pytest.fixture
def bucket(s3_endpoint):
    storage.s3_client().create_bucket(Bucket="maskx-test")
    return "s3://maskx-test"


def test_shards_round_trip_through_s3(bucket, synth_paths, caplog):
    out = f"{bucket}/coco/train"
    args = (synth_paths["coco_train_annotations"], synth_paths["coco_train_images"], out)
    manifest = prepare_coco(*args, shard_size=5, workers=1, progress=False)
    stored = load_manifest(out)
    assert stored.num_samples == manifest.num_samples == 24
    assert all(url.startswith("s3://maskx-test/coco/train/") for url in stored.shard_urls())
    head = storage.s3_client().head_object(Bucket="maskx-test", Key="coco/train/" + stored.shards[0].url)
    assert head["Metadata"]["sha256"] == stored.shards[0].sha256

    sources, vocab = load_sources([(out, 1.0)])
    keys = [k for b in make_loader(EvalStream(sources, vocab, batch_size=4), num_workers=2) for k in b.keys]
    assert sorted(keys) == sorted(f"coco-{i:012d}" for i in range(1, 25))

    with caplog.at_level("INFO"):
        prepare_coco(*args, shard_size=5, workers=1, progress=False)
    assert "5 of 5 shards already complete" in caplog.text


def test_large_shard_uses_multipart_upload(bucket, tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * (9 * 2**20))
    storage.put_file(str(path), f"{bucket}/big.bin", {"sha256": "abc"})
    parts = storage.s3_client().head_object(Bucket="maskx-test", Key="big.bin", PartNumber=1)
    assert parts.get("PartsCount", 1) == 2


def test_missing_manifest_and_bucket_fail_fast_naming_the_url(bucket):
    with pytest.raises(FileNotFoundError, match="s3://maskx-test/absent/manifest.json"):
        load_manifest(f"{bucket}/absent")
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket/x/manifest.json"):
        load_manifest("s3://no-such-bucket/x")


def test_a_folder_marker_is_no_file_of_its_folder(bucket):
    """Ray Train's uploads (pyarrow's S3 filesystem) leave a `PREFIX/` key beside a checkpoint's files:
    a listing that named it `""` made a local copy of the folder write a file over the folder itself."""
    storage.s3_client().put_object(Bucket="maskx-test", Key="runs/r/checkpoint_00000002/", Body=b"")
    storage.write_bytes(f"{bucket}/runs/r/checkpoint_00000002/state.pt", b"state")
    storage.write_bytes(f"{bucket}/runs/r/checkpoint_00000002/sub/x", b"x")
    assert storage.list_folder(f"{bucket}/runs/r/checkpoint_00000002") == (["sub"], ["state.pt"])
