"""What each evaluation of a run leaves in MLflow besides its metrics: its figures and a few val images
with ground truth beside predictions, as MLflow images with the evaluated iteration as step (the
UI's image slider walks through training; keys under `eval/`). `mlflow.eval_figures` and
`mlflow.eval_images` turn them off.

Rank 0 draws and uploads them in a thread while training goes on; a figure MLflow could not take (the
server down) is lost with a warning, the metrics are not (`metric_logger.py`).
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

import torch
from matplotlib.figure import Figure

from maskx.datasets.stream import EvalStream, Source
from maskx.datasets.vocab import Vocabulary

from . import figures
from ..serving import drawing
from ..serving.inference import predict
from ..tracking.store import TrackedRun

log = logging.getLogger(__name__)

# MLflow image keys: the key names the figure, the step the iteration.
PR_CURVES = "eval/pr_curves"
WHERE_IT_FAILS = "eval/where_it_fails"
PER_CLASS_MASK_AP = "eval/per_class_mask_ap"
AP_BY_SIZE = "eval/ap_by_size"
EXAMPLE = "eval/ground_truth_vs_predictions/{}"  # one key per val image
FIGURE_KEYS = (PR_CURVES, WHERE_IT_FAILS, PER_CLASS_MASK_AP, AP_BY_SIZE)
EXAMPLE_SCORE_THRESHOLD = 0.3


def evaluation_figures(summary: dict, set_a_names: set[str], title: str = "") -> dict[str, Figure]:
    """The figures of one evaluation (`Evaluation.summary()`: metrics, per-class AP, curves), by key."""
    drawn = {AP_BY_SIZE: figures.ap_by_size(summary["metrics"], title=f"AP by object size{title}")}
    curves = summary.get("curves")
    if curves:
        drawn[PR_CURVES] = figures.pr_curves(curves, title=f"precision-recall{title}")
    if any("Loc" in levels for subsets in (curves or {}).values() for levels in subsets.values()):  # eval_error_analysis
        drawn[WHERE_IT_FAILS] = figures.failure_analysis(curves, title=f"where detections fail{title}")
    if summary["per_class_ap"].get("segm"):
        drawn[PER_CLASS_MASK_AP] = figures.per_class_ap(summary["per_class_ap"]["segm"], set_a_names)
    return drawn


class ExampleImages:
    """The first `count` val images and their targets, read once; drawn with the model's detections."""

    def __init__(self, sources: list[Source], vocab: Vocabulary, set_a: list[int], count: int):
        self.vocab, self.set_a = vocab, set(set_a)
        self.samples = []
        for batch in EvalStream(sources, vocab, batch_size=1) if count else ():
            if len(self.samples) == count:
                break
            self.samples.append((batch.keys[0], batch.images[0], batch.targets[0]))

    def predictions(self, model: torch.nn.Module, device: torch.device) -> list[dict]:
        """The model's detections on each image, on the CPU (the model is left in eval mode)."""
        return [{k: v.cpu() for k, v in predict(model, image.to(device)).items()} for _, image, _ in self.samples]

    def figures(self, detections: list[dict], title: str) -> dict[str, Figure]:
        drawn = {}
        for i, ((key, image, target), detection) in enumerate(zip(self.samples, detections)):
            truth = drawing.draw_ground_truth(image, target, self.vocab, self.set_a)
            found = drawing.draw_predictions(image, detection, self.vocab, self.set_a, EXAMPLE_SCORE_THRESHOLD)
            drawn[EXAMPLE.format(i)] = figures.side_by_side(drawing.as_array(truth), drawing.as_array(found),
                                                            f"{key}{title} (set B classes marked [B])")
        return drawn


class FigureLogger:
    """Figures drawn and logged as MLflow images by one thread, in the order submitted."""

    def __init__(self, run: TrackedRun):
        self.run = run
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maskx-figures")

    def submit(self, draw: Callable[[], dict[str, Figure]], step: int) -> None:
        self.thread.submit(self._log, draw, step)

    def _log(self, draw: Callable[[], dict[str, Figure]], step: int) -> None:
        try:
            for key, figure in draw().items():
                self.run.log_image(figures.as_image(figure), key, step)
        except Exception as exc:  # a figure is not worth a training run
            log.warning("figures of iteration %d not logged to MLflow (%s: %s)", step, type(exc).__name__, exc)

    def close(self, wait: bool = True) -> None:
        self.thread.shutdown(wait=wait)


def title_of(iteration: Optional[int]) -> str:
    return f", iteration {iteration}" if iteration is not None else ""
