"""Load a trained model from wherever it lives, and predict (drawing the predictions: drawing.py).

A model is named by a checkpoint folder (what `maskx train` writes: state.pt, config.yaml,
vocab.json), or by an MLflow URI: `runs:/RUN_ID/model`, `models:/NAME/VERSION`, `models:/NAME@ALIAS`.

Images come from users, at any size: a loaded model leaves its masks unpasted
(`PreResizedTransform.paste_masks`; `evaluation.binary_masks` pastes the kept ones one at a time),
and an image over `max_image_pixels()` is refused from its header, before it is decoded (a small
PNG can claim to be 30000 x 30000).
"""
from __future__ import annotations

import copy
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image

from maskx.datasets import storage
from maskx.datasets.vocab import Vocabulary
from maskx.models import MaskXRCNN, build_model

from .. import run_folder
from ..config import TrainConfig
from ..evaluation.shards import Evaluation, evaluate_on_shards
from ..run_setup import RunSetup
from ..tracking.store import Tracking

# A 48-megapixel phone photo passes; the memory a request takes: docs/benchmarks.md, "Memory per request".
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
MAX_IMAGE_PIXELS_VARIABLE = "MASKX_MAX_IMAGE_PIXELS"  # set by whoever runs the server, not by its clients


DEVICES = ("auto", "cpu", "cuda")


class ImageTooLarge(ValueError):
    pass


def inference_device(name: str = "auto") -> torch.device:
    """Where a model predicts: `auto` is the GPU where torch sees one, else the CPU."""
    if name not in DEVICES:
        raise ValueError(f"--device {name}: one of {', '.join(DEVICES)}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no GPU on this machine (torch.cuda.is_available() is False); "
                         "use --device auto or cpu")
    return torch.device("cuda")


@dataclass
class LoadedModel:
    model: MaskXRCNN
    vocab: Vocabulary
    config: TrainConfig


def load_model(uri: str, tracking_uri: Optional[str] = None, device: Optional[torch.device] = None) -> LoadedModel:
    """A model from a checkpoint folder (local or s3://) or an MLflow URI (the store: `tracking_uri`, else
    $MLFLOW_TRACKING_URI, else the local sqlite store), on `device` (default the CPU); weights load
    with weights_only=True."""
    return loaded_from(*model_weights(uri, tracking_uri), device=device)


def model_weights(uri: str, tracking_uri: Optional[str] = None) -> tuple[TrainConfig, Vocabulary, dict]:
    """The config, vocabulary and state dict of a checkpoint folder (local or s3://) or an MLflow model."""
    if uri.startswith(run_folder.MLFLOW_SCHEMES):
        with tempfile.TemporaryDirectory(prefix="maskx-model-") as download:  # all of it is read into memory
            folder = run_folder.logged_model_files(Tracking(tracking_uri).download(uri, download), uri)
            return *run_folder.read_config_and_vocab(folder), run_folder.load_weights(folder)
    if storage.is_s3(uri):
        with tempfile.TemporaryDirectory(prefix="maskx-model-") as scratch:
            folder = run_folder.local_checkpoint(uri, scratch)
            return *run_folder.read_config_and_vocab(folder), run_folder.load_state(folder)["model"]
    if not os.path.isdir(uri):
        raise FileNotFoundError(f"model {uri}: neither a checkpoint folder (local or s3://) nor an MLflow URI "
                                f"({', '.join(run_folder.MLFLOW_SCHEMES)})")
    return *run_folder.read_config_and_vocab(uri), run_folder.load_state(uri)["model"]


def load_model_files(folder: str, device: Optional[torch.device] = None) -> LoadedModel:
    """A model from a logged model's files (config, vocabulary, weights)."""
    return loaded_from(*run_folder.read_config_and_vocab(folder), run_folder.load_weights(folder), device=device)


def loaded_from(cfg: TrainConfig, vocab: Vocabulary, state_dict: dict, device: Optional[torch.device] = None) -> LoadedModel:
    """The model `model_weights` describes, for inference, on `device` (default the CPU)."""
    architecture = copy.deepcopy(cfg.model)
    architecture.backbone.weights = None  # what it started from; the state dict has what it learned
    model = build_model(architecture)
    model.load_state_dict(state_dict)
    model.transform.paste_masks = False
    return LoadedModel(model.eval().to(device or torch.device("cpu")), vocab, cfg)


def max_image_pixels() -> int:
    value = os.environ.get(MAX_IMAGE_PIXELS_VARIABLE)
    if value is None:
        return DEFAULT_MAX_IMAGE_PIXELS
    if not value.isdigit() or int(value) <= 0:
        raise ValueError(f"{MAX_IMAGE_PIXELS_VARIABLE}={value!r}: a positive number of pixels, e.g. 64000000")
    return int(value)


def decode_image_bytes(data: bytes, name: str, max_pixels: Optional[int] = None) -> torch.Tensor:
    """(3, H, W) uint8 from single-frame JPEG or PNG bytes (8- or 16-bit; 16-bit scaled to 8).
    ValueError naming `name` for bytes that are not one of those (another format, an animated PNG);
    ImageTooLarge (a ValueError) where the header's width x height is over `max_pixels` (default
    `max_image_pixels()`)."""
    limit = max_pixels or max_image_pixels()
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning: the limit below is the one that counts
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            header = Image.open(io.BytesIO(data))  # reads the header only
            (width, height), kind, frames = header.size, header.format, getattr(header, "n_frames", 1)
    except Image.DecompressionBombError as exc:  # over twice Pillow's limit (179 megapixels)
        raise ImageTooLarge(f"{name}: over the limit of {limit} pixels ({MAX_IMAGE_PIXELS_VARIABLE}): {exc}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{name}: not a JPEG or PNG ({str(exc).splitlines()[0]})") from None
    # Other formats are refused, not decoded: a GIF's frames (or an animated PNG's) decode as one
    # tensor each the header's size, so a 78 KB GIF of 20 frames became 240 MB past the pixel limit.
    if kind not in ("JPEG", "PNG"):
        raise ValueError(f"{name}: not a JPEG or PNG (a {kind})")
    if frames != 1:
        raise ValueError(f"{name}: an animated PNG of {frames} frames; send one frame")
    if width * height > limit:
        raise ImageTooLarge(f"{name}: over the limit of {limit} pixels ({MAX_IMAGE_PIXELS_VARIABLE}): "
                            f"{width}x{height} is {width * height}")
    try:
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        raise ValueError(f"{name}: not a JPEG or PNG ({str(exc).splitlines()[0]})") from None
    if image.dtype == torch.uint16:  # a 16-bit PNG: its top 8 bits, not its values divided by 255 later
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"{name}: decoded to {image.dtype} {tuple(image.shape)}, not (3, H, W) uint8")
    return image


def read_image(path: str, max_pixels: Optional[int] = None) -> torch.Tensor:
    """(3, H, W) uint8 from an image file; ValueError naming it as `decode_image_bytes` says."""
    with open(path, "rb") as f:
        return decode_image_bytes(f.read(), f"image {path}", max_pixels)


@torch.no_grad()
def predict(model: MaskXRCNN, image: torch.Tensor) -> dict:
    """Detections for one uint8 (3, H, W) image: boxes, labels, scores, and masks (N, 1, H, W) or, from
    a loaded model, mask_probs (N, 1, M, M) (`evaluation.binary_masks` reads either)."""
    model.eval()
    output = model([image.to(model_device(model)).float().div_(255)])[0]
    return {key: value.cpu() for key, value in output.items()}


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def kept(detection: dict, keep: torch.Tensor) -> dict:
    """The detections `keep` (a mask or indices) selects: every value is one row per detection."""
    return {key: value[keep] for key, value in detection.items()}


def evaluate_model(setup: RunSetup, uri: str, device: Optional[torch.device] = None) -> Evaluation:
    """COCO metrics of a model on the run's `data.val` (`set_up_run(cfg, train=False)`), set A from
    its `data.mask_sets`, in this process on `device` (default the CPU), with the detections (COCO
    result entries, category ids = maskx labels)."""
    device = device or torch.device("cpu")
    loaded = load_model(uri, setup.config.mlflow.tracking_uri, device)
    loaded.vocab.require_same(setup.vocab, f"data.val: {setup.config.data.val}", f"model {uri} was trained on")
    return evaluate_on_shards(loaded.model, setup.val_sources, setup.vocab, setup.set_a,
                              batch_size=setup.config.eval_batch_size, device=device,
                              backend=setup.config.eval_backend, error_analysis=setup.config.eval_error_analysis)
