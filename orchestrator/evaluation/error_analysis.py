"""Precision-recall curves of an evaluation, and where its detections fail, in the spirit of COCO's
`analyze()` (cocoapi's MATLAB CocoEval.analyze, Hoiem et al.'s "Diagnosing error in object
detectors"): the PR curve at IoU .75 and .50, at .10 (localization errors forgiven), at .10 with
detections on another class's object forgiven (class confusion), with every false positive
forgiven (background), and perfect (missed objects). The area under each is an AP; the gaps between
them say what costs the most. For set B they say whether its masks or its boxes are the problem.

Curves are per class subset (all, set A, set B): the mean over the subset's classes that have
ground truth, at each of COCOeval's 101 recall points (the mean of a curve is its AP). COCO's
analyze also forgives confusion within a supercategory; maskx's vocabulary has none, so that level
is left out. Class confusion is forgiven as analyze does it: another class's object becomes a crowd
(ignored) region of each class detected on it, matched at IoU .10.
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
    """The ground truth plus, for each object, a crowd region of each other class detected on it (a
    detection whose box meets the object's: no other can overlap it): such a detection is then
    neither a true nor a false positive."""
    boxes: dict[int, tuple[list, list]] = {}
    for d in detections:
        found = boxes.setdefault(d["image_id"], ([], []))
        found[0].append(d["bbox"])
        found[1].append(d["category_id"])
    forgiven = list(annotations)
    for a in annotations:
        if a["image_id"] not in boxes:
            continue
        detected, labels = (np.asarray(v) for v in boxes[a["image_id"]])
        x, y, w, h = a["bbox"]
        meets = (detected[:, 0] < x + w) & (detected[:, 0] + detected[:, 2] > x) & \
            (detected[:, 1] < y + h) & (detected[:, 1] + detected[:, 3] > y)
        for label in sorted(set(labels[meets].tolist()) - {a["category_id"]}):
            forgiven.append(dict(a, category_id=int(label), iscrowd=1))
    return forgiven


def strict_levels(precision: np.ndarray) -> dict[str, np.ndarray]:
    """AP (averaged over IoU .50:.95), C75 and C50 of COCOeval's precision at .50:.95, (T, R, K) ->
    (R, K) each."""
    ious = np.linspace(0.5, 0.95, precision.shape[0])
    at = {iou: int(np.argmin(np.abs(ious - iou))) for iou in (0.5, 0.75)}
    averaged = np.where((precision > -1).all(axis=0), precision.mean(axis=0), -1.0)
    return {"AP": averaged, "C75": precision[at[0.75]], "C50": precision[at[0.5]]}


def by_subset(curves: dict[str, np.ndarray], subsets: dict[str, list[int]]) -> dict[str, dict[str, list[float]]]:
    return {subset: {level: subset_curve(curve, columns) for level, curve in curves.items()}
            for subset, columns in subsets.items()}


def pr_curves(strict, subsets: dict[str, list[int]]) -> dict[str, dict[str, list[float]]]:
    """subset -> the levels the COCOeval at .50:.95 (`strict`) holds alone: AP, C75, C50."""
    return by_subset(strict_levels(strict.eval["precision"][:, :, :, 0, -1]), subsets)


def failure_curves(strict: np.ndarray, loose: np.ndarray, forgiving: np.ndarray,
                   subsets: dict[str, list[int]]) -> dict[str, dict[str, list[float]]]:
    """subset -> level -> PR curve. `strict`: COCOeval's precision at IoU .50:.95 ((T, R, K), all
    areas, 100 detections); `loose`: at IoU .10, (R, K); `forgiving`: at IoU .10 with class
    confusion forgiven, (R, K). Columns are the same classes in all three."""
    # Background forgiven: precision 1 wherever the class reaches that recall at all (per class first).
    background = np.where(forgiving > -1, (forgiving > 0).astype(float), -1.0)
    perfect = np.where(forgiving > -1, 1.0, -1.0)
    return by_subset({**strict_levels(strict), "Loc": loose, "Cls": forgiving, "BG": background, "FN": perfect}, subsets)


def analyze(run: Callable[..., object], gt_annotations: list[dict], detections: list[dict], strict,
            subsets: dict[str, list[int]]) -> dict[str, dict[str, list[float]]]:
    """`failure_curves` of one IoU type. `run(annotations, iou_thresholds)` evaluates the detections
    against those annotations and returns the COCOeval; `strict` is the one already run at .50:.95
    over the same classes."""
    thresholds = [LOOSE_IOU]
    loose = run(gt_annotations, thresholds).eval["precision"][0, :, :, 0, -1]
    forgiving = run(class_confusions_forgiven(gt_annotations, detections), thresholds).eval["precision"][0, :, :, 0, -1]
    return failure_curves(strict.eval["precision"][:, :, :, 0, -1], loose, forgiving, subsets)
