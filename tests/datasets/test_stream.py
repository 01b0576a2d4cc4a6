import io
import itertools
import json
import tarfile
from collections import Counter

import pytest
import torch

from maskx.datasets.shard_format import load_manifest
from maskx.datasets.partitions import DataPlan, EpochLayout, StreamPosition
from maskx.datasets.stream import EvalStream, Source, load_sources, make_loader
from maskx.datasets.train_stream import TrainStream
from maskx.datasets.transforms import augment, decode_masks


PLAN = DataPlan(global_batch=6, partitions=6)


def train_stream(synth_shards, layout=None, **kwargs):
    sources, vocab = load_sources([(synth_shards["coco_train"], 1.0), (synth_shards["vg"], 0.5)])
    args = dict(sources=sources, vocab=vocab, mask_labels=vocab.class_set("voc"),
                layout=layout or EpochLayout(PLAN, world_size=1, batch_size=2), steps_per_epoch=7,
                min_sizes=(96, 128), max_size=192, shuffle_buffer=8, seed=5)
    args.update(kwargs)
    return TrainStream(**args)


def run_layout(synth_shards, world_size, loader_workers, start=None, stop=None, **kwargs):
    """Every rank's steps of one epoch at this world size (ranks run one after another here)."""
    layout = EpochLayout(PLAN, world_size, batch_size=2)
    per_rank = []
    for rank in range(world_size):
        stream = train_stream(synth_shards, layout, rank=rank, start=start, **kwargs)
        steps = stream.steps(make_loader(stream, loader_workers))
        per_rank.append(list(itertools.islice(steps, stop)))
    return per_rank


def keys_by_step(per_rank) -> list[list[str]]:
    return [sorted(key for steps in per_rank for key in steps[i].keys) for i in range(len(per_rank[0]))]


def merged_position(per_rank, epoch=0) -> StreamPosition:
    parts = []
    for steps in per_rank:
        position = StreamPosition(epoch=epoch)
        for step in steps:
            position.advance(step.index, step.partitions)
        parts.append(position)
    restored = StreamPosition.merged(parts)
    return StreamPosition.from_json(json.loads(json.dumps(restored.to_json())))


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


def test_every_rank_runs_the_same_micro_batches_per_step(synth_shards):
    for world_size in (2, 4):  # 4 does not divide the global batch of 6: ranks get 2, 2, 1, 1 samples
        per_rank = run_layout(synth_shards, world_size, loader_workers=2)
        assert [len(steps) for steps in per_rank] == [7] * world_size
        for i in range(7):
            counts = {len(steps[i].micro_batches) for steps in per_rank}
            assert len(counts) == 1
            assert sum(steps[i].images for steps in per_rank) == PLAN.global_batch
    for step in per_rank[0]:
        for batch in step.micro_batches:
            assert len(batch.images) <= 2 and all(im.dtype == torch.uint8 for im in batch.images)
            for image, target, augmentation in zip(batch.images, batch.targets, batch.augmentations):
                # the loader ships set A (VOC) instances' masks decoded, compact: one mask per
                # instance with has_mask, no placeholders, at the source size
                assert "mask_rles" not in target
                if target["has_mask"].any():
                    assert target["masks"].shape == (int(target["has_mask"].sum()), *image.shape[-2:])
                    assert all(target["masks"][i].any() for i in range(len(target["masks"])))
                assert augmentation.min_size in (96, 128) and augmentation.max_size == 192
                image, target = augment(image, target, augmentation)
                assert min(image.shape[-2:]) in (96, 128) and max(image.shape[-2:]) <= 192
                if "masks" in target:
                    # masks stay at the source resolution, with the image's aspect
                    mask_h, mask_w = target["masks"].shape[1:]
                    assert abs(mask_w / mask_h - image.shape[-1] / image.shape[-2]) < 0.02


def test_a_rank_without_samples_in_a_step_runs_a_blank_pass():
    layout = EpochLayout(DataPlan(global_batch=2, partitions=4), world_size=3, batch_size=1)
    # step 0 takes partitions 0 and 1 (ranks 0 and 1); rank 2 has nothing but must still take part
    assert [layout.micro_batch_sizes(rank, 0) for rank in range(3)] == [[1], [1], [0]]
    assert layout.loss_weight(1) == 1.5 and layout.loss_weight(0) == 0.0


def test_sample_order_does_not_depend_on_world_size_or_loader_workers(synth_shards):
    reference = keys_by_step(run_layout(synth_shards, world_size=1, loader_workers=0))
    for world_size, loader_workers in ((2, 2), (3, 1), (6, 3)):
        per_rank = run_layout(synth_shards, world_size, loader_workers)
        assert keys_by_step(per_rank) == reference, (world_size, loader_workers)
    # the augmentations too: each sample is drawn the same resize and flip
    def drawn(per_rank):
        return [sorted((k, a.min_size, a.flip) for steps in per_rank for b in steps[i].micro_batches
                       for k, a in zip(b.keys, b.augmentations)) for i in range(len(per_rank[0]))]

    assert drawn(run_layout(synth_shards, 1, 0)) == drawn(run_layout(synth_shards, 3, 1))


def test_sources_are_mixed_by_weight(synth_shards):
    """24 COCO and 12 VG images at weights 1 and 3: VG is 3/4 of the samples drawn. Mixed by size it
    would be 1/3, uniformly 1/2 (at weights 1 and 0.5 all three read alike: 1/3, 1/3, 1/2)."""
    sources, vocab = load_sources([(synth_shards["coco_train"], 1.0), (synth_shards["vg"], 3.0)])
    keys = [k for step in run_layout(synth_shards, 1, 0, steps_per_epoch=30, sources=sources, vocab=vocab)[0]
            for k in step.keys]
    vg = sum(k.startswith("vg-") for k in keys) / len(keys)
    assert len(keys) == 180 and 0.65 < vg < 0.85, vg  # binomial std 0.032 around 0.75


@pytest.mark.parametrize("before, after", [(2, 2), (2, 3), (2, 1), (3, 2)])
def test_resume_at_any_world_size_loses_and_repeats_nothing(synth_shards, before, after):
    unbroken = keys_by_step(run_layout(synth_shards, world_size=1, loader_workers=0))
    consumed = run_layout(synth_shards, before, loader_workers=2, stop=3)  # the workers die here
    rest = run_layout(synth_shards, after, loader_workers=2, start=merged_position(consumed))
    assert keys_by_step(consumed) + keys_by_step(rest) == unbroken


def test_a_position_from_another_plan_is_refused(synth_shards):
    consumed = run_layout(synth_shards, 2, loader_workers=0, stop=3)
    layout = EpochLayout(DataPlan(global_batch=4, partitions=6), world_size=2, batch_size=2)
    with pytest.raises(ValueError, match="partition 0 gave"):
        train_stream(synth_shards, layout, start=merged_position(consumed))


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
    layout = EpochLayout(DataPlan(global_batch=2, partitions=1), world_size=1, batch_size=2)
    stream = TrainStream(sources=[source], vocab=manifest.vocab(), mask_labels=None, layout=layout, steps_per_epoch=20,
                         min_sizes=(96,), max_size=160)
    steps = list(stream.steps(make_loader(stream, num_workers=0)))
    assert len(steps) == 20 and all(step.images == 2 for step in steps)
    assert steps[-1].partitions[0].skipped >= 3


def test_the_loader_workers_ship_masks_decoded_at_the_source_size(synth_shards):
    """The RLEs are decoded in the loader workers (off the training thread): a step receives uint8
    masks, one per instance with has_mask, at the image's source size, each inside its box."""
    steps = run_layout(synth_shards, 1, loader_workers=2, stop=4)[0]
    targets = [(image, t) for step in steps for batch in step.micro_batches for image, t in zip(batch.images, batch.targets)]
    with_masks = [(image, t) for image, t in targets if t["has_mask"].any()]
    assert with_masks and not any("mask_rles" in t for _, t in targets)
    for image, target in with_masks:
        masks = target["masks"]
        assert masks.dtype == torch.uint8 and masks.shape == (int(target["has_mask"].sum()), *image.shape[-2:])
        for mask, (x0, y0, x1, y1) in zip(masks, target["boxes"][target["has_mask"]].tolist()):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert len(xs) and xs.min() >= x0 - 1 and xs.max() <= x1 + 1 and ys.min() >= y0 - 1 and ys.max() <= y1 + 1


def test_masks_that_do_not_decode_are_dropped_in_the_step_not_the_run(caplog):
    """The loader checks each RLE's form (a mismatched size or a non-RLE is a bad sample, skipped and
    counted there); one whose runs do not add up shows only when it is decoded (in the loader worker):
    that instance trains without its mask, and the log says which sample."""
    target = {"boxes": torch.zeros(1, 4), "labels": torch.tensor([1]), "has_mask": torch.tensor([True]),
              "mask_rles": [{"size": [4, 5], "counts": "zzzz"}]}
    with caplog.at_level("WARNING"):
        decoded = decode_masks(target, "coco-000000000042")
    assert "masks" not in decoded and not decoded["has_mask"].any()
    assert "sample coco-000000000042: its masks do not decode" in caplog.text
    assert "mask_rles" in target  # the batch itself is left as it was


def test_parseable_but_malformed_samples_are_skipped_and_counted_in_training_and_evaluation(synth_shards, tmp_path,
                                                                                           caplog):
    """JSON that parses and a JPEG that decodes, but a record that cannot be used: counted like a
    corrupt sample in the evaluation stream (what `maskx eval` and `predict --shards` read) and
    refused as a BadSample by training's decode, never a crash later in the batch or in COCO eval."""
    from maskx.datasets.transforms import BadSample, decode_sample

    manifest = load_manifest(synth_shards["coco_train"])
    good = manifest.shard_urls()[0]
    with tarfile.open(good) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    jpeg, record = members[0][1], json.loads(members[1][1])
    annotation = record["annotations"][0]
    malformed = {
        "no-image-id": {k: v for k, v in record.items() if k != "image_id"},
        "text-bbox": {**record, "annotations": [{**annotation, "bbox": ["a", "b", "c", "d"]}]},
        "nan-bbox": {**record, "annotations": [{**annotation, "bbox": [1, 2, float("nan"), 4]}]},
        "bad-rle": {**record, "annotations": [{**annotation, "segmentation": {"size": [1, 1], "counts": "0"}}]},
    }
    bad = [(f"{name}{suffix}", payload) for name, rec in malformed.items()
           for suffix, payload in ((".jpg", jpeg), (".json", json.dumps(rec).encode()))]
    _write_tar(tmp_path / "malformed.tar", members[:4] + bad)
    stream = EvalStream([Source("coco", [str(tmp_path / "malformed.tar")], [6])], manifest.vocab(), batch_size=100)
    with caplog.at_level("WARNING"):
        keys = [k for b in stream for k in b.keys]
    assert len(keys) == 2 and stream.skips.count == 4
    assert "bad record" in caplog.text and "bad annotation" in caplog.text and "bad RLE" in caplog.text
    for name in ("text-bbox", "nan-bbox", "bad-rle"):
        sample = {"__key__": name, "jpg": jpeg, "json": json.dumps(malformed[name]).encode()}
        with pytest.raises(BadSample):
            decode_sample(sample, manifest.vocab(), None, train=True)
