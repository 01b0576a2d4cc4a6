"""COCOeval's time with each backend maskx has (`eval_backend`), on one set of COCO val's size.

Ground truth and detections shaped like a trained model's on COCO val2017: 5000 images of
640x480, ~7 objects an image (polygon masks), 100 detections an image (boxes and masks near the
objects or anywhere, scores at random) over the 80 classes. Both backends score the same records
the way maskx's evaluation does (bbox and segm; overall, set A and set B); the script checks their
figures agree and prints each one's seconds and the ratio, then faster-coco-eval's with the error
analysis (`eval_error_analysis`) on top.

    python bench/coco_eval.py                 # COCO val's size: about 15 minutes on one core
    python bench/coco_eval.py --images 500    # a quick look
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
from pycocotools import mask as mask_utils

from maskx.datasets.shard_format import rle_to_json
from maskx.datasets.vocab import VOC_COCO_IDS
from maskx.orchestrator.evaluation.coco_scoring import COCOEVAL_BACKENDS, evaluate

WIDTH, HEIGHT = 640, 480
OBJECTS_PER_IMAGE, DETECTIONS_PER_IMAGE = 7, 100
NUM_CLASSES = 91  # COCO's category ids 1..90 as labels, background 0


def polygon_rle(rng: np.random.Generator, x: float, y: float, w: float, h: float) -> dict:
    """An octagon inside the box, as a compressed RLE."""
    angles = np.linspace(0, 2 * np.pi, 9)[:-1] + rng.uniform(0, 0.3)
    xs, ys = x + w / 2 * (1 + np.cos(angles)), y + h / 2 * (1 + np.sin(angles))
    polygon = np.stack([xs, ys], axis=1).ravel().tolist()
    return mask_utils.merge(mask_utils.frPyObjects([polygon], HEIGHT, WIDTH))


def records(images: int, seed: int = 0) -> tuple[list[dict], list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    categories = [c for c in range(1, 91) if c not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]  # COCO's 80
    image_entries, annotations, detections = [], [], []
    for image_id in range(1, images + 1):
        image_entries.append({"id": image_id, "width": WIDTH, "height": HEIGHT})
        objects = []
        for _ in range(rng.poisson(OBJECTS_PER_IMAGE)):
            w, h = rng.uniform(10, 300), rng.uniform(10, 250)
            x, y = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
            category = int(rng.choice(categories))
            rle = polygon_rle(rng, x, y, w, h)
            objects.append((x, y, w, h, category))
            annotations.append({"image_id": image_id, "category_id": category, "bbox": [x, y, w, h], "iscrowd": 0,
                                "area": float(mask_utils.area(rle)), "segmentation": rle_to_json(rle)})
        for _ in range(DETECTIONS_PER_IMAGE):
            if objects and rng.uniform() < 0.5:  # near an object, maybe on its class
                x, y, w, h, category = objects[rng.integers(len(objects))]
                x, y = x + rng.normal(0, w / 8), y + rng.normal(0, h / 8)
                category = category if rng.uniform() < 0.6 else int(rng.choice(categories))
            else:
                w, h = rng.uniform(10, 300), rng.uniform(10, 250)
                x, y, category = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h), int(rng.choice(categories))
            x, y = float(np.clip(x, 0, WIDTH - w)), float(np.clip(y, 0, HEIGHT - h))
            detections.append({"image_id": image_id, "category_id": category, "bbox": [x, y, w, h],
                               "score": float(rng.uniform()), "segmentation": rle_to_json(polygon_rle(rng, x, y, w, h))})
    return image_entries, annotations, detections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    args = parser.parse_args()
    made = time.perf_counter()
    data = json.dumps(records(args.images))
    print(f"{args.images} images, {OBJECTS_PER_IMAGE} objects and {DETECTIONS_PER_IMAGE} detections an image "
          f"(made in {time.perf_counter() - made:.0f} s); bbox + segm, overall / set A (VOC) / set B")
    seconds, metrics = {}, {}
    for backend in COCOEVAL_BACKENDS:
        images, annotations, detections = json.loads(data)  # a fresh copy: COCOeval adds keys to the records
        start = time.perf_counter()
        metrics[backend], _, _ = evaluate(images, annotations, detections, NUM_CLASSES, sorted(VOC_COCO_IDS), backend,
                                          error_analysis=False)
        seconds[backend] = time.perf_counter() - start
        print(f"{backend:>17}: {seconds[backend]:7.1f} s   segm/setB/AP {metrics[backend]['segm/setB/AP']:.4f}")
    faster, reference = COCOEVAL_BACKENDS
    gap = max(abs(metrics[faster][k] - metrics[reference][k]) for k in metrics[reference])
    print(f"largest difference between their figures: {gap:.1e}")
    print(f"{faster} / {reference} time: {seconds[faster] / seconds[reference]:.3f} "
          f"({seconds[reference] / seconds[faster]:.1f}x faster)")
    images, annotations, detections = json.loads(data)
    start = time.perf_counter()
    evaluate(images, annotations, detections, NUM_CLASSES, sorted(VOC_COCO_IDS), faster)
    analyzed = time.perf_counter() - start
    print(f"{faster} with the error analysis (eval_error_analysis, the default): {analyzed:.1f} s, "
          f"{analyzed / seconds[faster]:.1f}x without")


if __name__ == "__main__":
    main()
