import io
import json
import tarfile
from collections import Counter

import pytest
import torch

from maskx.datasets.shard_format import load_manifest
from maskx.datasets.stream import EvalStream, Source, StreamPosition, TrainStream, load_sources, make_loader
from maskx.datasets.transforms import augment


def train_stream(synth_shards, **kwargs):
    sources, vocab = load_sources([(synth_shards["coco_train"], 1.0), (synth_shards["vg"], 0.5)])
    args = dict(sources=sources, vocab=vocab, mask_labels=vocab.class_set("voc"), batch_size=2, batches_per_epoch=7,
                min_sizes=(96, 128), max_size=192, shuffle_buffer=8, seed=5)
    args.update(kwargs)
    return TrainStream(**args)


@pytest.mark.parametrize("world_size, shard_size_note", [(2, "more shards than slots"), (5, "fewer shards than slots")])
def test_eval_epoch_covers_every_sample_exactly_once(synth_shards, world_size, shard_size_note):
    manifest = load_manifest(synth_shards["coco_train"])  # 24 samples in 5 shards
    sources = [Source.from_manifest(manifest)]
    keys = Counter()
    for rank in range(world_size):
        stream = EvalStream(sources, manifest.vocab(), batch_size=3, rank=rank, world_size=world_size)
        for batch in make_loader(stream, num_workers=2):
            keys.update(batch.keys)
    assert len(keys) == manifest.num_samples and set(keys.values()) == {1}


def test_train_epoch_gives_every_rank_the_same_batch_count(synth_shards):
    counts = []
    for rank in range(2):
        stream = train_stream(synth_shards, rank=rank, world_size=2)
        batches = list(make_loader(stream, num_workers=2))
        counts.append(len(batches))
        for batch in batches:
            assert len(batch.images) == 2 and all(im.dtype == torch.uint8 for im in batch.images)
            for image, target, augmentation in zip(batch.images, batch.targets, batch.augmentations):
                if "masks" in target:  # shipped at the source size; the train step resizes on the device
                    assert target["masks"].shape[1:] == image.shape[-2:]
                assert augmentation.min_size in (96, 128) and augmentation.max_size == 192
                image, target = augment(image, target, augmentation)
                assert min(image.shape[-2:]) in (96, 128) and max(image.shape[-2:]) <= 192
                if "masks" in target:
                    # masks stay at the source resolution, with the image's aspect
                    mask_h, mask_w = target["masks"].shape[1:]
                    assert abs(mask_w / mask_h - image.shape[-1] / image.shape[-2]) < 0.02
                    # set A (VOC) instances carry masks; others are all-zero placeholders
                    assert target["masks"][~target["has_mask"]].sum() == 0
    assert counts == [7, 7]


def test_sources_are_mixed_by_weight(synth_shards):
    keys = [k for b in make_loader(train_stream(synth_shards, batches_per_epoch=30), 0) for k in b.keys]
    vg = sum(k.startswith("vg-") for k in keys) / len(keys)
    assert 0.15 < vg < 0.5  # weight 0.5 vs 1.0 -> one third expected


def test_resume_from_a_position_loses_and_repeats_nothing(synth_shards):
    unbroken = [b.keys for b in make_loader(train_stream(synth_shards), num_workers=2)]
    position = StreamPosition(epoch=0)
    consumed = []
    for batch in make_loader(train_stream(synth_shards), num_workers=2):
        consumed.append(batch.keys)
        position.advance(batch)
        if len(consumed) == 3:
            break  # the worker dies here
    restored = StreamPosition.from_json(json.loads(json.dumps(position.to_json())))
    rest = [b.keys for b in make_loader(train_stream(synth_shards, start=restored), num_workers=2)]
    assert consumed + rest == unbroken


def _write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_corrupt_samples_and_truncated_shards_are_skipped_and_counted(synth_shards, tmp_path, caplog):
    manifest = load_manifest(synth_shards["coco_train"])
    good = manifest.shard_urls()[0]
    with tarfile.open(good) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    record = json.loads(members[1][1])
    bad = [("bad-jpeg.jpg", b"\x00not a jpeg"), ("bad-jpeg.json", members[1][1]),
           ("bad-json.jpg", members[0][1]), ("bad-json.json", b"{not json"),
           ("bad-ann.jpg", members[0][1]), ("bad-ann.json", json.dumps({**record, "annotations": [{"bbox": [1]}]}).encode())]
    _write_tar(tmp_path / "corrupt.tar", members[:4] + bad)
    full = (tmp_path / "full.tar")
    _write_tar(full, members)
    (tmp_path / "truncated.tar").write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    source = Source("coco", [str(tmp_path / "corrupt.tar"), str(tmp_path / "truncated.tar"), good], [5, 5, 5])
    stream = EvalStream([source], manifest.vocab(), batch_size=100)
    with caplog.at_level("WARNING"):
        batches = list(stream)
    keys = [k for b in batches for k in b.keys]
    # corrupt.tar gives its 2 good samples, good gives 5, truncated.tar what precedes the cut.
    truncated_kept = len(keys) - 2 - 5
    assert 0 <= truncated_kept < 5
    # 3 bad samples of the corrupt shard, plus the samples lost where the truncated shard breaks.
    assert stream.skips.count == 3 + (5 - truncated_kept)
    assert "broken JSON" in caplog.text and "corrupt JPEG" in caplog.text and "bad annotation" in caplog.text
    assert "truncated.tar: damaged after" in caplog.text


def test_training_survives_corrupt_data_and_reports_it(synth_shards, tmp_path):
    manifest = load_manifest(synth_shards["coco_train"])
    urls = manifest.shard_urls()
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file at all" * 10)
    source = Source("coco", urls + [str(tmp_path / "junk.tar")], [s.samples for s in manifest.shards] + [3])
    stream = TrainStream([source], manifest.vocab(), None, batch_size=2, batches_per_epoch=20, min_sizes=(96,), max_size=160)
    batches = list(make_loader(stream, num_workers=0))
    assert len(batches) == 20
    assert batches[-1].position.skipped >= 3
