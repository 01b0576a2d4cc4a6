"""A model written as a run's checkpoint (weights, a fresh solver, `cfg`'s config and the vocabulary),
so that everything that takes a checkpoint (`maskx eval`, `predict`, `export`, model logging,
`model.init_from`) takes it. Benchmarks and tests use it for a model that no Ray run trained: an
untrained one (the default: `cfg.model` built under `cfg.seed`, what a run starts from) or one they
made otherwise."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from maskx.datasets.vocab import Vocabulary
from maskx.models import build_model

from .. import run_folder
from ..config import TrainConfig, dump_config
from .step import build_lr_scheduler, build_optimizer


def write_model_checkpoint(folder: str, cfg: TrainConfig, vocab: Vocabulary, model: Optional[nn.Module] = None,
                           iteration: int = 0) -> str:
    """`folder` made a checkpoint of `model` at `iteration`; returns `folder`."""
    if model is None:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model)
    optimizer = build_optimizer(model, cfg.solver)
    contents = run_folder.checkpoint_contents(model, optimizer, build_lr_scheduler(optimizer, cfg.solver),
                                              run_folder.TrainState(iteration=iteration))
    run_folder.write_checkpoint(folder, contents, dump_config(cfg), vocab)
    return folder
