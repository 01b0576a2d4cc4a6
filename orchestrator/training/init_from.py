"""`model.init_from`: the weights a new run starts from, and which parts of them it takes.

A source is a local torchvision Mask R-CNN state dict (its COCO classes' rows go to ours, see
`maskx.models.torchvision_init`), a maskx checkpoint folder, or an MLflow model (`models:/NAME/VERSION`,
`models:/NAME@ALIAS`, `runs:/ID/model`). A maskx source must share the run's vocabulary (a label is a
class). `model.init_from_parts` names the parts to take (backbone, rpn, box_head, mask_head); the
paper's stage-wise protocol takes the detector of a box-only run and trains a fresh mask branch.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from maskx.datasets.vocab import Vocabulary
from maskx.models.torchvision_init import load_torchvision_detector

from ..serving.inference import MLFLOW_SCHEMES, model_weights

# A part of the model and the state-dict names that belong to it.
PART_PREFIXES = {"backbone": ("backbone.",), "rpn": ("rpn.",),
                 "box_head": ("roi_heads.box_head.", "roi_heads.box_predictor."),
                 "mask_head": ("roi_heads.mask_head.", "roi_heads.mask_predictor.")}


def part_of(name: str) -> Optional[str]:
    return next((part for part, prefixes in PART_PREFIXES.items() if name.startswith(prefixes)), None)


def initialize_from(model: nn.Module, source: str, vocab: Vocabulary, parts: Optional[list[str]] = None,
                    tracking_uri: Optional[str] = None) -> str:
    """Copy `source`'s weights into the (bare) `model`, only `parts` when given; returns what was taken."""
    if source.startswith(MLFLOW_SCHEMES) or os.path.isdir(source):
        return _from_maskx(model, source, vocab, parts, tracking_uri)
    state = torch.load(source, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if parts is not None:
        state = {name: tensor for name, tensor in state.items() if part_of(name) in parts}
    report = load_torchvision_detector(model, state, [None] + [c.coco_id for c in vocab.classes])
    if not report.taken:
        raise ValueError(f"model.init_from: {source} has no tensor that fits this model ({len(report.skipped)} skipped, "
                         f"e.g. {next(iter(report.skipped.items()), None)}); is it a torchvision Mask R-CNN state dict?")
    return f"model.init_from {source}: {report.summary()}"


def _from_maskx(model: nn.Module, source: str, vocab: Vocabulary, parts: Optional[list[str]],
                tracking_uri: Optional[str]) -> str:
    _, source_vocab, state = model_weights(source, tracking_uri)
    vocab.require_same(source_vocab, f"model.init_from: {source}", "this run's shards")
    ours = model.state_dict()  # views of the parameters and buffers: copying into them fills the model
    taken, unfit = [], []
    with torch.no_grad():
        for name, tensor in state.items():
            if parts is not None and part_of(name) not in parts:
                continue
            if name in ours and ours[name].shape == tensor.shape:
                ours[name].copy_(tensor)
                taken.append(name)
            else:
                unfit.append(name)
    if not taken:
        raise ValueError(f"model.init_from: {source} has no tensor of parts {parts or 'any'} that fits this model")
    took = sorted({part_of(name) or name.split(".")[0] for name in taken})
    return (f"model.init_from {source}: took {len(taken)} tensors ({', '.join(took)})"
            + (f"; {len(unfit)} did not fit ({', '.join(unfit[:3])}...)" if unfit else ""))
