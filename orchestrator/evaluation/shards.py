"""A model over val shards, scored: `Evaluation` and its two halves.

A model is evaluated in two halves: `predict_on_shards` (one rank's share of the val shards; alone,
`maskx predict --shards`) and `score_shares` (COCOeval over every rank's share: `coco_scoring.py`).
A training run's evaluation predicts on every rank and scores in rank 0 or beside training
(`orchestrator/training/hooks.py`); `evaluate_on_shards` does both in one process (`maskx eval`,
the sweep's champion check).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from maskx.datasets.stream import EvalStream, Source, make_loader
from maskx.datasets.vocab import Vocabulary

from .coco_scoring import evaluate
from .records import Records, records_of


@dataclass
class Evaluation:
    metrics: dict[str, float]  # `segm/setB/AP`, ..., `eval/images`, `data/eval_skipped_samples`
    per_class_ap: dict[str, dict[str, float]]  # iou type -> class name -> AP
    detections: list[dict]  # COCO result entries, category id = maskx label
    curves: dict = field(default_factory=dict)  # iou type -> subset -> level -> PR curve: error_analysis.py

    def summary(self) -> dict:
        """What a checkpoint's `eval.json` holds: everything but the detections."""
        return {"metrics": self.metrics, "per_class_ap": self.per_class_ap, "curves": self.curves}


def predict_on_shards(model: nn.Module, sources: list[Source], vocab: Vocabulary, *, batch_size: int,
                      device: torch.device, rank: int = 0, world_size: int = 1,
                      progress: bool = False) -> tuple[Records, int]:
    """The model (bare, not DDP-wrapped) over rank `rank`'s share of the shards: its records, and the
    samples it skipped."""
    stream = EvalStream(sources, vocab, batch_size, rank, world_size)
    batches = tqdm(make_loader(stream, 0), disable=not progress, desc="predict", unit="batch")
    return records_of(model, batches, device), stream.skips.count


def evaluate_on_shards(model: nn.Module, sources: list[Source], vocab: Vocabulary, set_a: list[int], *,
                       batch_size: int, device: torch.device, backend: str = "faster-coco-eval",
                       error_analysis: bool = True) -> Evaluation:
    """The model over every val shard, then COCOeval, in this process."""
    share = predict_on_shards(model, sources, vocab, batch_size=batch_size, device=device)
    return score_shares([share], vocab, set_a, backend, error_analysis)


def score_shares(shares: list[tuple[Records, int]], vocab: Vocabulary, set_a: list[int],
                 backend: str = "faster-coco-eval", error_analysis: bool = True) -> Evaluation:
    """COCOeval over every rank's share (records, skipped samples): `evaluate_on_shards`' second half."""
    images, annotations, detections = [], [], []
    for (imgs, anns, dets), _ in shares:
        images += imgs
        annotations += anns
        detections += dets
    metrics, tables, curves = evaluate(images, annotations, detections, vocab.num_classes, set_a, backend,
                                       error_analysis)
    metrics["eval/images"] = float(len(images))
    metrics["data/eval_skipped_samples"] = float(sum(skipped for _, skipped in shares))
    named = {iou: {vocab.name(label): ap for label, ap in table.items()} for iou, table in tables.items()}
    return Evaluation(metrics, named, detections, curves)
