"""Images per second of `maskx predict --ray` next to the single process `maskx predict`, on the
same images, in one run, on this machine's CPUs.

The model: configs/tiny-cpu.yaml's (R-18-FPN, untrained, COCO's 80 classes) keeping every detection
(box_score_thresh 0: 100 boxes and masks an image, COCO evaluation's worst case). The images:
../shared/data/coco-tiny/val2017 (50 real COCO photos), repeated `--repeat` times. The single
process runs with torch's default threads; Ray starts locally with every CPU, one CPU per actor.

What one GPU actor per GPU reaches is the single-replica inference row of `make gpu-report`
(bench/gpu_report.py, "inference ... img/s"): an actor runs the same forward pass, and on a GPU the
CPU tasks that decode and resize run beside it instead of in front of it.

    python bench/ray_predict.py                      # 50 images x 2: single vs Ray, 1 actor and CPUs - 1
    python bench/ray_predict.py --repeat 1 --actors 1
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COCO_TINY_VAL = REPO.parent / "shared" / "data" / "coco-tiny" / "val2017"
TINY = REPO / "configs" / "tiny-cpu.yaml"


def untrained_checkpoint(folder: str) -> str:
    from maskx.datasets.vocab import COCO_CATEGORIES, build_vocabulary
    from maskx.orchestrator.config import load_config
    from maskx.orchestrator.training.model_checkpoint import write_model_checkpoint

    vocab = build_vocabulary(COCO_CATEGORIES)
    cfg = load_config(str(TINY), [f"model.num_classes={vocab.num_classes}", "model.box_score_thresh=0.0"])
    return write_model_checkpoint(folder, cfg, vocab)


def image_folder(folder: str, repeat: int, limit: int) -> int:
    os.makedirs(folder)
    count = 0
    for copy in range(repeat):
        for path in sorted(COCO_TINY_VAL.glob("*.jpg"))[:limit]:
            shutil.copy(path, os.path.join(folder, f"{copy}{path.name}"))
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="copies of coco-tiny's 50 val images (default 2)")
    parser.add_argument("--actors", type=int, nargs="+",
                        help="Ray actor counts to run (default: 1, and as many as leave one CPU to decode with)")
    parser.add_argument("--limit", type=int, default=50, help="of coco-tiny's val images, the first N (default all 50)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=8)
    args = parser.parse_args()
    args.actors = args.actors or sorted({1, max(1, (os.cpu_count() or 2) - 1)})
    if not COCO_TINY_VAL.is_dir():
        sys.exit(f"no {COCO_TINY_VAL}: the benchmark reads the real coco-tiny sample")
    import ray

    from maskx.orchestrator.serving import predictions
    from maskx.orchestrator.serving.inference import load_model, model_weights
    from maskx.orchestrator.serving.ray_predictions import predict_on_ray

    work = tempfile.mkdtemp(prefix="maskx-bench-ray-predict-")
    try:
        model = untrained_checkpoint(os.path.join(work, "model"))
        count = image_folder(os.path.join(work, "images"), args.repeat, args.limit)
        start = time.perf_counter()
        predictions.predict_images(load_model(model), os.path.join(work, "images"), os.path.join(work, "one"),
                                   args.batch_size, progress=False)
        single = count / (time.perf_counter() - start)
        rows = [("single process (maskx predict)", single)]
        ray.init(include_dashboard=False, log_to_driver=False)
        for actors in args.actors:
            # Wall time of the whole job as a user sees it: actors start, weights load, blocks written.
            start = time.perf_counter()
            predict_on_ray(model, model_weights(model), os.path.join(work, f"ray-{actors}"),
                           images=os.path.join(work, "images"), batch_size=args.batch_size,
                           block_size=args.block_size, actors=(actors, actors))
            rows.append((f"--ray, {actors} actor{'s' if actors > 1 else ''} (1 CPU each)",
                         count / (time.perf_counter() - start)))
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{count} images (coco-tiny val, {min(args.limit, 50)} x {args.repeat}), tiny-cpu model, 100 detections an image, "
          f"batch {args.batch_size}, block {args.block_size}, {os.cpu_count()} CPUs")
    print(f"{'':45s} {'img/s':>7s} {'vs single':>10s}")
    for name, rate in rows:
        print(f"{name:45s} {rate:7.2f} {rate / single:9.2f}x")


if __name__ == "__main__":
    main()
