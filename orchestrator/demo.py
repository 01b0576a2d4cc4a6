"""`maskx demo`: the embedded default, end to end on one machine with nothing running.

Synthetic COCO + VG in their real file formats -> shards -> a local Ray instance -> the tiny config
trained with 2 workers -> COCO evaluation (set A / set B) -> the model logged and registered in the
local MLflow store -> an overlay PNG.
"""
from __future__ import annotations

import os
from typing import Optional

from maskx.datasets.shard_format import load_manifest
from maskx.datasets.synth import write_synthetic_shards

from .config import load_config, packaged_config
from .reporting.data_figures import write_classes_figure
from .serving.drawing import write_overlay
from .serving.inference import load_model
from .training.trainer import train

DEFAULT_CONFIG = "tiny-cpu.yaml"


def prepare_demo_data(out: str) -> dict:
    """The synthetic data and its shards under `out` (rewritten on every run: a few seconds)."""
    paths = write_synthetic_shards(out, train_images=300, val_images=60, vg_images=200, seed=0)
    for name in ("coco_train_shards", "vg_shards", "coco_val_shards"):
        write_classes_figure(load_manifest(paths[name]))  # as `maskx prepare` does
    paths["val_image"] = os.path.join(paths["coco_val_images"], sorted(os.listdir(paths["coco_val_images"]))[0])
    return paths


def run_demo(out: str = "demo-out", config: Optional[str] = None, overrides: list[str] = ()) -> int:
    shards = os.path.join(out, "shards")
    where = [f"data.train=[{{manifest: {shards}/coco-train, weight: 1.0}}, {{manifest: {shards}/vg, weight: 0.5}}]",
             f"data.val={shards}/coco-val", f"checkpoint.storage_path={out}/ray_results"]
    cfg = load_config(config or packaged_config(DEFAULT_CONFIG), where + list(overrides))
    print(f"[1/4] synthetic COCO + VG data and shards in {out}/")
    paths = prepare_demo_data(out)
    print(f"[2/4] training {cfg.name}: {cfg.scaling.num_workers} Ray workers, {cfg.solver.max_iter} iterations")
    result = train(cfg)
    m = result.metrics
    print("[3/4] evaluation on the val split (COCO AP, IoU .50:.95)")
    print(f"      box  AP: all {m['bbox/all/AP']:.3f}  set A {m['bbox/setA/AP']:.3f}  set B {m['bbox/setB/AP']:.3f}")
    print(f"      mask AP: all {m['segm/all/AP']:.3f}  set A {m['segm/setA/AP']:.3f}  set B {m['segm/setB/AP']:.3f}  "
          "(set B: no mask was trained on these classes)")
    overlay = os.path.join(out, "overlay.png")
    # Focal-loss scores run low after a short CPU run; 0.3 still shows only confident detections.
    drawn = write_overlay(load_model(result.checkpoint), paths["val_image"], overlay, score_threshold=0.3)
    print(f"[4/4] {overlay}: {drawn} detections drawn on {paths['val_image']}")
    print(f"      checkpoint  {result.checkpoint}")
    if result.model_version:
        print(f"      model       models:/{cfg.mlflow.registered_model}/{result.model_version} in {result.tracking_uri}")
    print(f"      browse it:  .venv/bin/mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1 --port 5000")
    return 0
