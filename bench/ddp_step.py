"""DDP step time with and without `find_unused_parameters`, 2 gloo workers on this machine, side by side.

maskx wraps the model with `find_unused_parameters=False` (every parameter takes part in every step,
VG batches without masks included); the search for unused parameters walks the autograd graph after
every backward. Both settings train on the same batches from the same weights: a COCO batch (masks)
and a VG batch (boxes only) in turn, so a parameter left out of a mask-less step would fail the
False run at once. Prints s/step for each and the ratio.

    python bench/ddp_step.py                         # R-18-FPN, 2 x 2 images of 192x256, CPU
    python bench/ddp_step.py --backbone resnet50 --size 512 --max-size 683
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_step import synthetic_batch  # noqa: E402

from maskx.models import BackboneConfig, MaskHeadConfig, ModelConfig, build_model  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batches(args, rank: int):
    """A COCO-like batch with masks and a VG-like one without, per rank."""
    images, targets = synthetic_batch(args.batch, args.size, args.max_size, args.num_classes, args.instances, "cpu")
    torch.manual_seed(rank)
    images = [image.roll(rank * 7, dims=-1) for image in images]
    boxes_only = [{"boxes": t["boxes"], "labels": t["labels"], "has_mask": torch.zeros_like(t["has_mask"])} for t in targets]
    return [(images, targets), (images, boxes_only)]


def worker(rank: int, args, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    cfg = ModelConfig(num_classes=args.num_classes, min_size=args.size, max_size=args.max_size,
                      backbone=BackboneConfig(name=args.backbone, fpn_channels=64, trainable_layers=5),
                      mask_head=MaskHeadConfig(mode="transfer+mlp"))
    work = batches(args, rank)
    for find_unused in (False, True):
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(build_model(cfg), find_unused_parameters=find_unused)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                dist.barrier()
                start = time.perf_counter()
            images, targets = work[step % 2]
            loss = sum(model(images, targets).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        dist.barrier()
        if rank == 0:
            results[find_unused] = ((time.perf_counter() - start) / args.steps, float(loss))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=192, help="image height")
    parser.add_argument("--max-size", type=int, default=256, help="image width")
    parser.add_argument("--batch", type=int, default=2, help="images per worker")
    parser.add_argument("--instances", type=int, default=6)
    parser.add_argument("--num-classes", type=int, default=81)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    args = parser.parse_args()
    results = mp.Manager().dict()
    mp.spawn(worker, args=(args, free_port(), results), nprocs=2, join=True)
    off, on = results[False], results[True]
    print(f"2 gloo workers, {args.backbone}-FPN, {args.batch} images of {args.size}x{args.max_size} each, "
          f"{args.threads} thread(s) each, COCO and VG batches in turn, torch {torch.__version__}")
    print(f"find_unused_parameters=False: {off[0]:.3f} s/step (last loss {off[1]:.4f})")
    print(f"find_unused_parameters=True:  {on[0]:.3f} s/step (last loss {on[1]:.4f})")
    print(f"ratio False/True: {off[0] / on[0]:.2f}")


if __name__ == "__main__":
    main()
