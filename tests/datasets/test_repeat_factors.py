"""Repeat-factor sampling (`data.repeat_threshold`): detectron2's factors, drawn per (seed, epoch,
pass, key) inside the canonical partitions, so any layout and any resume reads the same samples."""
import math
from collections import Counter

import pytest

from maskx.datasets.repeat_factors import SourceImages, class_frequency, repeat_factors
from maskx.datasets.shard_format import load_manifest

from .test_stream import keys_by_step, merged_position, run_layout


def synth_images(synth_shards):
    """The synthetic COCO train and VG sources as test_stream mixes them (weights 1 and 0.5)."""
    return [SourceImages(load_manifest(synth_shards["coco_train"]).load_image_classes(), 1.0),
            SourceImages(load_manifest(synth_shards["vg"]).load_image_classes(), 0.5)]


def test_factors_are_detectron2s_class_frequency_rule():
    # detectron2 `RepeatFactorTrainingSampler.repeat_factors_from_category_frequency`: f_c over images,
    # r_c = max(1, sqrt(t / f_c)), an image's r the max over its classes (1 without any).
    images = SourceImages({"a": [1], "b": [1], "c": [1, 2], "d": [1, 3], "e": []}, 1.0)
    assert class_frequency([images]) == {1: 0.8, 2: 0.2, 3: 0.2}
    factors = repeat_factors([images], threshold=0.4)
    assert factors.above_one == {"c": pytest.approx(math.sqrt(2)), "d": pytest.approx(math.sqrt(2))}
    assert factors.factor("a") == factors.factor("e") == 1.0
    assert factors.extra_samples == pytest.approx(2 * (math.sqrt(2) - 1))
    # Whole factors are exact; a fraction is drawn per pass, averaging the factor.
    assert {repeat_factors([images], threshold=0.8).copies("c", seed=0, epoch=e, pass_index=0) for e in range(20)} == {2}
    drawn = [factors.copies("c", seed=1, epoch=e, pass_index=p) for e in range(50) for p in range(20)]
    assert set(drawn) == {1, 2} and abs(sum(drawn) / len(drawn) - math.sqrt(2)) < 0.05
    assert drawn == [factors.copies("c", seed=1, epoch=e, pass_index=p) for e in range(50) for p in range(20)]
    with pytest.raises(ValueError, match="repeat threshold"):
        repeat_factors([images], threshold=0)


def test_a_mix_keeps_each_sources_share_and_repeats_within_it():
    coco = SourceImages({"c1": [1], "c2": [1], "c3": [1], "c4": [1, 2]}, 1.0)
    vg = SourceImages({"v1": [3], "v2": [3, 4]}, 1.0)
    # Class 4 is in half of VG's images, VG half of the mix: a quarter of what is read.
    assert class_frequency([coco, vg]) == {1: 0.5, 2: 0.125, 3: 0.5, 4: 0.25}
    factors = repeat_factors([coco, vg], threshold=0.5)
    assert factors.factor("c4") == pytest.approx(2.0) and factors.factor("v2") == pytest.approx(math.sqrt(2))
    after = class_frequency([coco, vg], factors)
    assert after[2] == pytest.approx(0.5 * 2 / 5) and after[4] == pytest.approx(0.5 * math.sqrt(2) / (1 + math.sqrt(2)))
    assert after[1] == pytest.approx(0.5) and after[3] == pytest.approx(0.5)  # in every image of its source


def test_prepare_writes_each_images_classes_as_training_reads_them(synth_shards):
    from maskx.datasets.stream import load_sources
    from maskx.datasets.stream import EvalStream

    for name in ("coco_train", "vg"):
        manifest = load_manifest(synth_shards[name])
        written = manifest.load_image_classes()
        sources, vocab = load_sources([(synth_shards[name], 1.0)])
        read = {}
        for batch in EvalStream(sources, vocab, batch_size=8):
            for key, target in zip(batch.keys, batch.targets):
                read[key] = sorted(set(target["labels"][target["iscrowd"] == 0].tolist()))
        assert written == read and len(written) == manifest.num_samples


def test_rare_images_are_read_more_and_every_layout_and_resume_reads_the_same(synth_shards):
    images = synth_images(synth_shards)
    factors = repeat_factors(images, threshold=0.5)
    steps = 40
    plain = keys_by_step(run_layout(synth_shards, 1, 0, steps_per_epoch=steps))
    repeated = keys_by_step(run_layout(synth_shards, 1, 0, steps_per_epoch=steps, repeat_factors=factors))
    labels = {key: labels for source in images for key, labels in source.labels.items()}
    rare = {9, 10}  # tree and building: VG's own classes, in few images

    def with_rare(steps):
        keys = [key for step in steps for key in step]
        return sum(bool(rare & set(labels[key])) for key in keys) / len(keys)

    assert with_rare(repeated) > with_rare(plain) + 0.04, (with_rare(repeated), with_rare(plain))
    # Within a source, images are read in proportion to their factors.
    reads, factor_of = Counter(key for step in repeated for key in step if key.startswith("coco-")), {}
    for key in labels:
        if key.startswith("coco-"):
            factor_of.setdefault(round(factors.factor(key), 3), []).append(reads[key])
    most, least = max(factor_of), min(factor_of)
    mean = {f: sum(n) / len(n) for f, n in factor_of.items()}
    assert abs(mean[most] / mean[least] / (most / least) - 1) < 0.25, (mean, factor_of)
    # Every layout, and a resume at another world size, reads exactly these samples.
    for world_size, loader_workers in ((2, 2), (3, 1)):
        per_rank = run_layout(synth_shards, world_size, loader_workers, steps_per_epoch=steps, repeat_factors=factors)
        assert keys_by_step(per_rank) == repeated, (world_size, loader_workers)
    consumed = run_layout(synth_shards, 2, loader_workers=2, stop=13, steps_per_epoch=steps, repeat_factors=factors)
    rest = run_layout(synth_shards, 3, loader_workers=1, start=merged_position(consumed), steps_per_epoch=steps,
                      repeat_factors=factors)
    assert keys_by_step(consumed) + keys_by_step(rest) == repeated
