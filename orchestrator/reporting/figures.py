"""maskx's figures, each from the numbers it shows, nothing else: an evaluation's PR curves, where it
fails, per-class mask AP and AP by object size; ground truth beside predictions; the classes of
prepared data; training curves. Matplotlib's object API (no pyplot state: figures are drawn in
threads beside training), Agg canvas.

Set A (classes trained with masks) is drawn in blue, set B (boxes only in training: the paper's
question) in orange, everywhere.
"""
from __future__ import annotations

import io
from typing import Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from maskx.orchestrator.evaluation.error_analysis import LEVELS, RECALL_POINTS

SET_COLORS = {"setA": "tab:blue", "setB": "tab:orange"}
SET_NAMES = {"setA": "set A (masks in training)", "setB": "set B (boxes only)"}
IOU_NAMES = {"bbox": "box", "segm": "mask"}
# COCO analyze()'s legend: what each level forgives, strictest first.
LEVEL_NAMES = {"C75": "C75: IoU .75", "C50": "C50: IoU .50", "Loc": "Loc: IoU .10",
               "Cls": "Cls: class confusion forgiven", "BG": "BG: false positives forgiven", "FN": "FN: misses forgiven"}
LEVEL_COLORS = {"C75": "#ffffff", "C50": "#2b83ba", "Loc": "#abdda4", "Cls": "#ffffbf", "BG": "#fdae61",
                "FN": "#d7191c"}
MOST_BARS = 60  # per-class bars drawn: the best and the worst half each where there are more classes
SIZES = ("APs", "APm", "APl")


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def as_image(figure: Figure):
    """The figure as a PIL image (what MLflow's `log_image` takes)."""
    from PIL import Image

    figure.canvas.draw()
    return Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy())


def pr_curves(curves: dict, title: str = "") -> Figure:
    """Box and mask precision-recall, set A and set B on each: at IoU .50 (solid) and averaged over
    .50:.95 (dashed); the legend gives the area under each (AP50, AP)."""
    figure = new_figure(10, 4.2)
    axes = figure.subplots(1, 2, sharey=True)
    for ax, iou_type in zip(axes, ("bbox", "segm")):
        for subset in ("setA", "setB"):
            levels = curves.get(iou_type, {}).get(subset)
            if not levels:
                continue
            color, name = SET_COLORS[subset], SET_NAMES[subset]
            ax.plot(RECALL_POINTS, levels["C50"], color=color, label=f"{name}, IoU .50: AP50 {np.mean(levels['C50']):.3f}")
            ax.plot(RECALL_POINTS, levels["AP"], color=color, linestyle="--",
                    label=f"{name}, IoU .50:.95: AP {np.mean(levels['AP']):.3f}")
        ax.set(title=f"{IOU_NAMES[iou_type]} precision-recall", xlabel="recall", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel("precision")
    _title(figure, title)
    return figure


def failure_analysis(curves: dict, title: str = "") -> Figure:
    """COCO analyze()'s plot, one per IoU type and set: the PR curve at each level of forgiveness,
    the area between two levels filled, the legend giving each level's AP. A large FN area means
    misses, a large Loc area poor localization (for masks: poor masks), Cls confusion between classes,
    BG detections on nothing."""
    figure = new_figure(10, 8)
    axes = figure.subplots(2, 2, sharex=True, sharey=True)
    for row, iou_type in zip(axes, ("bbox", "segm")):
        for ax, subset in zip(row, ("setA", "setB")):
            levels = curves.get(iou_type, {}).get(subset)
            ax.set(title=f"{IOU_NAMES[iou_type]}, {SET_NAMES[subset]}", xlim=(0, 1), ylim=(0, 1.02))
            if not levels:
                ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=ax.transAxes)
                continue
            below = np.zeros(len(RECALL_POINTS))
            for level in LEVELS[1:]:
                curve = np.asarray(levels[level])
                ax.fill_between(RECALL_POINTS, below, curve, color=LEVEL_COLORS[level], step=None,
                                label=f"[{curve.mean():.3f}] {LEVEL_NAMES[level]}")
                ax.plot(RECALL_POINTS, curve, color="0.2", linewidth=0.6)
                below = curve
            ax.legend(fontsize=7, loc="lower left")
    for ax in axes[1]:
        ax.set_xlabel("recall")
    for ax in axes[:, 0]:
        ax.set_ylabel("precision")
    _title(figure, title or "where detections fail (COCO analyze)")
    return figure


def per_class_ap(per_class: dict[str, float], set_a_names: set[str], iou_type: str = "segm", title: str = "") -> Figure:
    """One bar per class with ground truth, best first, coloured by set; past `MOST_BARS` classes the
    best and the worst half of that each, the gap marked."""
    scored = sorted(((ap, name) for name, ap in per_class.items() if ap >= 0), key=lambda item: (-item[0], item[1]))
    shown = scored if len(scored) <= MOST_BARS else scored[:MOST_BARS // 2] + scored[-MOST_BARS // 2:]
    figure = new_figure(max(6.0, 0.18 * len(shown) + 2), 4.8)
    ax = figure.subplots()
    positions = np.arange(len(shown))
    colors = [SET_COLORS["setA" if name in set_a_names else "setB"] for _, name in shown]
    ax.bar(positions, [ap for ap, _ in shown], color=colors)
    ax.set_xticks(positions, [name for _, name in shown], rotation=90, fontsize=7)
    if len(shown) < len(scored):
        ax.axvline(MOST_BARS // 2 - 0.5, color="0.3", linestyle=":")
        ax.text(MOST_BARS // 2 - 0.5, 1.0, f" {len(scored) - len(shown)} classes between not shown ", fontsize=7,
                ha="center", va="bottom", backgroundcolor="white")
    ax.legend(handles=[Patch(color=SET_COLORS[s], label=SET_NAMES[s]) for s in ("setA", "setB")], fontsize=8)
    ax.set(ylabel=f"{IOU_NAMES[iou_type]} AP (IoU .50:.95)", ylim=(0, 1.05), xlim=(-0.6, max(len(shown), 1) - 0.4))
    _title(figure, title or f"per-class {IOU_NAMES[iou_type]} AP, {len(scored)} classes with ground truth")
    return figure


def ap_by_size(metrics: dict[str, float], title: str = "") -> Figure:
    """AP of small, medium and large objects: box and mask, set A and set B."""
    figure = new_figure(7, 4)
    ax = figure.subplots()
    bars = [(iou_type, subset) for iou_type in ("bbox", "segm") for subset in ("setA", "setB")]
    width = 0.8 / len(bars)
    for i, (iou_type, subset) in enumerate(bars):
        values = [metrics.get(f"{iou_type}/{subset}/{size}", 0.0) for size in SIZES]
        ax.bar(np.arange(len(SIZES)) + (i - (len(bars) - 1) / 2) * width, values, width, color=SET_COLORS[subset],
               hatch="" if iou_type == "bbox" else "//", edgecolor="white",
               label=f"{IOU_NAMES[iou_type]}, {SET_NAMES[subset]}")
    ax.set_xticks(np.arange(len(SIZES)), ["small (< 32²)", "medium", "large (> 96²)"])
    ax.set(ylabel="AP (IoU .50:.95)", ylim=(0, 1.05))
    ax.legend(fontsize=8)
    _title(figure, title or "AP by object size")
    return figure


def side_by_side(ground_truth: np.ndarray, predictions: np.ndarray, title: str) -> Figure:
    """Two drawn images (H, W, 3 uint8): the ground truth left, the model's detections right."""
    height, width = ground_truth.shape[:2]
    figure = new_figure(2 * 4.5, 4.5 * height / width + 0.6)
    for ax, image, name in zip(figure.subplots(1, 2), (ground_truth, predictions), ("ground truth", "predictions")):
        ax.imshow(image)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    _title(figure, title)
    return figure


def class_frequency(rows: list[dict], title: str = "") -> Figure:
    """Classes from the most to the least frequent (log scale): images with the class and its objects,
    one line per source (COCO, VG), points coloured by whether the class has masks (set A) or boxes
    only (set B). `rows`: {"source", "set" ("setA"|"setB"), "images", "instances"} per class and source."""
    figure = new_figure(10, 4.2)
    axes = figure.subplots(1, 2, sharey=False)
    for ax, count in zip(axes, ("images", "instances")):
        for source in sorted({r["source"] for r in rows}):
            ranked = sorted((r for r in rows if r["source"] == source), key=lambda r: -r[count])
            ranks = np.arange(1, len(ranked) + 1)
            ax.plot(ranks, [r[count] for r in ranked], color="0.6", linewidth=0.8, zorder=1)
            for subset in ("setA", "setB"):
                chosen = [(rank, r[count]) for rank, r in zip(ranks, ranked) if r["set"] == subset]
                if chosen:
                    ax.scatter(*zip(*chosen), s=8, color=SET_COLORS[subset], zorder=2,
                               marker="o" if source == "coco" else "^",
                               label=f"{source}: set {subset[-1]} classes ({len(chosen)})")
        ax.set(yscale="log", xlabel="class, most to least frequent", ylabel=f"{count} per class")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _title(figure, (title or "classes of the data") + "\nset A: classes whose masks train the mask head; set B: boxes only")
    return figure


def training_curves(history: dict[str, list[tuple[int, float]]], title: str = "") -> Figure:
    """Every `loss/...` metric and the learning rate against the iteration."""
    figure = new_figure(10, 4)
    losses, lr = figure.subplots(1, 2)
    for key in sorted(k for k in history if k.startswith("loss/")):
        steps, values = zip(*history[key]) if history[key] else ((), ())
        losses.plot(steps, values, label=key.removeprefix("loss/"), linewidth=1.6 if key == "loss/loss" else 0.8)
    losses.set(xlabel="iteration", ylabel="loss per image", title="losses", yscale="log")
    losses.legend(fontsize=7)
    if history.get("train/lr"):
        lr.plot(*zip(*history["train/lr"]))
    lr.set(xlabel="iteration", ylabel="learning rate", title="learning rate")
    for ax in (losses, lr):
        ax.grid(alpha=0.3)
    _title(figure, title)
    return figure


def trials_over_time(trials: list[tuple[str, str, list[tuple[int, float]]]], metric: str) -> Figure:
    """A sweep's trials (name, status, (step, value) points): the metric against the iteration, a
    cross at the last point of a trial that did not finish (the scheduler stopped it, or it failed)."""
    figure = new_figure(8, 4.2)
    ax = figure.subplots()
    for name, status, points in trials:
        if not points:
            continue
        steps, values = zip(*points)
        line, = ax.plot(steps, values, marker=".", linewidth=1, label=f"{name} ({status})")
        if status != "finished":
            ax.plot(steps[-1], values[-1], marker="x", markersize=10, color=line.get_color())
    ax.set(xlabel="iteration", ylabel=metric, title=f"{metric} per trial; x: stopped early or failed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figure.tight_layout()
    return figure


def _title(figure: Figure, title: Optional[str]) -> None:
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
