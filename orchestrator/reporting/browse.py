"""`maskx browse`: prepared shards drawn as the model sees them (MMDetection's browse_dataset.py):
each sample decoded as training decodes it (crowd regions dropped), resized and flipped by the
augmentation the stream would draw, masks decoded and carried through the flip. An object with a mask
is drawn blue with its mask; a box without one (a Visual Genome object, or a class outside the mask
sets) orange, named `(box only)`. Samples training would skip are listed, with why.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import torch
import torchvision.transforms.v2.functional as F
from torchvision.io import write_png

from maskx.datasets.shard_format import load_manifest
from maskx.datasets.stream import SkipCounter, Source, seeded_rng, slot_assignment, source_shards
from maskx.datasets.transforms import BadSample, augment, decode_masks, decode_sample, draw_augmentation

from ..serving import drawing

BROWSE_SEED = "browse"


@dataclass
class BrowseSummary:
    drawn: list[str] = field(default_factory=list)  # PNG paths
    skipped: list[str] = field(default_factory=list)  # why each unusable sample was skipped


class _ListedSkips(SkipCounter):
    def __init__(self, listed: list[str]):
        super().__init__()
        self.listed = listed

    def skip(self, message: str, samples: int = 1) -> None:
        super().skip(message, samples)
        self.listed.append(message)


def browse(manifest_url: str, out: str, count: int = 16, classes: Optional[list[str]] = None,
           min_sizes: tuple[int, ...] = (800,), max_size: int = 1333, flip_prob: float = 0.5) -> BrowseSummary:
    """The first `count` samples (with one of `classes`, when given) drawn into `out` as PNGs."""
    manifest = load_manifest(manifest_url)
    vocab = manifest.vocab()
    wanted = None
    if classes:
        unknown = [name for name in classes if vocab.label(name) is None]
        if unknown:
            raise ValueError(f"--classes: {', '.join(unknown)} not in the shards' vocabulary")
        wanted = {vocab.label(name) for name in classes}
    source = Source.from_manifest(manifest)
    summary = BrowseSummary()
    skips = _ListedSkips(summary.skipped)
    os.makedirs(out, exist_ok=True)
    order = list(range(len(source.shard_urls)))
    for sample in source_shards(source, slot_assignment(len(order), 0, 1, order), skips):
        if len(summary.drawn) == count:
            break
        key = sample.get("__key__", "?")
        try:
            image, target = decode_sample(sample, vocab, None, train=True)
        except BadSample as exc:
            skips.skip(f"{exc} in shard {sample.get('__url__')}")
            continue
        if wanted and not wanted & set(target["labels"].tolist()):
            continue
        augmentation = draw_augmentation(seeded_rng(BROWSE_SEED, key), list(min_sizes), max_size, flip_prob)
        image, target = augment(image, decode_masks(target, key), augmentation)
        path = os.path.join(out, f"{key.replace('/', '_')}.png")
        write_png(draw_as_trained(image, target, vocab), path)
        summary.drawn.append(path)
    return summary


def draw_as_trained(image: torch.Tensor, target: dict, vocab) -> torch.Tensor:
    """A training target over its augmented image; masks (at source size, as the step keeps them)
    resized onto the image to be drawn."""
    has_mask = target["has_mask"].tolist()
    masks: list = [None] * len(has_mask)
    if "masks" in target:
        resized = F.resize(target["masks"][:, None], list(image.shape[-2:]),
                           interpolation=F.InterpolationMode.NEAREST)[:, 0].bool()
        rows = iter(resized)  # one row per instance with a mask
        masks = [next(rows) if m else None for m in has_mask]
    labels = target["labels"].tolist()
    names = [vocab.name(label) + ("" if mask is not None else " (box only)") for label, mask in zip(labels, masks)]
    colors = [drawing.COLORS["A" if mask is not None else "B"] for mask in masks]
    return drawing.draw_objects(image, target["boxes"], masks, names, colors)
