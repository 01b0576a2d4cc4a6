"""Which anchors (RPN) and RoIs (box head) a training image contributes, drawn from the image's own
seed when it carries one: the same samples for an image whatever batch, rank or step order it lands
in, so an elastic run trains on what the unbroken run trained on, sample for sample.

torchvision's `BalancedPositiveNegativeSampler` draws from the global RNG, which runs differently on
every rank; this is its algorithm with a generator per image (copied: its call takes no seeds).
"""
from __future__ import annotations

from typing import Optional

import torch

# Offsets of an image's seed for each sampler, so the RPN and the box head draw different streams.
RPN_STREAM = 0
ROI_STREAM = 1
SEED_BITS = 63


def sampling_seeds(targets: Optional[list[dict]], stream: int) -> Optional[list[int]]:
    """Each target's `sampling_seed` (set by the training stream) for one sampler, or None when an
    image has none (then the global RNG draws, as torchvision's)."""
    if not targets or any("sampling_seed" not in t for t in targets):
        return None
    return [(int(t["sampling_seed"]) + stream) % 2**SEED_BITS for t in targets]


class SeededSampler:
    """Per image: at most `batch_size_per_image` samples, a `positive_fraction` of them positive."""

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.seeds: Optional[list[int]] = None  # of the images of the current call; set by its module

    def __call__(self, matched_idxs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """matched_idxs per image: -1 ignored, 0 negative, > 0 positive -> (positive, negative) masks."""
        seeds = self.seeds if self.seeds is not None and len(self.seeds) == len(matched_idxs) else [None] * len(matched_idxs)
        pos_idx, neg_idx = [], []
        for matched, seed in zip(matched_idxs, seeds):
            positive = torch.where(matched >= 1)[0]
            negative = torch.where(matched == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            generator = None if seed is None else torch.Generator(device=matched.device).manual_seed(seed)
            perm1 = torch.randperm(positive.numel(), device=positive.device, generator=generator)[:num_pos]
            perm2 = torch.randperm(negative.numel(), device=negative.device, generator=generator)[:num_neg]
            pos_mask = torch.zeros_like(matched, dtype=torch.uint8)
            neg_mask = torch.zeros_like(matched, dtype=torch.uint8)
            pos_mask[positive[perm1]] = 1
            neg_mask[negative[perm2]] = 1
            pos_idx.append(pos_mask)
            neg_idx.append(neg_mask)
        return pos_idx, neg_idx
