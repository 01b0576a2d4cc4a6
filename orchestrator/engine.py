"""The training step, the solver and evaluation as plain functions (checkpoints: `run_folder.py`).

Nothing here knows Ray or MLflow: `train_loop.py` wires these together on Ray Train workers and
unit tests call them directly on a CPU.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Iterable, Optional, Sequence

import torch
from torch import nn

from maskx.datasets.partitions import DataPlan
from maskx.datasets.stream import Batch
from maskx.datasets.transforms import augment, decode_masks
from maskx.datasets.vocab import Vocabulary

from .config import SolverConfig, TrainConfig
from .evaluation import detection_records, evaluate, ground_truth_records

log = logging.getLogger(__name__)


def bind_to_vocabulary(cfg: TrainConfig, vocab: Vocabulary) -> TrainConfig:
    """Fill the model's class count and set A from the shards' vocabulary; refuse a mismatch."""
    if cfg.model.num_classes is None:
        cfg.model.num_classes = vocab.num_classes
    if cfg.model.num_classes != vocab.num_classes:
        raise ValueError(f"model.num_classes: {cfg.model.num_classes}, but the shards' vocabulary has {vocab.num_classes} "
                         f"(background + {vocab.num_classes - 1} classes); set model.num_classes={vocab.num_classes}")
    try:
        cfg.model.mask_classes = sorted(vocab.resolve_sets(cfg.data.mask_sets))
    except (KeyError, ValueError) as exc:
        raise ValueError(f"data.mask_sets: {exc}") from None
    return cfg


def initialize_from_torchvision(model: nn.Module, path: str, vocab: Vocabulary) -> str:
    """`model.init_from`: a torchvision Mask R-CNN's weights, its COCO class rows at our COCO classes'
    rows; returns what was taken and what was not, for the log."""
    from maskx.models.torchvision_init import load_torchvision_detector

    source = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(source, dict) and isinstance(source.get("model"), dict):
        source = source["model"]
    report = load_torchvision_detector(unwrap(model), source, [None] + [c.coco_id for c in vocab.classes])
    if not report.taken:
        raise ValueError(f"model.init_from: {path} has no tensor that fits this model ({len(report.skipped)} skipped, "
                         f"e.g. {next(iter(report.skipped.items()), None)}); is it a torchvision Mask R-CNN state dict?")
    return f"model.init_from {path}: {report.summary()}"


def data_plan(cfg: TrainConfig, saved: Optional[DataPlan] = None) -> DataPlan:
    """The run's global batch and partitions: a resumed run's own (a config asking for others is an
    error, since they fix the run's sample order), else the config's or their defaults."""
    if saved is not None:
        for key, asked, kept in (("data.global_batch_size", cfg.data.global_batch_size, saved.global_batch),
                                 ("data.partitions", cfg.data.partitions, saved.partitions)):
            if asked is not None and asked != kept:
                raise ValueError(f"{key}={asked}, but this run started with {kept}, which fixes its sample order; "
                                 f"leave {key} unset to continue it")
        return saved
    return DataPlan(global_batch=cfg.data.global_batch_size or cfg.data.batch_size * cfg.scaling.max_workers,
                    partitions=cfg.data.partitions or cfg.scaling.max_workers * max(1, cfg.data.loader_workers))


def build_optimizer(model: nn.Module, solver: SolverConfig) -> torch.optim.Optimizer:
    # detectron2's default: no weight decay on normalization parameters and biases.
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": solver.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=solver.lr, momentum=solver.momentum)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, solver: SolverConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup then step decay at `solver.steps` (iterations from 0), stepped once per iteration."""
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=solver.warmup_factor, end_factor=1.0,
                                               total_iters=max(solver.warmup_iters, 1))
    decay = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=solver.steps, gamma=solver.gamma)
    return torch.optim.lr_scheduler.ChainedScheduler([warmup, decay], optimizer=optimizer)


def to_device(batch: Batch, device: torch.device) -> tuple[list[torch.Tensor], list[dict]]:
    """uint8 images to float [0, 1] on the device, then each training image's resize and flip there;
    the masks' RLEs decoded (compact: instances with a mask only) and sent along.

    The loader ships uint8 at the source size (4x fewer bytes than float, and none of its cores spent
    resizing or decoding masks); the model's transform normalizes on the device too."""
    images = [image.to(device, non_blocking=True).float().div_(255) for image in batch.images]
    keys = batch.keys or ["?"] * len(batch.targets)
    targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in decode_masks(t, key).items()}
               for t, key in zip(batch.targets, keys)]
    if batch.augmentations:
        augmented = [augment(image, target, a) for image, target, a in zip(images, targets, batch.augmentations)]
        images, targets = [image for image, _ in augmented], [target for _, target in augmented]
    return images, targets


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, micro_batches: Sequence[Batch],
               device: torch.device, amp: bool = False, clip_grad_norm: Optional[float] = None,
               loss_weights: Optional[Sequence[float]] = None) -> dict[str, float]:
    """One SGD step over one or more micro-batches: their gradients accumulate, each loss times its
    weight (default: its share of the images; the train loop passes `EpochLayout.loss_weight`, which
    makes the step one step on the global batch at any world size), and DDP all-reduces once, after
    the last. Returns the losses (and `loss`, their sum) averaged over the images, as floats; a rank
    whose passes were all blank returns the blank pass's. `amp`: bf16 autocast (the train loop asks
    for it on GPUs; CPU autocast runs the same path in tests)."""
    model.train()
    images = [len(batch.keys) for batch in micro_batches]
    if loss_weights is None:
        loss_weights = [n / max(sum(images), 1) for n in images]
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, float] = {}
    for i, (batch, weight) in enumerate(zip(micro_batches, loss_weights)):
        last = i == len(micro_batches) - 1
        accumulate = model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel) and not last else nullcontext()
        with accumulate:
            inputs, targets = to_device(batch, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                losses = model(inputs, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} ({ {k: v.item() for k, v in losses.items()} }); "
                                         "lower solver.lr or set solver.clip_grad_norm")
            (loss * weight).backward()
        share = images[i] / sum(images) if sum(images) else 1.0 / len(micro_batches)
        for name, value in list(losses.items()) + [("loss", loss)]:
            totals[name] = totals.get(name, 0.0) + value.item() * share
    if clip_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    optimizer.step()
    scheduler.step()
    return totals


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def eval_records(model: nn.Module, batches: Iterable[Batch], device: torch.device) -> tuple[list, list, list]:
    """COCO image entries, ground-truth annotations and detections for every batch (one rank's share)."""
    model = unwrap(model)
    model.eval()
    images, annotations, detections = [], [], []
    for batch in batches:
        inputs, _ = to_device(batch, device)
        outputs = model(inputs)
        for image, target, output in zip(batch.images, batch.targets, outputs):
            entry, anns = ground_truth_records(target, tuple(image.shape[-2:]))
            images.append(entry)
            annotations += anns
            detections += detection_records(target["image_id"], {k: v.cpu() for k, v in output.items()})
    return images, annotations, detections


def evaluate_records(records: list[tuple[list, list, list]], vocab: Vocabulary, set_a: list[int]):
    """Merge every rank's records and run COCOeval; returns (metrics, per-class tables by class name)."""
    images, annotations, detections = [], [], []
    for imgs, anns, dets in records:
        images += imgs
        annotations += anns
        detections += dets
    metrics, tables = evaluate(images, annotations, detections, vocab.num_classes, set_a)
    named = {iou: {vocab.name(label): ap for label, ap in table.items()} for iou, table in tables.items()}
    metrics["eval/images"] = float(len(images))
    return metrics, named


def lr_of(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]

