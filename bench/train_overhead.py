"""What evaluation and checkpoints cost a training run: the same tiny config on 2 CPU Ray workers,
three ways, side by side in one run.

- `bare`: no evaluation, no checkpoint but the last;
- `background`: as configured for a real run, an evaluation every `--eval-every` iterations scored
  beside training (`eval_mode: background`, the default), a checkpoint every `--checkpoint-every`
  uploaded by a thread (`checkpoint.upload: async`, the default), MLflow metrics every iteration
  and system metrics;
- `inline`: the same as maskx did before: COCOeval in rank 0 while the others wait
  (`eval_mode: inline`) and the checkpoint uploaded before training goes on (`checkpoint.upload: sync`).

Every iteration's `loss/loss` is logged with its time, and iteration k's gap is the time from its
log to the next one's: the step after it, plus its evaluation and checkpoint when it has them.
Training img/s is measured over the iterations before the last (whose final evaluation and
checkpoint every way has); the stall of an evaluation (or a checkpoint) is its iteration's gap less
the median gap of the iterations with neither. The val set is large next to the model so that
COCOeval has work (100 detections an image).

    python bench/train_overhead.py                     # 60 iterations, 300 val images: ~6 minutes on 2 cores
    python bench/train_overhead.py --iters 10 --eval-every 4 --checkpoint-every 3 --val-images 20   # a quick look
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny-cpu.yaml"
WAYS = ("bare", "background", "inline")


def make_shards(root: Path, val_images: int) -> dict[str, str]:
    from maskx.datasets.prepare import prepare_coco, prepare_vocabulary
    from maskx.datasets.synth import write_synthetic
    from maskx.datasets.vocab import Vocabulary

    raw = write_synthetic(str(root / "raw"), train_images=64, val_images=val_images, vg_images=12, seed=0)
    vocab = str(root / "vocab.json")
    prepare_vocabulary(raw["coco_train_annotations"], raw["vg_objects"]).save(vocab)
    shards = {"num_classes": str(Vocabulary.load(vocab).num_classes)}
    for split in ("train", "val"):
        shards[split] = str(root / f"coco-{split}")
        prepare_coco(raw[f"coco_{split}_annotations"], raw[f"coco_{split}_images"], shards[split], vocab,
                     shard_size=32, workers=1, progress=False)
    return shards


def overrides(way: str, args, shards: dict[str, str], tmp: Path) -> list[str]:
    common = [f"data.train=[{{manifest: {shards['train']}}}]", "data.batch_size=2", "data.loader_workers=1",
              f"solver.max_iter={args.iters}", "solver.warmup_iters=2", "log_every=1",
              f"model.num_classes={shards['num_classes']}", "model.box_score_thresh=0.0", "model.detections_per_img=100",
              f"checkpoint.storage_path={tmp}/runs", f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db",
              "mlflow.registered_model=null", "mlflow.experiment=overhead", f"name={way}"]
    if way == "bare":
        return common + ["data.val=null", f"checkpoint.every={args.iters}", "mlflow.system_metrics_every_s=0"]
    upload = "async" if way == "background" else "sync"
    return common + [f"data.val={shards['val']}", f"eval_every={args.eval_every}", f"eval_mode={way}",
                     f"checkpoint.every={args.checkpoint_every}", f"checkpoint.upload={upload}"]


def measure(way: str, args, shards: dict[str, str], tmp: Path) -> dict:
    import mlflow

    from maskx.orchestrator.config import load_config
    from maskx.orchestrator.training.trainer import train

    started = time.perf_counter()
    result = train(load_config(str(TINY), overrides(way, args, shards, tmp)))
    wall = time.perf_counter() - started
    history = mlflow.MlflowClient(result.tracking_uri).get_metric_history(result.mlflow_run_id, "loss/loss")
    logged = {m.step: m.timestamp / 1000 for m in history}
    gaps = {k: logged[k + 1] - logged[k] for k in range(1, args.iters - 1)}  # iteration k's hooks + step k+1
    evals = {k for k in gaps if way != "bare" and k % args.eval_every == 0}
    checkpoints = {k for k in gaps if way != "bare" and k % args.checkpoint_every == 0}
    plain = statistics.median(g for k, g in gaps.items() if k not in evals | checkpoints)
    images = (args.iters - 2) * 2 * 2  # iterations 2..iters-1, batch 2 on each of 2 workers
    return {"img/s": images / (logged[args.iters - 1] - logged[1]), "step": plain, "wall": wall,
            "eval stall": [gaps[k] - plain for k in sorted(evals - checkpoints)],
            "checkpoint stall": [gaps[k] - plain for k in sorted(checkpoints - evals)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--checkpoint-every", type=int, default=15)  # apart from the evaluations: each stall alone
    parser.add_argument("--val-images", type=int, default=300)
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory(prefix="maskx-overhead-") as folder:
        tmp = Path(folder)
        shards = make_shards(tmp, args.val_images)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            results = {way: measure(way, args, shards, tmp) for way in WAYS}
        finally:
            ray.shutdown()
    bare = results["bare"]["img/s"]
    mean = lambda values: f"{statistics.fmean(values):.2f}" if values else "-"
    print(f"\n{args.iters} iterations, global batch 4 (2 CPU workers x 2 images), {args.val_images} val images, "
          f"eval every {args.eval_every}, checkpoint every {args.checkpoint_every}")
    print("| way | img/s | of bare | median step (s) | stall per eval (s) | stall per checkpoint (s) | run wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for way, r in results.items():
        print(f"| {way} | {r['img/s']:.2f} | {r['img/s'] / bare:.3f} | {r['step']:.3f} | {mean(r['eval stall'])} | "
              f"{mean(r['checkpoint stall'])} | {r['wall']:.0f} |")


if __name__ == "__main__":
    main()
