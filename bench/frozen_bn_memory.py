"""What the backbone keeps for backward under bf16 autocast: maskx's FrozenBatchNorm (computed in its
input's dtype) vs torchvision's (float32 statistics, so every one returned float32), side by side on
the same R-50-FPN, the same images, one process.

The figure is the bytes of the tensors autograd saves in one forward (counted by a saved-tensors
hook, each storage once), which is what a step holds at its peak; on CUDA the allocator's peak too.

    python bench/frozen_bn_memory.py                        # CPU autocast, 2 x 512x683
    python bench/frozen_bn_memory.py --device cuda --size 800 --max-size 1333 --batch 8
"""
from __future__ import annotations

import argparse
import time

import torch
from torchvision.ops import FrozenBatchNorm2d

from maskx.models.backbone import DtypeKeepingFrozenBatchNorm2d, resnet_fpn_backbone


def with_torchvision_frozen_bn(backbone: torch.nn.Module) -> torch.nn.Module:
    """The same backbone with each of maskx's FrozenBatchNorm layers replaced by torchvision's, same buffers."""
    for name, module in list(backbone.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, DtypeKeepingFrozenBatchNorm2d):
                theirs = FrozenBatchNorm2d(child.weight.numel(), eps=child.eps).to(child.weight.device)
                theirs.load_state_dict(child.state_dict())
                setattr(module, child_name, theirs)
    return backbone


def saved_bytes_and_seconds(backbone, images: torch.Tensor, device: str) -> tuple[int, float, float, torch.dtype]:
    """Bytes autograd saves in one forward, seconds for forward + backward, CUDA peak MiB, res2's output dtype."""
    seen, total = set(), [0]

    def pack(tensor):
        key = (tensor.untyped_storage().data_ptr(), tensor.dtype)
        if key not in seen:
            seen.add(key)
            total[0] += tensor.untyped_storage().nbytes()
        return tensor

    res2 = []
    hook = backbone.body.layer1.register_forward_hook(lambda module, inputs, output: res2.append(output.dtype))
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if device == "cuda" else 0
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast(device, dtype=torch.bfloat16):
            features = backbone(images)
    hook.remove()
    sum(f.float().mean() for f in features.values()).backward()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" else float("nan")
    return total[0], seconds, peak, res2[0]


def rows(device: str, backbone_name: str, batch: int, height: int, width: int) -> list[tuple[str, str]]:
    torch.manual_seed(0)
    images = torch.rand(batch, 3, height, width, device=device)
    figures = {}
    for name in ("maskx", "torchvision"):
        torch.manual_seed(0)
        backbone = resnet_fpn_backbone(backbone_name, 256, "frozen_bn", 3).to(device).train()
        if name == "torchvision":
            backbone = with_torchvision_frozen_bn(backbone)
        saved_bytes_and_seconds(backbone, images, device)  # warm-up
        runs = [saved_bytes_and_seconds(backbone, images, device) for _ in range(3)]
        figures[name] = min(runs, key=lambda run: run[1])  # the fastest of 3: the least disturbed
        del backbone
    (ours, ours_s, ours_peak, ours_dtype), (theirs, theirs_s, theirs_peak, theirs_dtype) = figures["maskx"], figures["torchvision"]
    peak = f"; CUDA peak {ours_peak:.0f} / {theirs_peak:.0f} MiB" if device == "cuda" else ""
    return [(f"backbone under bf16 autocast, FrozenBN maskx / torchvision ({backbone_name}, {batch} x {height}x{width})",
             f"saved for backward {ours / 2**20:.0f} / {theirs / 2**20:.0f} MiB (ratio {ours / theirs:.2f}){peak}; "
             f"fwd+bwd {ours_s:.3f} / {theirs_s:.3f} s; res2 output {str(ours_dtype)[6:]} / {str(theirs_dtype)[6:]}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=512, help="image height")
    parser.add_argument("--max-size", type=int, default=683, help="image width")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()}")
    for name, figure in rows(args.device, args.backbone, args.batch, args.size, args.max_size):
        print(f"{name}  {figure}")


if __name__ == "__main__":
    main()
