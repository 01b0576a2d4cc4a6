"""COCO evaluation of records: COCOeval, bbox and segm AP overall, on set A and on set B (the paper's
metric is set-B mask AP), and per-class AP tables.

COCOeval is faster-coco-eval's (its evaluation and accumulation in C++, pycocotools' API and
numbers: `tests/orchestrator/evaluation/test_evaluation.py` holds every figure equal to 1e-6) by
default, pycocotools' where `eval_backend: pycocotools` says so or faster-coco-eval is not installed.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from typing import Callable, Optional

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .error_analysis import analyze, pr_curves

log = logging.getLogger(__name__)

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
COCOEVAL_BACKENDS = ("faster-coco-eval", "pycocotools")
IOU_TYPES = ("bbox", "segm")
CLASS_SUBSETS = ("all", "setA", "setB")  # all classes; those trained with masks; those with boxes only


@contextlib.contextmanager
def _quiet_pycocotools():
    """Silence pycocotools' progress prints. Ray Train workers replace `print` itself (not only
    sys.stdout), so shadow the name in pycocotools' modules rather than redirecting stdout."""
    import pycocotools.coco
    import pycocotools.cocoeval

    modules = (pycocotools.coco, pycocotools.cocoeval)
    for module in modules:
        module.print = lambda *args, **kwargs: None
    try:
        yield
    finally:
        for module in modules:
            del module.print


@functools.cache
def coco_api(backend: str = "faster-coco-eval") -> tuple[type, Callable]:
    """The backend's (COCO, COCOeval); pycocotools' when faster-coco-eval is asked for but not installed."""
    if backend not in COCOEVAL_BACKENDS:
        raise ValueError(f"eval_backend: {backend!r} is not one of {', '.join(COCOEVAL_BACKENDS)}")
    if backend == "faster-coco-eval":
        try:
            from faster_coco_eval import COCO as FasterCOCO
            from faster_coco_eval import COCOeval_faster
        except ImportError as exc:
            log.warning("faster-coco-eval is not installed (%s): evaluating with pycocotools, the same numbers "
                        "more slowly", exc)
        else:
            return FasterCOCO, functools.partial(COCOeval_faster, print_function=lambda *args, **kwargs: None)
    return COCO, COCOeval


def _own_copy(record: dict) -> dict:
    """A record COCOeval may change: faster-coco-eval turns RLE counts into bytes in place, and the
    caller's records go on to JSON (`maskx eval --json`)."""
    return dict(record, segmentation=dict(record["segmentation"])) if isinstance(record.get("segmentation"), dict) \
        else dict(record)


def _coco(images: list[dict], annotations: list[dict], labels: list[int], backend: str) -> COCO:
    coco = coco_api(backend)[0]()
    coco.dataset = {"images": [dict(image) for image in images],
                    "annotations": [dict(_own_copy(a), id=i + 1) for i, a in enumerate(annotations)],
                    "categories": [{"id": label} for label in labels]}
    with _quiet_pycocotools():
        coco.createIndex()
    return coco


def _results(gt: COCO, detections: list[dict]) -> Optional[COCO]:
    """The detections as COCO results against `gt`, once for every subset scored; None without any."""
    if not detections:
        return None
    with _quiet_pycocotools():
        return gt.loadRes([_own_copy(d) for d in detections])


def _run(gt: COCO, dt: COCO, iou_type: str, cat_ids: list[int], backend: str,
         iou_thresholds: Optional[list[float]] = None) -> COCOeval:
    """COCOeval of `cat_ids`, evaluated and accumulated, at COCO's IoU thresholds or these."""
    with _quiet_pycocotools():
        evaluator = coco_api(backend)[1](gt, dt, iou_type)
        evaluator.params.catIds = cat_ids
        if iou_thresholds is not None:
            evaluator.params.iouThrs = np.array(iou_thresholds)
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def per_class_ap(evaluator: COCOeval) -> dict[int, float]:
    """AP at IoU .50:.95, all areas, 100 detections, per category (-1 where the class has no GT)."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (T, R, K)
    result = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k]
        values = values[values > -1]
        result[cat_id] = float(values.mean()) if values.size else -1.0
    return result


def coco_metric_names() -> list[str]:
    """The names `evaluate` gives its metrics: `segm/setB/AP`, `bbox/all/AP50`, ..."""
    return [f"{iou_type}/{subset}/{name}" for iou_type in IOU_TYPES for subset in CLASS_SUBSETS for name in STAT_NAMES]


def evaluate(images: list[dict], gt_annotations: list[dict], detections: list[dict], num_classes: int,
             set_a: list[int], backend: str = "faster-coco-eval",
             error_analysis: bool = True) -> tuple[dict[str, float], dict[str, dict[int, float]], dict]:
    """Metrics named like `segm/setB/AP`, per-class AP tables keyed by iou type, and curves: iou type
    -> subset -> level -> PR curve (`error_analysis.py`: its levels past C50 only with `error_analysis`,
    two more COCOeval passes per iou type).

    Mask AP is computed over the classes and instances that have ground-truth masks."""
    labels = list(range(1, num_classes))
    set_b = [label for label in labels if label not in set(set_a)]
    metrics: dict[str, float] = {}
    tables: dict[str, dict[int, float]] = {}
    curves: dict[str, dict] = {}
    for iou_type in IOU_TYPES:
        annotations = gt_annotations if iou_type == "bbox" else [a for a in gt_annotations if "segmentation" in a]
        dets = detections if iou_type == "bbox" else [d for d in detections if "segmentation" in d]
        gt = _coco(images, annotations, labels, backend)
        dt = _results(gt, dets)
        present = sorted({a["category_id"] for a in annotations})
        column = {label: k for k, label in enumerate(present)}
        subsets = {"all": present, "setA": [c for c in present if c in set(set_a)],
                   "setB": [c for c in present if c in set(set_b)]}
        columns = {subset: [column[c] for c in cat_ids] for subset, cat_ids in subsets.items()}
        # One COCOeval over every class: a class's precision does not depend on the others', so a
        # subset's figures are its classes' columns (what COCOeval run on the subset alone gives).
        evaluator = _run(gt, dt, iou_type, present, backend) if present and dt is not None else None
        for subset in CLASS_SUBSETS:
            stats = summarized(evaluator, columns[subset]) if evaluator is not None and columns[subset] \
                else [0.0] * len(STAT_NAMES)
            for name, value in zip(STAT_NAMES, stats):
                metrics[f"{iou_type}/{subset}/{name}"] = max(float(value), 0.0)
        if evaluator is not None:
            tables[iou_type] = per_class_ap(evaluator)
            again = functools.partial(_rerun, images=images, labels=labels, dt=dt, iou_type=iou_type,
                                      cat_ids=present, backend=backend)
            curves[iou_type] = analyze(again, annotations, dets, evaluator, columns) if error_analysis \
                else pr_curves(evaluator, columns)
    return metrics, tables, curves


def summarized(evaluator: COCOeval, columns: list[int]) -> list[float]:
    """COCOeval.summarize()'s AP, AP50, AP75, APs, APm, APl (100 detections) over the classes
    `columns` of an accumulated evaluation; -1 where none of them has ground truth."""
    precision = evaluator.eval["precision"][:, :, columns]  # (T, R, K', areas: all/small/medium/large, max dets)
    ious = np.asarray(evaluator.params.iouThrs)

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(values.mean()) if values.size else -1.0

    at = {iou: int(np.flatnonzero(np.isclose(ious, iou))[0]) for iou in (0.5, 0.75)}
    return [mean(precision[:, :, :, 0, -1]), mean(precision[at[0.5], :, :, 0, -1]), mean(precision[at[0.75], :, :, 0, -1]),
            mean(precision[:, :, :, 1, -1]), mean(precision[:, :, :, 2, -1]), mean(precision[:, :, :, 3, -1])]


def _rerun(annotations: list[dict], iou_thresholds: list[float], *, images: list[dict], labels: list[int], dt: COCO,
           iou_type: str, cat_ids: list[int], backend: str) -> COCOeval:
    return _run(_coco(images, annotations, labels, backend), dt, iou_type, cat_ids, backend, iou_thresholds)
