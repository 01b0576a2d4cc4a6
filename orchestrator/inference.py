"""Load a trained model from wherever it lives, predict, and draw predictions over an image.

A model is named by a checkpoint folder (what `maskx train` writes: state.pt, config.yaml,
vocab.json), or by an MLflow URI: `runs:/RUN_ID/model`, `models:/NAME/VERSION`, `models:/NAME@ALIAS`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
from torchvision.io import ImageReadMode, decode_image, read_file, write_png
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from maskx.datasets.vocab import Vocabulary
from maskx.models import MaskXRCNN, build_model

from . import engine, run_folder
from .config import TrainConfig

MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


@dataclass
class LoadedModel:
    model: MaskXRCNN
    vocab: Vocabulary
    config: TrainConfig


def load_model(uri: str, tracking_uri: Optional[str] = None) -> LoadedModel:
    """A model from a checkpoint folder or an MLflow URI (the store: `tracking_uri`, else
    $MLFLOW_TRACKING_URI, else the local sqlite store); weights load with weights_only=True."""
    if uri.startswith(MLFLOW_SCHEMES):
        from .tracking import Tracking

        return load_model_files(run_folder.logged_model_files(Tracking(tracking_uri).download_model(uri), uri))
    if not os.path.isdir(uri):
        raise FileNotFoundError(f"model {uri}: neither a checkpoint folder nor an MLflow URI ({', '.join(MLFLOW_SCHEMES)})")
    cfg, vocab = run_folder.read_config_and_vocab(uri)
    return _built(cfg, vocab, run_folder.load_state(uri)["model"])


def load_model_files(folder: str) -> LoadedModel:
    """A model from a logged model's files (config, vocabulary, weights)."""
    cfg, vocab = run_folder.read_config_and_vocab(folder)
    return _built(cfg, vocab, run_folder.load_weights(folder))


def _built(cfg: TrainConfig, vocab: Vocabulary, state_dict: dict) -> LoadedModel:
    model = build_model(cfg.model)
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
        canvas = draw_segmentation_masks(canvas, detection["masks"][keep][:, 0] > 0.5, alpha=0.45)
    names = [f"{vocab.name(int(label))} {score:.2f}" for label, score in zip(labels, scores)]
    return draw_bounding_boxes(canvas, boxes, labels=names, width=2) if len(boxes) else canvas


def write_overlay(loaded: LoadedModel, image_path: str, out_path: str, score_threshold: float = 0.5) -> int:
    """Predict on one image file and write the overlay PNG; returns the number of drawn detections."""
    image = read_image(image_path)
    detection = predict(loaded.model, image)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    write_png(draw_overlay(image, detection, loaded.vocab, score_threshold), out_path)
    return int((detection["scores"] >= score_threshold).sum())


def evaluate_model(cfg: TrainConfig, uri: str) -> tuple[dict, dict, list[dict]]:
    """COCO metrics of a model on `cfg.data.val`, set A from `cfg.data.mask_sets`, in this process;
    also the detections (COCO result entries, category ids = maskx labels)."""
    from maskx.datasets.stream import EvalStream, load_sources, make_loader

    if not cfg.data.val:
        raise ValueError("data.val: no val manifest to evaluate on")
    loaded = load_model(uri, cfg.mlflow.tracking_uri)
    sources, vocab = load_sources([(cfg.data.val, 1.0)])
    if vocab.to_json() != loaded.vocab.to_json():
        raise ValueError(f"data.val: {cfg.data.val} was prepared with another vocabulary than model {uri} was trained on")
    set_a = vocab.resolve_sets(cfg.data.mask_sets)
    stream = EvalStream(sources, vocab, cfg.data.batch_size)
    records = engine.eval_records(loaded.model, make_loader(stream, 0), torch.device("cpu"))
    metrics, per_class = engine.evaluate_records([records], vocab, set_a)
    metrics["data/eval_skipped_samples"] = float(stream.skips.count)
    return metrics, per_class, records[2]
