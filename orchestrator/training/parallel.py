"""How a worker's model is made ready for data parallelism: BatchNorm synced across GPUs, and DDP set
as tuned runs set it.

DDP's defaults cost a step what maskx does not need: the buffer broadcast sends every buffer from
rank 0 before each forward, but the only buffers that change while training are plain BatchNorm's
running statistics (FrozenBatchNorm's and the anchors' never do, GroupNorm has none, SyncBatchNorm
keeps them equal on every rank); and without `gradient_as_bucket_view` each gradient is copied into
its all-reduce bucket and back, one more gradient-sized buffer on the device.
"""
from __future__ import annotations

import inspect

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# torch's default, stated: R-50-FPN Mask^X R-CNN's ~45M parameters (180 MB fp32) make 7-8 buckets,
# enough to overlap the all-reduce with the backward pass without many small messages.
DDP_BUCKET_CAP_MB = 25
# torch 2.14 calls DDP's per-forward buffer broadcast `forward_sync_buffers` (`broadcast_buffers` warns
# there as deprecated); the lent GPUs' torch 2.11 knows only the old name.
BUFFER_SYNC = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
               else "broadcast_buffers")


def has_batch_norm(model: nn.Module, synced: bool = False) -> bool:
    """Whether `model` has BatchNorm layers whose statistics train: plain ones, or SyncBatchNorm if `synced`."""
    return any(isinstance(m, _BatchNorm) and isinstance(m, nn.SyncBatchNorm) == synced for m in model.modules())


def sync_batch_norm(model: nn.Module, device_type: str, world_size: int) -> nn.Module:
    """BatchNorm computed over the whole global batch when the run has several GPUs (`norm: bn`):
    per-GPU statistics of 1-2 images are noise. SyncBatchNorm needs CUDA, so on CPU each process
    keeps its own. The layers take over the same parameter objects: build the optimizer after or before."""
    if device_type == "cuda" and world_size > 1 and has_batch_norm(model):
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def ddp_options(model: nn.Module) -> dict:
    """DistributedDataParallel's keyword arguments for `model` (the bare model, after `sync_batch_norm`)."""
    return {
        # Every trainable parameter takes part in every step, also on VG batches without a mask (the
        # mask loss keeps the mask branch in the graph at zero weight; tests/models/test_partial_supervision.py),
        # so DDP needs no search for unused parameters after each backward.
        "find_unused_parameters": False,
        BUFFER_SYNC: has_batch_norm(model),  # only plain BatchNorm's statistics move (CPU, norm: bn)
        "gradient_as_bucket_view": True,
        "bucket_cap_mb": DDP_BUCKET_CAP_MB,
    }
