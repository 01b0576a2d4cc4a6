"""The training path as a Ray Train worker runs it, on one GPU, without Ray: a correctness smoke for
the first minutes of a lent GPU (`make gpu-report` gives the speed figures).

A torch process group of world size 1 (NCCL on a GPU, gloo on a CPU), the model wrapped as the
worker wraps it (`sync_batch_norm`, DDP with `ddp_options`), maskx's real loader over shards made
from the sample, and `train_step` under bf16 autocast, for two models (the first also in fp16 with
a gradient scaler, `solver.amp: fp16`):

1. the COCO R-50-FPN recipe (configs/coco-r50.yaml), trained from scratch with batch norm (no
   ImageNet weights travel to the GPU machine);
2. the VG-3k stage-2 heads (configs/vg3k-masks-r50.yaml): 3001 classes, backbone, RPN and box head
   frozen (random GroupNorm weights standing in for the stage-1 detector), the mask branch trained.

Each checks: every loss finite, the RPN's proposals float32 under autocast; and reports, from the
profiler over the last steps, the host syncs a step makes (`.item()`-style scalar reads, `nonzero`,
stream and device synchronizations) and, on a GPU, how much of a step the GPU sits idle.

    python bench/gpu_train_smoke.py --device cuda        # R-50, 800x1333, batch 2, 60 steps
    python bench/gpu_train_smoke.py --tiny               # R-18, 128 px, 6 steps (on a CPU: the test)

Results print, and with OUT set (the lent machine) go to $OUT/gpu-train-smoke.md too.
"""
from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from gpu_report import DEFAULT_DATA, REPO, device_name, make_dependencies_importable, make_maskx_importable

# Profiler events that make the host wait for the device (on a CPU the same calls, no waiting).
HOST_SYNC_EVENTS = ("aten::_local_scalar_dense", "aten::nonzero", "cudaStreamSynchronize", "cudaDeviceSynchronize",
                    "cudaEventSynchronize")


def process_group(device: torch.device) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(s.getsockname()[1]))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def shards_of_the_sample(data: str, workdir: str):
    from maskx.datasets.prepare import prepare_coco
    from maskx.datasets.stream import load_sources

    prepare_coco(str(Path(data) / "annotations" / "instances_train2017.json"), str(Path(data) / "train2017"),
                 os.path.join(workdir, "shards"), shard_size=10, workers=1, progress=False)
    return load_sources([(os.path.join(workdir, "shards"), 1.0)])


def recipes(args, vocab, workdir: str):
    """(name, TrainConfig, autocast dtype) for each model, sized by --tiny; the COCO recipe also in fp16
    with a gradient scaler (`solver.amp: fp16`, for GPUs without bf16)."""
    from maskx.models.backbone import resnet_fpn_backbone
    from maskx.orchestrator.config import load_config

    sizes = (["model.backbone.name=resnet18", "model.backbone.fpn_channels=64", "model.mask_head.mlp_input=reduced",
              "model.mask_head.conv_channels=64", "model.box_head_dim=128", "model.min_size=128", "model.max_size=160"]
             if args.tiny else ["model.min_size=800", "model.max_size=1333"])
    solver = ["solver.lr=0.01", "solver.warmup_iters=100", "solver.warmup_factor=0.001", "solver.clip_grad_norm=10.0",
              f"data.batch_size={args.batch}"]
    coco = load_config(str(REPO / "configs" / "coco-r50.yaml"),
                       sizes + solver + ["model.backbone.norm=bn", "model.backbone.trainable_layers=5",
                                         "model.backbone.weights=null", f"model.num_classes={vocab.num_classes}"])
    # Stand-in for the stage-1 detector: random GroupNorm backbone weights (a random FrozenBatchNorm
    # backbone is no normalization at all, and its activations blow up in 50 layers).
    backbone = resnet_fpn_backbone("resnet18" if args.tiny else "resnet50", 64 if args.tiny else 256, "gn", 5)
    weights = os.path.join(workdir, "detector-backbone.pth")
    torch.save(backbone.body.state_dict(), weights)
    vg3k = load_config(str(REPO / "configs" / "vg3k-masks-r50.yaml"),
                       sizes + solver + ["model.backbone.norm=gn", f"model.backbone.weights={weights}",
                                         "model.init_from=null", "model.num_classes=3001"])
    vg3k.model.mask_classes = list(range(1, vocab.num_classes))  # the sample's COCO classes: set A
    return [("COCO R-50 recipe", coco, torch.bfloat16), ("VG-3k stage-2 heads, 3001 classes", vg3k, torch.bfloat16),
            ("COCO R-50 recipe, fp16 + GradScaler", coco, torch.float16)]


def smoke(name: str, cfg, sources, vocab, device: torch.device, args, dtype: torch.dtype) -> list[tuple[str, str]]:
    from maskx.datasets.partitions import DataPlan, EpochLayout
    from maskx.datasets.stream import make_loader
    from maskx.datasets.train_stream import TrainStream
    from maskx.models import build_model
    from maskx.orchestrator.training.parallel import ddp_options, sync_batch_norm
    from maskx.orchestrator.training.step import build_lr_scheduler, build_optimizer, train_step

    torch.manual_seed(0)
    model = sync_batch_norm(build_model(cfg.model), device.type, dist.get_world_size()).to(device)
    trained = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                                        **ddp_options(model))
    optimizer = build_optimizer(model, cfg.solver)
    scheduler = build_lr_scheduler(optimizer, cfg.solver)
    proposal_dtypes = set()
    model.rpn.register_forward_hook(lambda m, i, out: proposal_dtypes.update(p.dtype for p in out[0]))
    layout = EpochLayout(DataPlan(global_batch=args.batch, partitions=max(1, args.loader_workers)), world_size=1,
                         batch_size=args.batch)
    stream = TrainStream(sources=sources, vocab=vocab, mask_labels=cfg.model.mask_classes, layout=layout,
                         steps_per_epoch=10**9, min_sizes=(cfg.model.min_size,), max_size=cfg.model.max_size)
    loader = make_loader(stream, args.loader_workers, pin_memory=device.type == "cuda")
    amp = dtype if device.type == "cuda" or args.amp else None
    scaler = torch.amp.GradScaler(device.type) if amp is torch.float16 else None
    profiled = min(5, max(1, args.steps // 3))
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    losses_seen, steps, profiler, wall = [], stream.steps(loader), None, 0.0
    for done in range(args.steps):
        if done == args.steps - profiled:
            profiler = torch.profiler.profile(activities=activities)
            profiler.__enter__()
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        losses = train_step(trained, optimizer, scheduler, next(steps).micro_batches, device, amp,
                            clip_grad_norm=cfg.solver.clip_grad_norm, layout=layout, scaler=scaler)
        losses_seen.append(losses["loss"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / profiled
    profiler.__exit__(None, None, None)
    events = profiler.key_averages()
    syncs = {e.key: e.count / profiled for e in events if e.key in HOST_SYNC_EVENTS}
    finite = all(math.isfinite(loss) for loss in losses_seen)
    rows = [(f"{name}: {args.steps} steps, losses", f"{'all finite' if finite else 'NOT FINITE'}; first "
             f"{losses_seen[0]:.3f}, last {losses_seen[-1]:.3f}"),
            (f"{name}: proposals' dtype under {f'{str(amp)[6:]} autocast' if amp else 'float32'}",
             ", ".join(sorted(str(d)[6:] for d in proposal_dtypes))),
            (f"{name}: host syncs a step (last {profiled})",
             f"{sum(syncs.values()):.0f}: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(syncs.items())))]
    if scaler is not None:
        rows.append((f"{name}: gradient scale after {args.steps} steps", f"{scaler.get_scale():g}"))
    if device.type == "cuda":
        busy = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA) / 1e6 / profiled
        rows.append((f"{name}: GPU idle a step", f"{max(wall - busy, 0.0) * 1000:.0f} ms of {wall * 1000:.0f} ms "
                     f"({max(wall - busy, 0.0) / wall:.0%}; kernel time summed, so overlap counts twice)"))
    else:
        rows.append((f"{name}: s/step (CPU)", f"{wall:.2f}"))
    del trained, model
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tiny", action="store_true", help="R-18, 128 px, 6 steps (always on a CPU)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="COCO sample (default .gpu-data/coco-tiny)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast on a CPU too (always on a GPU)")
    args = parser.parse_args()
    args.tiny = args.tiny or args.device == "cpu"
    args.steps, args.batch, args.loader_workers = (6, 2, 0) if args.tiny else (60, 2, 6)
    if not (Path(args.data) / "train2017").is_dir():
        sys.exit(f"gpu-train-smoke: no sample data in {args.data}: run `make gpu-data`")
    make_dependencies_importable(args.data)
    make_maskx_importable()
    device = torch.device(args.device)
    process_group(device)
    started = time.perf_counter()
    rows = [("setup", f"{device_name(args.device)}; torch {torch.__version__}; {dist.get_backend()} world size 1")]
    failed = False
    with tempfile.TemporaryDirectory(prefix="maskx-gpu-smoke-") as workdir:
        sources, vocab = shards_of_the_sample(args.data, workdir)
        for name, cfg, dtype in recipes(args, vocab, workdir):
            try:
                rows += smoke(name, cfg, sources, vocab, device, args, dtype)
            except Exception as exc:  # noqa: BLE001 - the other recipe still runs; the exit status says it
                import traceback

                traceback.print_exc()
                rows.append((name, f"failed: {type(exc).__name__}: {exc}"))
                failed = True
    dist.destroy_process_group()
    rows.append(("gpu-train-smoke: wall time", f"{time.perf_counter() - started:.0f} s"))
    failed = (failed or any("NOT FINITE" in figure for name, figure in rows if name.endswith("losses"))
              or any(figure != "float32" for name, figure in rows if "proposals' dtype" in name))
    width = max(len(name) for name, _ in rows)
    text = "\n".join(f"{name:{width}}  {figure}" for name, figure in rows)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu-train-smoke.md").write_text(
            "| check | result |\n|---|---|\n" + "".join(f"| {n} | {f} |\n" for n, f in rows))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
