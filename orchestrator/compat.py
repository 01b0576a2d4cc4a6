"""Every private name of another library that maskx leans on, in one place, with the version it was
checked against. `tests/orchestrator/test_compat.py` fails when the installed version differs or
has moved one of them: check each against the new version's source, then update `CHECKED_AGAINST`.

Everywhere else maskx takes public routes: `webdataset.filters.shuffle` and shard streams it opens
itself (not webdataset's scheme table), `mlflow.entities.Dataset(**dataset.to_dict())` for run
inputs, a `GeneralizedRCNNTransform` subclass whose `resize` skips training images (not
torchvision's `_skip_resize`).
"""
from __future__ import annotations

import logging

CHECKED_AGAINST = {"ray": "2.60.0"}


def ray_torch_backend() -> type:
    """Ray Train's torch backend, `ray.train.torch.config._TorchBackend`. Its `on_start(worker_group,
    backend_config)` sets up the process group; maskx subclasses it to run one call on every worker
    first (`training/process_group.py`): Ray has no public hook there."""
    from ray.train.torch.config import _TorchBackend

    return _TorchBackend


def ray_train_report_logger() -> logging.Logger:
    """The logger of Ray Train's `ray.train.v2._internal.execution.context`, which logs every
    `ray.train.report` call with all its metrics at INFO; it is named by that module's file path."""
    from ray.train.v2._internal.execution import context

    return logging.getLogger(context.__file__)
