"""Precision-recall curves of an evaluation, and where its detections fail, in the spirit of COCO's
`analyze()` (cocoapi's MATLAB CocoEval.analyze, Hoiem et al.'s "Diagnosing error in object
detectors"): the PR curve at IoU .75 and .50, at .10 (localization errors forgiven), at .10 with
detections on another class's object forgiven (class confusion), with every false positive
forgiven (background), and perfect (missed objects). The area under each is an AP; the gaps between
them say what costs the most. For set B they say whether its masks or its boxes are the problem.

Curves are per class subset (all, set A, set B): the mean over the subset's classes that have
ground truth, at each of COCOeval's 101 recall points (the mean of a curve is its AP). COCO's
analyze also forgives confusion within a supercategory; maskx's vocabulary has none, so that level
is left out. Class confusion is forgiven as analyze does it: another class's objects in the image
become crowd (ignored) regions of the detection's class, matched at IoU .10.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

RECALL_POINTS = [r / 100 for r in range(101)]  # COCOeval's recThrs
LOOSE_IOU = 0.10
# The levels, from strictest to most forgiving; "AP" is the PR curve averaged over IoU .50:.95.
LEVELS = ("AP", "C75", "C50", "Loc", "Cls", "BG", "FN")


def subset_curve(precision: np.ndarray, columns: list[int]) -> list[float]:
    """Mean over the classes `columns` of a (R, K) precision array, per recall point, ignoring
    classes without ground truth (-1); 0 where no class of the subset has any."""
    values = precision[:, columns]
    valid = values > -1
    counts = valid.sum(axis=1)
    sums = np.where(valid, values, 0.0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).round(6).tolist()


def class_confusions_forgiven(annotations: list[dict], detections: list[dict]) -> list[dict]:
    """The ground truth plus, in each image, every object of another class as a crowd region of each
    class detected there: a detection on it is then neither a true nor a false positive."""
    detected: dict[int, set[int]] = {}
    for d in detections:
        detected.setdefault(d["image_id"], set()).add(d["category_id"])
    forgiven = list(annotations)
    for a in annotations:
        for label in detected.get(a["image_id"], ()):
            if label != a["category_id"]:
                forgiven.append(dict(a, category_id=label, iscrowd=1))
    return forgiven


def failure_curves(strict: np.ndarray, loose: np.ndarray, forgiving: np.ndarray,
                   subsets: dict[str, list[int]]) -> dict[str, dict[str, list[float]]]:
    """subset -> level -> PR curve. `strict`: COCOeval's precision at IoU .50:.95 ((T, R, K), all
    areas, 100 detections); `loose`: at IoU .10, (R, K); `forgiving`: at IoU .10 with class
    confusion forgiven, (R, K). Columns are the same classes in all three."""
    ious = np.linspace(0.5, 0.95, strict.shape[0])
    at = {iou: int(np.argmin(np.abs(ious - iou))) for iou in (0.5, 0.75)}
    averaged = np.where((strict > -1).all(axis=0), strict.mean(axis=0), -1.0)
    # Background forgiven: precision 1 wherever the class reaches that recall at all (per class first).
    background = np.where(forgiving > -1, (forgiving > 0).astype(float), -1.0)
    perfect = np.where(forgiving > -1, 1.0, -1.0)
    curves = {"AP": averaged, "C75": strict[at[0.75]], "C50": strict[at[0.5]], "Loc": loose, "Cls": forgiving,
              "BG": background, "FN": perfect}
    return {subset: {level: subset_curve(curves[level], columns) for level in LEVELS}
            for subset, columns in subsets.items()}


def analyze(run: Callable[..., object], gt_annotations: list[dict], detections: list[dict], strict,
            subsets: dict[str, list[int]]) -> dict[str, dict[str, list[float]]]:
    """`failure_curves` of one IoU type. `run(annotations, iou_thresholds)` evaluates the detections
    against those annotations and returns the COCOeval; `strict` is the one already run at .50:.95
    over the same classes."""
    thresholds = [LOOSE_IOU]
    loose = run(gt_annotations, thresholds).eval["precision"][0, :, :, 0, -1]
    forgiving = run(class_confusions_forgiven(gt_annotations, detections), thresholds).eval["precision"][0, :, :, 0, -1]
    return failure_curves(strict.eval["precision"][:, :, :, 0, -1], loose, forgiving, subsets)
