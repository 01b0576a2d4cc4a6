"""Load a trained model from wherever it lives, predict, and draw predictions over an image.

A model is named by a checkpoint folder (what `maskx train` writes: state.pt, config.yaml,
vocab.json), or by an MLflow URI: `runs:/RUN_ID/model`, `models:/NAME/VERSION`, `models:/NAME@ALIAS`.
"""
from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass
from typing import Optional

import torch
from torchvision.io import ImageReadMode, decode_image, read_file, write_png
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from maskx.datasets.vocab import Vocabulary
from maskx.models import MaskXRCNN, build_model

from .. import run_folder
from ..config import TrainConfig
from ..run_setup import RunSetup
from .evaluation import MASK_THRESHOLD, Evaluation, evaluate_on_shards
from .tracking import Tracking

MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
OVERLAY_MASK_ALPHA = 0.45
OVERLAY_BOX_WIDTH = 2


@dataclass
class LoadedModel:
    model: MaskXRCNN
    vocab: Vocabulary
    config: TrainConfig


def load_model(uri: str, tracking_uri: Optional[str] = None) -> LoadedModel:
    """A model from a checkpoint folder or an MLflow URI (the store: `tracking_uri`, else
    $MLFLOW_TRACKING_URI, else the local sqlite store); weights load with weights_only=True."""
    return _built(*model_weights(uri, tracking_uri))


def model_weights(uri: str, tracking_uri: Optional[str] = None) -> tuple[TrainConfig, Vocabulary, dict]:
    """The config, vocabulary and state dict of a checkpoint folder or an MLflow model."""
    if uri.startswith(MLFLOW_SCHEMES):
        with tempfile.TemporaryDirectory(prefix="maskx-model-") as download:  # all of it is read into memory
            folder = run_folder.logged_model_files(Tracking(tracking_uri).download_model(uri, download), uri)
            return *run_folder.read_config_and_vocab(folder), run_folder.load_weights(folder)
    if not os.path.isdir(uri):
        raise FileNotFoundError(f"model {uri}: neither a checkpoint folder nor an MLflow URI ({', '.join(MLFLOW_SCHEMES)})")
    return *run_folder.read_config_and_vocab(uri), run_folder.load_state(uri)["model"]


def load_model_files(folder: str) -> LoadedModel:
    """A model from a logged model's files (config, vocabulary, weights)."""
    return _built(*run_folder.read_config_and_vocab(folder), run_folder.load_weights(folder))


def _built(cfg: TrainConfig, vocab: Vocabulary, state_dict: dict) -> LoadedModel:
    architecture = copy.deepcopy(cfg.model)
    architecture.backbone.weights = None  # what it started from; the state dict has what it learned
    model = build_model(architecture)
    model.load_state_dict(state_dict)
    return LoadedModel(model.eval(), vocab, cfg)


def read_image(path: str) -> torch.Tensor:
    """(3, H, W) uint8; a file that is not an image is a ValueError naming it."""
    try:
        return decode_image(read_file(path), mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        raise ValueError(f"image {path}: cannot decode ({exc})") from None


@torch.no_grad()
def predict(model: MaskXRCNN, image: torch.Tensor) -> dict:
    """Detections for one uint8 (3, H, W) image: boxes, labels, scores, masks (N, 1, H, W)."""
    model.eval()
    return model([image.float() / 255])[0]


def draw_overlay(image: torch.Tensor, detection: dict, vocab: Vocabulary, score_threshold: float = 0.5) -> torch.Tensor:
    """Masks, boxes and class names over the image, for detections scoring at least the threshold."""
    keep = detection["scores"] >= score_threshold
    boxes, labels, scores = detection["boxes"][keep], detection["labels"][keep], detection["scores"][keep]
    canvas = image
    if "masks" in detection and keep.any():
        canvas = draw_segmentation_masks(canvas, detection["masks"][keep][:, 0] > MASK_THRESHOLD, alpha=OVERLAY_MASK_ALPHA)
    names = [f"{vocab.name(int(label))} {score:.2f}" for label, score in zip(labels, scores)]
    return draw_bounding_boxes(canvas, boxes, labels=names, width=OVERLAY_BOX_WIDTH) if len(boxes) else canvas


def write_overlay(loaded: LoadedModel, image_path: str, out_path: str, score_threshold: float = 0.5) -> int:
    """Predict on one image file and write the overlay PNG; returns the number of drawn detections."""
    image = read_image(image_path)
    detection = predict(loaded.model, image)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    write_png(draw_overlay(image, detection, loaded.vocab, score_threshold), out_path)
    return int((detection["scores"] >= score_threshold).sum())


def evaluate_model(setup: RunSetup, uri: str) -> Evaluation:
    """COCO metrics of a model on the run's `data.val` (`set_up_run(cfg, train=False)`), set A from
    its `data.mask_sets`, in this process, with the detections (COCO result entries, category ids =
    maskx labels)."""
    loaded = load_model(uri, setup.config.mlflow.tracking_uri)
    loaded.vocab.require_same(setup.vocab, f"data.val: {setup.config.data.val}", f"model {uri} was trained on")
    return evaluate_on_shards(loaded.model, setup.val_sources, setup.vocab, setup.set_a,
                              batch_size=setup.config.data.batch_size, device=torch.device("cpu"),
                              backend=setup.config.eval_backend)
