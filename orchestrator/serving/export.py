"""`maskx export`: the whole inference path (normalize and resize, backbone, RPN, box and mask heads,
mask paste) as one file that runs without maskx: TorchScript (`torch.jit.load`, C++ libtorch) or
ONNX (onnxruntime, TensorRT).

The exported graph takes one float image (3, H, W), RGB in [0, 1], of the size it was exported for
(`size`: resize or pad images to it), and returns `boxes` (N, 4, xyxy pixels), `labels` (N, the
vocabulary's), `scores` (N) and `masks` (N, 1, H, W probabilities: a pixel is in where > 0.5).

Both are traced (TorchScript's tracer; ONNX through the TorchScript-based exporter): torchvision's
detection models are written for it (`torchvision._is_tracing()`): NMS runs as one batched op
(the coordinate trick) and masks are pasted by a scripted loop, and the mask head takes its
counts from shapes (`MaskXRoIHeads`), so the number of detections stays dynamic, none included.
RoIAlign exports as ONNX's RoiAlign in `output_half_pixel` mode, which is torchvision's
`aligned=False`, Detectron's (and this model's) RoIAlign; MultiScaleRoIAlign's choice of FPN level
per box exports as ops on the boxes. What is fixed is the input size and the batch of one. The
TorchScript-based ONNX exporter (`dynamo=False`) is the one torchvision registers its NMS and
RoIAlign mappings with (torchvision/ops/_register_onnx_ops.py).
"""
from __future__ import annotations

import os
import warnings
import torch
from torch import nn

from ..tracking.store import Tracking
from .inference import LoadedModel

FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 17
OUTPUT_NAMES = ["boxes", "labels", "scores", "masks"]
EXPORT_ARTIFACT_DIR = "exports"
EXPORT_TAG_PREFIX = "maskx.export."


class ExportableMaskX(nn.Module):
    """The model as one image in, four tensors out."""

    def __init__(self, loaded: LoadedModel):
        super().__init__()
        self.model = loaded.model.eval()
        self.model.transform.paste_masks = True  # the paste is part of what is exported

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        detection = self.model([image])[0]
        return detection["boxes"], detection["labels"], detection["scores"], detection["masks"]


def example_image(size: tuple[int, int]) -> torch.Tensor:
    """What the tracer runs: a fixed pattern, not noise, so that the untrained or trained model
    alike finds detections and the trace takes the paths that produce them."""
    height, width = size
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    return torch.stack([xs, ys, (xs * ys).sqrt()])


@torch.no_grad()
def export_model(loaded: LoadedModel, fmt: str, out: str, size: tuple[int, int]) -> str:
    """The model exported to `out` in `fmt` for images of `size` (H, W); returns `out`."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt}: one of {', '.join(FORMATS)}")
    exportable = ExportableMaskX(loaded)
    image = example_image(size)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with warnings.catch_warnings():  # the tracer's warnings on Python values it records as constants
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            torch.jit.trace(exportable, (image,), check_trace=False).save(out)
        else:
            torch.onnx.export(exportable, (image,), out, opset_version=ONNX_OPSET, dynamo=False,
                              input_names=["image"], output_names=OUTPUT_NAMES)
    return out


def load_exported(path: str):
    """A callable image -> (boxes, labels, scores, masks) over an exported file, either format."""
    if path.endswith(".onnx"):
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda image: tuple(torch.from_numpy(out) for out in session.run(None, {"image": image.numpy()}))
    module = torch.jit.load(path)
    return lambda image: module(image)


def register_export(tracking: Tracking, model_uri: str, path: str, fmt: str) -> str:
    """The exported file logged beside the model it came from (its run's `exports/`) and, for a
    registered version, named in the version's tag `maskx.export.FORMAT`; returns its URI."""
    run_id, name, version = tracking.model_source(model_uri)
    tracking.run(run_id).log_artifact(path, EXPORT_ARTIFACT_DIR)
    uri = f"runs:/{run_id}/{EXPORT_ARTIFACT_DIR}/{os.path.basename(path)}"
    if version is not None:
        tracking.set_version_tag(name, version, EXPORT_TAG_PREFIX + fmt, uri)
    return uri
