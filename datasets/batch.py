"""A batch as the streams ship it, and the last stage of every sample: on the device.

The loader ships uint8 images at their source size, each training image's augmentation drawn
but not applied, and set-A masks decoded to uint8 at the source size (the loader workers decode
them, off the training thread; pinned with the images on a GPU). `Batch.to_device` finishes them
where the step runs: float [0, 1] images, each image resized and flipped with its boxes and masks.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch

from .partitions import PartitionPosition
from .transforms import Augmentation, augment, decode_masks

UINT8_MAX = 255


@dataclass
class Batch:
    images: list[torch.Tensor]  # (3, H, W) uint8 each, at the source size
    targets: list[dict]  # boxes in the source image's pixels
    keys: list[str]
    augmentations: Optional[list[Augmentation]] = None  # training: what the step does to each image
    indices: list[int] = field(default_factory=list)  # training: each sample's place in the epoch
    partitions: dict[int, PartitionPosition] = field(default_factory=dict)  # training: after this batch
    skipped: int = 0  # evaluation: samples skipped so far by this loader worker

    def __len__(self) -> int:
        return len(self.images)

    def pin_memory(self) -> "Batch":
        self.images = [im.pin_memory() for im in self.images]
        self.targets = [{**t, "masks": t["masks"].pin_memory()} if "masks" in t else t for t in self.targets]
        return self

    def images_with_masks(self, is_set_a: Optional[torch.Tensor] = None) -> int:
        """How many images hold an instance whose mask trains the mask head (has_mask, and its label
        in `is_set_a`, a bool per label). Counted on the host, before the batch reaches the device."""
        count = 0
        for target in self.masks_decoded().targets:
            if "masks" not in target or not target["labels"].numel():
                continue
            usable = target.get("has_mask", torch.ones_like(target["labels"], dtype=torch.bool)).bool()
            if is_set_a is not None:
                usable = usable & is_set_a[target["labels"]]
            count += int(usable.any())
        return count

    def masks_decoded(self) -> "Batch":
        """This batch with every target's mask RLEs decoded (`transforms.decode_masks`). The training
        stream decodes in its loader workers, so a step receives masks ready to copy; a batch built
        elsewhere (tests, tools) is decoded here, on the host."""
        if not any("mask_rles" in t for t in self.targets):
            return self
        keys = self.keys or ["?"] * len(self.targets)
        return dataclasses.replace(self, targets=[decode_masks(t, k) for t, k in zip(self.targets, keys)])

    @classmethod
    def blank(cls, augmentation: Augmentation) -> "Batch":
        """One black image with no objects: the pass a rank with no sample in a micro-batch runs (at
        loss weight 0) so that its gradient all-reduce still meets the other ranks'."""
        side = augmentation.min_size
        target = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64),
                  "has_mask": torch.zeros(0, dtype=torch.bool)}
        return cls([torch.zeros((3, side, side), dtype=torch.uint8)], [target], [], [augmentation])

    def to_device(self, device: torch.device) -> tuple[list[torch.Tensor], list[dict]]:
        """The model's inputs: images as float [0, 1] on the device, each training image then resized
        and flipped there; the masks (compact: instances with a mask only; decoded from their RLEs
        first where the loader did not) sent along."""
        images = [image.to(device, non_blocking=True).float().div_(UINT8_MAX) for image in self.images]
        targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in target.items()}
                   for target in self.masks_decoded().targets]
        if self.augmentations:
            augmented = [augment(image, target, a) for image, target, a in zip(images, targets, self.augmentations)]
            images, targets = [image for image, _ in augmented], [target for _, target in augmented]
        return images, targets
