"""`make gpu-report`: the figures maskx needs from a lent GPU, from one command, with no edit.

Runs where only the repository arrives and Ray and MLflow are absent: the machine's torch and
torchvision, maskx from this checkout (an installed maskx elsewhere is refused), and the wheels of
maskx's data and config code (webdataset, pycocotools, ijson, pydantic) for the image's Python,
which `make gpu-data` puts in .gpu-data/wheels beside the sample (git ignores .gpu-data/; ~21 MB
with ../shared/data/coco-tiny, under the 64 MiB that travels). Five parts, side by side in one process:

1. model train step, maskx vs torchvision Mask R-CNN on the same batch (bench/model_step.py):
   s/iter, img/s, peak memory, at 81 and 3081 classes;
2. inference on a batch, maskx vs torchvision, 100 detections an image with their masks pasted;
3. a single-process training loop over real shards built from the sample (the backbone trained
   from scratch with batch norm: no ImageNet weights travel there): end-to-end img/s, the
   time a step waits for the loader, GPU utilization when nvidia-smi answers;
4. the data path: JPEG decode and resize to training size on the device vs on the CPU;
5. what the backbone saves for backward under bf16 autocast with maskx's FrozenBatchNorm vs
   torchvision's (bench/frozen_bn_memory.py).

    python bench/gpu_report.py --device cuda --write     # R-50-FPN, 1333x800, batch 8, bf16
    python bench/gpu_report.py --tiny                    # tiny sizes (always on a CPU): what the test runs

`--write` adds the table, date, device and command to $OUT/gpu-report.md on the lent machine (what
comes back from it), to docs/benchmarks.md elsewhere, or to `--out`. Each part prints its wall time:
the whole report must fit the lent minutes (under 5).
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms.v2 import functional as F

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".gpu-data" / "coco-tiny"


def make_dependencies_importable(data: str) -> None:
    """maskx's data and config code needs webdataset, pycocotools, ijson and pydantic, which the GPU
    image lacks and cannot download: `make gpu-data` puts their wheels (for the image's Python) in
    .gpu-data/wheels, installed here into a scratch folder on sys.path."""
    import importlib.util

    wheels = sorted(Path(data).parent.glob("wheels/*.whl"))
    if not wheels or all(importlib.util.find_spec(name) for name in ("webdataset", "pycocotools", "ijson", "pydantic")):
        return
    target = tempfile.mkdtemp(prefix="maskx-gpu-site-")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", target, *map(str, wheels)], check=True)
    sys.path.insert(0, target)


def make_maskx_importable() -> None:
    """The GPU machine receives the repository, not an installed maskx: lay out `maskx.*` as links to
    the folders (what the package-dir mapping in pyproject.toml installs) and put it on sys.path. A
    maskx installed from anywhere else is refused: its figures would be another code's."""
    from importlib.util import find_spec

    if find_spec("maskx") is not None and find_spec("maskx.models") is not None:
        found = Path(find_spec("maskx.models").origin).resolve().parent
        if found != (REPO / "models").resolve():
            sys.exit(f"gpu-report: the maskx Python imports is {found.parent}, not this checkout ({REPO}): its "
                     "figures would not be this code's. Run it where that maskx is not installed, or pip install -e .")
        return
    root = Path(tempfile.mkdtemp(prefix="maskx-import-"))
    (root / "maskx").mkdir()
    for package in ("models", "datasets", "orchestrator", "configs"):
        (root / "maskx" / package).symlink_to(REPO / package)
    sys.path.insert(0, str(root))


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores)"


def maskx_config(args, num_classes: int, **model_args):
    """maskx's model as compared with torchvision's: the same backbone (stem and res2 frozen), the
    transfer+mlp mask head."""
    from maskx.models import BackboneConfig, MaskHeadConfig, ModelConfig

    return ModelConfig(num_classes=num_classes, min_size=args.size, max_size=args.max_size,
                       backbone=BackboneConfig(name=args.backbone, trainable_layers=3),
                       mask_head=MaskHeadConfig(mode="transfer+mlp", mlp_input=args.mlp_input), **model_args)


def model_step_rows(args) -> list[tuple[str, str]]:
    from model_step import synthetic_batch, time_train_steps, torchvision_mask_rcnn  # bench/ is the script's folder

    from maskx.models import build_model

    rows = []
    for num_classes in args.num_classes:
        images, targets = synthetic_batch(args.batch, args.size, args.max_size, num_classes, 8, args.device)
        cfg = maskx_config(args, num_classes)
        cfg.box_loss.kind = "focal"
        maskx = build_model(cfg)
        torchvision_model = torchvision_mask_rcnn(args.backbone, num_classes, args.size, args.max_size)
        ours, ours_mib = time_train_steps(maskx, images, targets, args.steps, args.warmup, args.device, args.amp)
        theirs, theirs_mib = time_train_steps(torchvision_model, images, targets, args.steps, args.warmup, args.device,
                                              args.amp)
        rows.append((f"model step, {num_classes} classes: maskx / torchvision s/iter",
                     f"{ours:.3f} / {theirs:.3f} (ratio {ours / theirs:.2f}); {args.batch / ours:.1f} / "
                     f"{args.batch / theirs:.1f} img/s; peak {ours_mib:.0f} / {theirs_mib:.0f} MiB"))
        del maskx, torchvision_model
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return rows


def inference_rows(args) -> list[tuple[str, str]]:
    """Inference on a batch, maskx vs torchvision, every image with 100 detections (score threshold 0,
    the worst case: COCO evaluation's 100) and their masks pasted at image size: what one model
    replica on one device serves (the figure batch inference at scale is planned from). In float32,
    as maskx predict, eval and serving run (docs/training.md: no autocast at inference)."""
    from model_step import PeakMemory, synthetic_batch, torchvision_mask_rcnn

    from maskx.models import build_model

    rows = []
    for num_classes in args.num_classes:
        images, _ = synthetic_batch(args.batch, args.size, args.max_size, num_classes, 1, args.device)
        cfg = maskx_config(args, num_classes, box_score_thresh=0.0, detections_per_img=100)
        theirs = torchvision_mask_rcnn(args.backbone, num_classes, args.size, args.max_size)
        theirs.roi_heads.score_thresh = 0.0
        timed = {}
        for name, model in (("maskx", build_model(cfg)), ("torchvision", theirs)):
            model.eval().to(args.device)
            # At 3081 classes and threshold 0 one batch takes seconds (docs/benchmarks.md): few repeats.
            warmup, steps = min(args.warmup, 1), min(args.steps, 3)
            with torch.no_grad():
                for _ in range(warmup):
                    model(images)
                with PeakMemory(args.device) as memory:
                    start = time.perf_counter()
                    for _ in range(steps):
                        detections = model(images)
                    if args.device == "cuda":
                        torch.cuda.synchronize()
                    seconds = (time.perf_counter() - start) / steps
            timed[name] = (seconds, memory.mib, sum(len(d["boxes"]) for d in detections) / len(detections))
            del model
            if args.device == "cuda":
                torch.cuda.empty_cache()
        (ours, ours_mib, ours_dets), (tv, tv_mib, tv_dets) = timed["maskx"], timed["torchvision"]
        rows.append((f"inference (fp32), {num_classes} classes: maskx / torchvision s/batch",
                     f"{ours:.3f} / {tv:.3f} (ratio {ours / tv:.2f}); {args.batch / ours:.1f} / {args.batch / tv:.1f} img/s; "
                     f"{ours_dets:.0f} / {tv_dets:.0f} detections per image; peak {ours_mib:.0f} / {tv_mib:.0f} MiB"))
    return rows


def gpu_utilization() -> str:
    try:
        shown = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, timeout=10)
        return f"{shown.stdout.split()[0]}%" if shown.returncode == 0 and shown.stdout.strip() else "n/a"
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"


def training_loop_rows(args, workdir: str) -> list[tuple[str, str]]:
    name = "training loop over shards of the sample"
    try:
        return _training_loop_rows(args, workdir)
    except ImportError as exc:  # maskx's data code needs webdataset, pycocotools, ijson, pydantic
        return [(name, f"skipped: {exc} (install maskx's dependencies there: pip install -c constraints.txt .)")]


def _training_loop_rows(args, workdir: str) -> list[tuple[str, str]]:
    from maskx.datasets.prepare import prepare_coco
    from maskx.datasets.partitions import DataPlan, EpochLayout
    from maskx.datasets.stream import load_sources, make_loader
    from maskx.datasets.train_stream import TrainStream
    from maskx.models import BackboneConfig, MaskHeadConfig, ModelConfig, build_model
    from maskx.orchestrator.config import SolverConfig
    from maskx.orchestrator.training.step import build_lr_scheduler, build_optimizer, train_step

    annotations = Path(args.data) / "annotations" / "instances_train2017.json"
    prepare_coco(str(annotations), str(Path(args.data) / "train2017"), os.path.join(workdir, "shards"), shard_size=10,
                 workers=1, progress=False)
    sources, vocab = load_sources([(os.path.join(workdir, "shards"), 1.0)])
    device = torch.device(args.device)
    # No ImageNet weights travel to the GPU machine: the backbone trains from scratch, all of it, with
    # batch norm (the paper's frozen BN and frozen stem at random values diverge to NaN within a few
    # iterations, seen on the H200 on 2026-11-30), under a long warm-up and clipped gradients.
    backbone = BackboneConfig(name=args.backbone, norm="bn", trainable_layers=5)
    model = build_model(ModelConfig(num_classes=vocab.num_classes, min_size=args.size, max_size=args.max_size,
                                    backbone=backbone, mask_head=MaskHeadConfig(mlp_input=args.mlp_input))).to(device)
    solver = SolverConfig(lr=0.01, warmup_iters=100, warmup_factor=0.001, steps=[10**9], clip_grad_norm=10.0)
    optimizer = build_optimizer(model, solver)
    scheduler = build_lr_scheduler(optimizer, solver)
    partitions = max(1, args.loader_workers)
    layout = EpochLayout(DataPlan(global_batch=args.batch, partitions=partitions), world_size=1, batch_size=args.batch)
    stream = TrainStream(sources=sources, vocab=vocab, mask_labels=None, layout=layout, steps_per_epoch=10**9,
                         min_sizes=(args.size,), max_size=args.max_size)
    loader = make_loader(stream, args.loader_workers, pin_memory=args.device == "cuda")
    waited, done, images, losses = 0.0, 0, 0, {}
    utilization = "n/a"
    batches = stream.steps(loader)
    start = time.perf_counter()
    while done < args.iterations:
        before = time.perf_counter()
        batch = next(batches)
        if done >= args.warmup:  # the first steps (cuDNN autotuning, loader start-up) are not counted
            waited += time.perf_counter() - before
        losses = train_step(model, optimizer, scheduler, batch.micro_batches, device, torch.bfloat16 if args.amp else None,
                            clip_grad_norm=solver.clip_grad_norm)
        done += 1
        if done == args.warmup:
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        elif done > args.warmup:
            images += batch.images
        if done == args.iterations // 2 and args.device == "cuda":
            utilization = gpu_utilization()
    if args.device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    timed = args.iterations - args.warmup
    return [(f"training loop, {timed} iterations over shards of the sample ({args.loader_workers} loader workers)",
             f"{images / elapsed:.1f} img/s end to end; {elapsed / timed:.3f} s/iter of which {waited / timed:.3f} s "
             f"waiting for data; GPU utilization {utilization}; last loss {losses['loss']:.3f}")]


def data_path_rows(args) -> list[tuple[str, str]]:
    paths = sorted((Path(args.data) / "train2017").glob("*.jpg"))[: args.decode_images]
    payloads = [read_file(str(p)) for p in paths]
    rows = []
    for where in ["cpu"] + (["cuda"] if args.device == "cuda" else []):
        def one_pass():
            for payload in payloads:
                image = decode_jpeg(payload, mode=ImageReadMode.RGB, device=where)
                F.resize(image, [args.size], max_size=args.max_size, antialias=True)
            if where == "cuda":
                torch.cuda.synchronize()

        one_pass()  # warm-up: nvjpeg and kernels load on first use
        start = time.perf_counter()
        one_pass()
        rows.append((f"JPEG decode + resize to {args.size} px on {where}", f"{len(payloads) / (time.perf_counter() - start):.1f} img/s"))
    return rows


def frozen_bn_rows(args) -> list[tuple[str, str]]:
    from frozen_bn_memory import rows  # bench/ is the script's folder

    return rows(args.device, args.backbone, args.batch, args.size, args.max_size)


def measured(part: str, measure, *args) -> list[tuple[str, str]]:
    """One part's rows and its wall time, printed as they come; a part that fails gives a row saying
    why and the others still run (a lent GPU is minutes of one session: one failure must not lose the
    other figures)."""
    start = time.perf_counter()
    try:
        rows = measure(*args)
    except Exception as exc:  # noqa: BLE001 - reported in the table, with the traceback above it
        traceback.print_exc()
        rows = [(part, f"failed: {type(exc).__name__}: {exc}")]
    rows.append((f"{part}: wall time of the part", f"{time.perf_counter() - start:.0f} s"))
    for name, figure in rows:
        print(f"{name}  {figure}", flush=True)
    return rows


def report_file(out: str) -> Path:
    """Where --write puts the table: --out, else the lent machine's $OUT (what comes back from it: a
    docs/ written there is lost), else docs/benchmarks.md."""
    if out:
        return Path(out)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu-report.md"
    return REPO / "docs" / "benchmarks.md"


def write_rows(rows: list[tuple[str, str]], device: str, command: str, path: Path) -> None:
    date = datetime.date.today().isoformat()
    lines = [f"\n### {date}, {device_name(device)}, torch {torch.__version__}\n", f"`{command}`\n\n",
             "| measure | figure |\n", "|---|---|\n"] + [f"| {name} | {figure} |\n" for name, figure in rows]
    with open(path, "a") as f:
        f.writelines(lines)
    print(f"table written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tiny", action="store_true", help="R-18, 128 px, batch 2, a few iterations (always on a CPU)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="COCO sample: annotations/ and train2017/ (default .gpu-data/coco-tiny)")
    parser.add_argument("--write", action="store_true", help="add the table, date, device and command to --out")
    parser.add_argument("--out", default="", help="the file --write appends to (default $OUT/gpu-report.md where OUT "
                                                  "is set, as on the lent machine; else docs/benchmarks.md)")
    args = parser.parse_args()
    args.tiny = args.tiny or args.device == "cpu"  # the full sizes take hours on a CPU
    # Tiny: every part's code path in seconds (CI runs it), with the CPU configs' reduced MLP input
    # (the official one's first layer alone holds 157M weights).
    sizes = dict(backbone="resnet18", size=128, max_size=160, batch=2, num_classes=[11], steps=1, warmup=0,
                 iterations=3, loader_workers=0, decode_images=4, amp=False, mlp_input="reduced") if args.tiny else \
        dict(backbone="resnet50", size=800, max_size=1333, batch=8, num_classes=[81, 3081], steps=10, warmup=3,
             iterations=200, loader_workers=6, decode_images=50, amp=args.device == "cuda", mlp_input="upsampled")
    for key, value in sizes.items():
        setattr(args, key, value)
    if not (Path(args.data) / "train2017").is_dir():
        sys.exit(f"gpu-report: no sample data in {args.data}: run `make gpu-data` (copies ../shared/data/coco-tiny there)")
    make_dependencies_importable(args.data)
    make_maskx_importable()
    started = time.perf_counter()
    torch.manual_seed(0)
    rows = [("setup", f"{device_name(args.device)}; {args.backbone}-FPN, {args.max_size}x{args.size}, batch "
                      f"{args.batch}, {'bf16 autocast' if args.amp else 'fp32'}")]
    print(f"{rows[0][0]}  {rows[0][1]}", flush=True)
    rows += measured("model step", model_step_rows, args)
    rows += measured("inference", inference_rows, args)
    with tempfile.TemporaryDirectory(prefix="maskx-gpu-report-") as workdir:
        rows += measured("training loop", training_loop_rows, args, workdir)
    rows += measured("data path", data_path_rows, args)
    rows += measured("frozen BN memory", frozen_bn_rows, args)
    rows.append(("gpu-report: wall time", f"{time.perf_counter() - started:.0f} s (the lent GPU's minutes: keep it under 300)"))
    width = max(len(name) for name, _ in rows)
    for name, figure in rows:
        print(f"{name:{width}}  {figure}")
    destination = report_file(args.out)
    if args.write and args.tiny and destination == REPO / "docs" / "benchmarks.md":
        print("tiny mode: nothing written to docs/benchmarks.md")
    elif args.write:
        write_rows(rows, args.device, "python bench/gpu_report.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                   destination)


if __name__ == "__main__":
    main()
