"""Repeat-factor sampling (Gupta et al. 2019, LVIS; detectron2's `RepeatFactorTrainingSampler`):
images of rare classes are read more often, to counter a long tail like Visual Genome's.

f_c is the fraction of the images a run reads that contain class c: each source's fraction weighted
by its share of the mix (one source: the dataset's fraction, as detectron2 counts it). With threshold
t a class's factor is r_c = max(1, sqrt(t / f_c)), and an image's is the largest of its classes'
(1 for an image without objects). Each pass over a source reads an image floor(r) times, and once
more with probability r - floor(r), drawn from (seed, epoch, pass, key): the same in any
partitioning, so resumes and elastic resizes read the same samples (`TrainStream.raw_samples`).

The classes of each image come from the manifests' `image_classes.json` (written by `maskx
prepare`); no shard is read to compute the factors.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Optional

from .stream import seeded_rng


@dataclass(frozen=True)
class SourceImages:
    """One training source's images (key -> labels of its objects) and its weight in the mix."""

    labels: dict[str, list[int]]
    weight: float


@dataclass(frozen=True)
class RepeatFactors:
    threshold: float
    above_one: dict[str, float]  # key -> factor, for the images read more than once on average

    def factor(self, key: str) -> float:
        return self.above_one.get(key, 1.0)

    def copies(self, key: str, *, seed: int, epoch: int, pass_index: int) -> int:
        """How many times this pass reads the image: its factor, rounded by a seeded draw."""
        factor = self.factor(key)
        whole = math.floor(factor)
        if factor == whole:
            return whole
        return whole + (seeded_rng(seed, epoch, pass_index, key, "repeat").random() < factor - whole)

    @property
    def extra_samples(self) -> float:
        """Samples a pass over every source reads beyond one each, on average."""
        return sum(factor - 1 for factor in self.above_one.values())


def repeat_factors(sources: list[SourceImages], threshold: float,
                   frequency: Optional[dict[int, float]] = None) -> RepeatFactors:
    """Each image's factor; `frequency`: the sources' `class_frequency`, when the caller has it."""
    if not 0 < threshold <= 1:
        raise ValueError(f"repeat threshold: a fraction of images in (0, 1], got {threshold}")
    frequency = class_frequency(sources) if frequency is None else frequency
    class_factor = {label: class_repeat_factor(f, threshold) for label, f in frequency.items()}
    above_one = {}
    for source in sources:
        if source.weight <= 0:
            continue
        for key, labels in source.labels.items():
            factor = max((class_factor[label] for label in labels), default=1.0)
            if factor > 1:
                above_one[key] = factor
    return RepeatFactors(threshold, above_one)


def class_repeat_factor(frequency: float, threshold: float) -> float:
    """r_c of a class in this fraction of the images read."""
    return max(1.0, math.sqrt(threshold / frequency))


def class_frequency(sources: list[SourceImages], factors: Optional[RepeatFactors] = None) -> dict[int, float]:
    """label -> the fraction of the images read that contain it; with `factors`, as read with their
    repeats (each source keeps its share of the mix; its images are drawn in proportion to their
    factors)."""
    read = [s for s in sources if s.weight > 0 and s.labels]
    total_weight = sum(s.weight for s in read)
    frequency: Counter = Counter()
    for source in read:
        weights = {key: factors.factor(key) if factors else 1.0 for key in source.labels}
        scale = source.weight / total_weight / sum(weights.values())
        for key, labels in source.labels.items():
            for label in labels:
                frequency[label] += weights[key] * scale
    return dict(frequency)
