"""`model.init_from`: the weights a new run starts from, and which parts of them it takes.

A source is a torchvision Mask R-CNN state dict (its COCO classes' rows go to ours, see
`maskx.models.torchvision_init`), a maskx checkpoint folder, each local or on S3 (`s3://BUCKET/KEY`,
`s3://BUCKET/runs/NAME/checkpoint_00090000`), or an MLflow model (`models:/NAME/VERSION`,
`models:/NAME@ALIAS`, `runs:/ID/model`). A maskx source must share the run's vocabulary (a label is a
class). `model.init_from_parts` names the parts to take (backbone, rpn, box_head, mask_head); the
paper's stage-wise protocol takes the detector of a box-only run and trains a fresh mask branch.

`model.backbone.weights` (a state dict of the ResNet, e.g. torchvision's ImageNet weights saved once)
is a local file, an S3 object or a file among an MLflow run's artifacts (`runs:/ID/PATH`): the
models/ package reads local files only, so `local_backbone_weights` fetches it first.
"""
from __future__ import annotations

import copy
import os
import tempfile
from typing import Optional

import torch
from torch import nn

from maskx.datasets import storage
from maskx.datasets.vocab import Vocabulary
from maskx.models.config import ModelConfig
from maskx.models.torchvision_init import load_torchvision_detector

from .. import run_folder
from ..serving.inference import model_weights
from ..tracking.store import Tracking

# A part of the model and the state-dict names that belong to it.
PART_PREFIXES = {"backbone": ("backbone.",), "rpn": ("rpn.",),
                 "box_head": ("roi_heads.box_head.", "roi_heads.box_predictor."),
                 "mask_head": ("roi_heads.mask_head.", "roi_heads.mask_predictor.")}


def part_of(name: str) -> Optional[str]:
    return next((part for part, prefixes in PART_PREFIXES.items() if name.startswith(prefixes)), None)


def initialize_from(model: nn.Module, source: str, vocab: Vocabulary, parts: Optional[list[str]] = None,
                    tracking_uri: Optional[str] = None) -> str:
    """Copy `source`'s weights into the (bare) `model`, only `parts` when given; returns what was taken."""
    if source.startswith(run_folder.MLFLOW_SCHEMES) or os.path.isdir(source) or is_s3_folder(source):
        return _from_maskx(model, source, vocab, parts, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="maskx-init-from-") as scratch:
        state = torch.load(local_file(source, scratch, "model.init_from", tracking_uri), map_location="cpu",
                           weights_only=True)
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


def is_s3_folder(url: str) -> bool:
    """An s3:// url naming a prefix (a checkpoint folder), not an object."""
    return storage.is_s3(url) and storage.stat(url) is None and bool(storage.list_folder(url)[1])


def local_file(source: str, scratch: str, key: str, tracking_uri: Optional[str] = None) -> str:
    """A local path holding the file `source`: itself, or a copy in `scratch` of an S3 object or of a
    file among an MLflow run's artifacts (`runs:/ID/PATH`). `key` names the config field in errors."""
    if storage.is_s3(source):
        if storage.stat(source) is None:
            raise FileNotFoundError(f"{key}: no S3 object at {source}")
        path = os.path.join(scratch, os.path.basename(source.rstrip("/")) or "weights.pt")
        storage.download(source, path)
        return path
    if source.startswith(run_folder.MLFLOW_SCHEMES):
        path = Tracking(tracking_uri).download(source, scratch)
        if not os.path.isfile(path):
            raise ValueError(f"{key}: {source} is a folder of MLflow artifacts, not a weights file (name the file: "
                             "runs:/ID/PATH/backbone.pth)")
        return path
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{key}: no file at {source} (a local path, s3://BUCKET/KEY or runs:/ID/PATH; "
                                "weights are never downloaded from the internet)")
    return source


def local_backbone_weights(model_cfg: ModelConfig, scratch: str, tracking_uri: Optional[str] = None) -> ModelConfig:
    """`model_cfg` with `backbone.weights` a local file (fetched into `scratch` from S3 or MLflow), as
    `build_model` reads it."""
    weights = model_cfg.backbone.weights
    if not weights or not (storage.is_s3(weights) or weights.startswith(run_folder.MLFLOW_SCHEMES)):
        return model_cfg
    local = copy.deepcopy(model_cfg)
    local.backbone.weights = local_file(weights, scratch, "model.backbone.weights", tracking_uri)
    return local
