"""The training step and the solver as plain functions (checkpoints: `run_folder.py`).

Nothing here knows Ray or MLflow: the worker (`worker.py`) calls these on Ray Train workers and unit
tests call them directly on a CPU.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Optional, Sequence

import torch
from torch import nn

from maskx.datasets.batch import Batch
from maskx.datasets.vocab import Vocabulary

from ..config import SolverConfig

log = logging.getLogger(__name__)


def initialize_from_torchvision(model: nn.Module, path: str, vocab: Vocabulary) -> str:
    """`model.init_from`: a torchvision Mask R-CNN's weights, its COCO class rows at our COCO classes'
    rows; returns what was taken and what was not, for the log."""
    from maskx.models.torchvision_init import load_torchvision_detector

    source = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(source, dict) and isinstance(source.get("model"), dict):
        source = source["model"]
    report = load_torchvision_detector(model, source, [None] + [c.coco_id for c in vocab.classes])
    if not report.taken:
        raise ValueError(f"model.init_from: {path} has no tensor that fits this model ({len(report.skipped)} skipped, "
                         f"e.g. {next(iter(report.skipped.items()), None)}); is it a torchvision Mask R-CNN state dict?")
    return f"model.init_from {path}: {report.summary()}"


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


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, micro_batches: Sequence[Batch],
               device: torch.device, amp: bool = False, clip_grad_norm: Optional[float] = None,
               loss_weights: Optional[Sequence[float]] = None) -> dict[str, float]:
    """One SGD step over one or more micro-batches: their gradients accumulate, each loss times its
    weight (default: its share of the images; the worker passes `EpochLayout.loss_weight`, which
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
            inputs, targets = batch.to_device(device)
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


def lr_of(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]

