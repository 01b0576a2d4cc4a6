"""The training step and the solver as plain functions (checkpoints: `run_folder.py`).

Nothing here knows Ray or MLflow: the worker (`worker.py`) calls these on Ray Train workers and unit
tests call them directly on a CPU.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from maskx.datasets.batch import Batch
from maskx.datasets.partitions import EpochLayout

from ..config import SolverConfig

log = logging.getLogger(__name__)


def build_optimizer(model: nn.Module, solver: SolverConfig) -> torch.optim.Optimizer:
    """SGD with momentum; no weight decay on normalization parameters and biases, and biases at
    `bias_lr_factor` x lr (each group's `lr_factor`, which the scheduler's lr is multiplied by)."""
    decay, norms, biases = [], [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else biases if name.endswith(".bias") else norms).append(param)
    groups = [{"params": decay, "weight_decay": solver.weight_decay, "lr_factor": 1.0},
              {"params": norms, "weight_decay": 0.0, "lr_factor": 1.0},
              {"params": biases, "weight_decay": 0.0, "lr_factor": solver.bias_lr_factor}]
    for group in groups:
        group["lr"] = solver.lr * group["lr_factor"]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=solver.lr, momentum=solver.momentum)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, solver: SolverConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup then step decay at `solver.steps` (iterations from 0), stepped once per iteration."""
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=solver.warmup_factor, end_factor=1.0,
                                               total_iters=max(solver.warmup_iters, 1))
    decay = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=solver.steps, gamma=solver.gamma)
    return torch.optim.lr_scheduler.ChainedScheduler([warmup, decay], optimizer=optimizer)


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


class AmpUnsupported(ValueError):
    """`solver.amp` asks for what this GPU cannot do: the run fails at once, no retry can fix it."""


def autocast_dtype(amp: str, device: torch.device,
                   bf16_supported: Callable[[], bool] = lambda: torch.cuda.is_bf16_supported()) -> Optional[torch.dtype]:
    """The dtype `solver.amp` runs a step in on `device`: None (float32) off the GPU."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "bf16" and not bf16_supported():
        raise AmpUnsupported(f"solver.amp: bf16 needs a GPU with bfloat16 (NVIDIA Ampere or newer: A100, H100, L4); "
                             f"this one ({torch.cuda.get_device_name(device)}) has none: set solver.amp=fp16 "
                             "(autocast with a gradient scaler) or off")
    return AMP_DTYPES[amp]


class NonFiniteLoss(FloatingPointError):
    """A step whose loss is NaN or infinite on some rank; every rank raises it with the same message."""


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, micro_batches: Sequence[Batch],
               device: torch.device, amp: Optional[torch.dtype] = None, clip_grad_norm: Optional[float] = None,
               layout: Optional[EpochLayout] = None, loss_normalization: str = "step",
               on_nonfinite: str = "raise", scaler: Optional[torch.amp.GradScaler] = None) -> dict[str, float]:
    """One SGD step over one or more micro-batches: their gradients accumulate, and DDP all-reduces
    once, after the last. Each micro-batch's losses are weighted by its share of the step
    (`layout`: this rank's micro-batches of a global batch over the layout's ranks; default: all of
    the step here), so that with `loss_normalization` "step" the step's gradient is the same however
    its images are cut into micro-batches and ranks: the box and RPN losses by the micro-batch's
    images, the mask loss (a mean over images with masks) by its images with masks, counted over every
    rank. Returns the losses (and `loss`, their sum) as this rank's part of the step's, per image of
    this rank: averaged over ranks by their images (what the metrics do), they are the step's losses,
    whatever the layout. `amp`: the autocast dtype (`autocast_dtype`; CPU autocast runs the same path in
    tests), with `scaler` (float16's gradient scaler) scaling the backward passes and skipping a step
    whose gradients overflowed, as torch.amp documents.

    A loss that is not finite on any rank is known to every rank after the backward passes (one
    all-reduce of a flag), before any weight moves: with `on_nonfinite` "raise" every rank raises the
    same NonFiniteLoss naming the ranks, their losses and samples; with "skip_step" no rank updates
    the weights (the lr schedule moves on) and the step returns no losses.

    The host waits for the device once a step: that flag and this rank's losses, read together
    (masks come decoded from the loader, images with masks are counted on the host, the count's
    all-reduce runs during the forward pass; tests/orchestrator/training/test_host_syncs.py)."""
    model.train()
    bare = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    micro_batches = [batch.masks_decoded() for batch in micro_batches]  # the stream's come decoded
    images = [len(batch.keys) for batch in micro_batches]
    # Counted on the host, from the batches as the loader shipped them: no device read per image.
    with_masks = [batch.images_with_masks(bare.roi_heads.is_set_a_host) for batch in micro_batches]
    inputs = [batch.to_device(device) for batch in micro_batches]
    image_weights = [layout.loss_weight(n) if layout else n / max(sum(images), 1) for n in images]
    world_size = layout.world_size if layout else 1
    # The step's images with masks over every rank: the all-reduce runs while the first forward does.
    step_with_masks = None if loss_normalization == "batch" else _Summed(sum(with_masks), device)
    optimizer.zero_grad(set_to_none=True)
    weighted_sums: dict[str, torch.Tensor] = {}
    micro_losses: list[dict[str, torch.Tensor]] = []
    for i, ((batch_images, targets), image_weight) in enumerate(zip(inputs, image_weights)):
        last = i == len(micro_batches) - 1
        accumulate = model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel) and not last else nullcontext()
        with accumulate:
            with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                losses = model(batch_images, targets)
            mask_weight = (image_weight if step_with_masks is None
                           else with_masks[i] * world_size / step_with_masks.result().clamp(min=1))
            weights = {name: mask_weight if name == "loss_mask" else image_weight for name in losses}
            # Every micro-batch goes backward, a non-finite one too, so that every rank meets every
            # other in DDP's all-reduce; whether the step is taken is decided after, once, for all ranks.
            weighted = sum(value * weights[name] for name, value in losses.items())
            (scaler.scale(weighted) if scaler is not None else weighted).backward()
        losses = {name: value.detach() for name, value in losses.items()}
        micro_losses.append(losses)
        for name, value in losses.items():
            weighted_sums[name] = weighted_sums.get(name, 0.0) + value * weights[name]
    # The step's one host read: whether every rank's losses are finite, and this rank's losses with it.
    finite = torch.stack([torch.isfinite(sum(losses.values())) for losses in micro_losses]).all()
    finite_everywhere, *values = torch.stack([_all_ranks(finite, device).float(), *weighted_sums.values()]).tolist()
    if not finite_everywhere:
        optimizer.zero_grad(set_to_none=True)
        bad = next(((list(micro_batches[i].keys), {k: v.item() for k, v in losses.items()})
                    for i, losses in enumerate(micro_losses) if not torch.isfinite(sum(losses.values()))), None)
        return _non_finite(bad, on_nonfinite, scheduler)
    # Weights carry W / G (DDP averages over ranks): per image of this rank, times G / (W x its images).
    global_images = layout.plan.global_batch if layout else sum(images)
    per_image = global_images / (world_size * sum(images)) if sum(images) else 0.0
    totals = {name: value * per_image for name, value in zip(weighted_sums, values)}
    totals["loss"] = sum(totals.values())
    if scaler is not None:
        scaler.unscale_(optimizer)  # clipping and the update see the true gradients
    if clip_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)  # skipped where the scaled gradients overflowed; the scale then backs off
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    return totals


def _collective_device(device: torch.device) -> torch.device:
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_ranks(flag: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`flag` (a bool on the device) and-ed over the ranks, on the device: no host read here."""
    if not _distributed():
        return flag
    agreed = flag.to(_collective_device(device), torch.int32).reshape(1)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return agreed[0].to(flag.device).bool()


def _non_finite(bad: Optional[tuple[list[str], dict[str, float]]], on_nonfinite: str, scheduler) -> dict[str, float]:
    """Every rank's non-finite micro-batch, gathered so that every rank says the same; then raise or skip."""
    reports = [(0, bad)]
    if _distributed():
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, bad)
        reports = list(enumerate(gathered))
    where = "; ".join(f"rank {rank}: {losses} in samples {', '.join(keys)}" for rank, (keys, losses) in
                      ((r, b) for r, b in reports if b is not None))
    if on_nonfinite == "skip_step":
        log.warning("non-finite loss (%s): step skipped, weights unchanged (solver.on_nonfinite skip_step)", where)
        scheduler.step()
        return {}
    raise NonFiniteLoss(f"loss is not finite ({where}); lower solver.lr, set solver.clip_grad_norm, or "
                        "solver.on_nonfinite=skip_step to step over such batches")


class _Summed:
    """A count summed over the ranks: the all-reduce starts at once and is waited for at `result()`
    (on a GPU that wait orders the device's stream, the host goes on)."""

    def __init__(self, count: int, device: torch.device):
        self.total = torch.tensor(count, dtype=torch.int64)
        self.work = None
        if _distributed():
            self.total = self.total.to(_collective_device(device)).reshape(1)
            self.work = dist.all_reduce(self.total, async_op=True)

    def result(self) -> torch.Tensor:
        if self.work is not None:
            self.work.wait()
            self.work = None
        return self.total.reshape(())



def lr_of(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]

