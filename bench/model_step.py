"""Train-step time and peak memory: maskx's Mask^X R-CNN vs torchvision's Mask R-CNN, side by side.

Both models get the same backbone (ResNet-FPN built by maskx), image size, batch and number of
classes; maskx runs the transfer+mlp mask head with focal loss. Prints the time ratio (goal <= 1.10).

    python bench/model_step.py                      # CPU, R-50-FPN, 2 x 512 px
    python bench/model_step.py --device cuda --size 800 --max-size 1333 --batch 8
"""
from __future__ import annotations

import argparse
import os
import threading
import time

import torch
from torchvision.models.detection import MaskRCNN

from maskx.models import BackboneConfig, MaskHeadConfig, ModelConfig, build_model
from maskx.models.backbone import resnet_fpn_backbone
from maskx.models.mask_x_rcnn import IMAGENET_MEAN, IMAGENET_STD, PreResizedTransform


def synthetic_batch(batch: int, height: int, width: int, num_classes: int, instances: int, device: str):
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for _ in range(batch):
        xy = torch.rand(instances, 2, generator=g) * torch.tensor([width * 0.7, height * 0.7])
        wh = 16 + torch.rand(instances, 2, generator=g) * torch.tensor([width * 0.3, height * 0.3])
        boxes = torch.cat([xy, xy + wh], dim=1)
        masks = torch.zeros(instances, height, width, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
            masks[i, y0:y1, x0:x1] = 1
        targets.append({
            "boxes": boxes.to(device),
            "labels": torch.randint(1, num_classes, (instances,), generator=g).to(device),
            "masks": masks.to(device),
            "has_mask": torch.ones(instances, dtype=torch.bool, device=device),
        })
        images.append(torch.rand(3, height, width, generator=g).to(device))
    return images, targets


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak GPU memory from the CUDA allocator; on CPU, peak RSS above the start, sampled."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = _rss_bytes()
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.running = False
            self.thread.join()
        self.mib = (self.peak - self.base) / 2**20


def torchvision_mask_rcnn(backbone: str, num_classes: int, size: int, max_size: int):
    """torchvision's Mask R-CNN on the same backbone; like maskx's, its transform leaves training
    images at the size the step hands them (the stream resizes them already)."""
    model = MaskRCNN(resnet_fpn_backbone(backbone, 256, "frozen_bn", 3), num_classes=num_classes,
                     min_size=size, max_size=max_size)
    model.transform = PreResizedTransform(size, max_size, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    return model


def time_train_steps(model, images, targets, steps: int, warmup: int, device: str, amp: bool) -> tuple[float, float]:
    model.train().to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
            losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    with PeakMemory(device) as mem:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = (time.perf_counter() - start) / steps
    return elapsed, mem.mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=512, help="image height (shorter side)")
    parser.add_argument("--max-size", type=int, default=683, help="image width")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--num-classes", type=int, nargs="+", default=[81, 3081], help="including background")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"device={args.device} backbone={args.backbone} batch={args.batch} image={args.size}x{args.max_size} "
          f"torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'classes':>8} {'maskx s/step':>13} {'tv s/step':>10} {'ratio':>6} {'maskx MiB':>10} {'tv MiB':>8}")
    for num_classes in args.num_classes:
        images, targets = synthetic_batch(args.batch, args.size, args.max_size, num_classes, args.instances, args.device)
        cfg = ModelConfig(
            num_classes=num_classes, min_size=args.size, max_size=args.max_size,
            backbone=BackboneConfig(name=args.backbone, trainable_layers=3),
            mask_head=MaskHeadConfig(mode="transfer+mlp"),
        )
        cfg.box_loss.kind = "focal"
        maskx = build_model(cfg)
        torchvision_model = torchvision_mask_rcnn(args.backbone, num_classes, args.size, args.max_size)
        ours, ours_mem = time_train_steps(maskx, images, targets, args.steps, args.warmup, args.device, args.amp)
        theirs, theirs_mem = time_train_steps(torchvision_model, images, targets, args.steps, args.warmup, args.device, args.amp)
        print(f"{num_classes:>8} {ours:>13.3f} {theirs:>10.3f} {ours / theirs:>6.2f} {ours_mem:>10.0f} {theirs_mem:>8.0f}")
        del maskx, torchvision_model
        if args.device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
