"""ResNet-FPN backbones built from torchvision parts, with optional local weights."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

_LAYERS_BY_TRAINABLE = ["layer4", "layer3", "layer2", "layer1", "conv1"]


class DtypeKeepingFrozenBatchNorm2d(FrozenBatchNorm2d):
    """torchvision's FrozenBatchNorm2d (the same buffers), computed in its input's dtype, as detectron2's.
    torchvision's multiplies by float32 statistics, so under bf16 autocast every one returned float32:
    the whole ResNet's elementwise path, activations and what backward keeps of them, at twice the bytes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale.to(x.dtype).reshape(1, -1, 1, 1) + bias.to(x.dtype).reshape(1, -1, 1, 1)


def _norm_layer(norm: str):
    if norm == "frozen_bn":
        return DtypeKeepingFrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        return lambda channels: nn.GroupNorm(32, channels)
    raise ValueError(f"model.backbone.norm: {norm!r} is not one of 'frozen_bn', 'bn', 'gn'")


def load_backbone_weights(body: resnet.ResNet, path: str) -> None:
    """Load a ResNet state dict from a local file; classifier ("fc.") keys are ignored."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"model.backbone.weights: no file at {path} (weights are never downloaded)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = body.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"model.backbone.weights: {path} does not fit the backbone "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def resnet_fpn_backbone(
    name: str, fpn_channels: int, norm: str, trainable_layers: int, weights: Optional[str] = None
) -> BackboneWithFPN:
    body = getattr(resnet, name)(weights=None, norm_layer=_norm_layer(norm))
    if weights:
        load_backbone_weights(body, weights)
    layers_to_train = _LAYERS_BY_TRAINABLE[:trainable_layers]
    if trainable_layers == 5:
        layers_to_train.append("bn1")
    for param_name, parameter in body.named_parameters():
        if not any(param_name.startswith(layer) for layer in layers_to_train):
            parameter.requires_grad_(False)
    # As torchvision's _resnet_fpn_extractor, but with fpn_channels instead of a fixed 256
    # so the CPU config can use a thinner pyramid.
    stage2_channels = body.inplanes // 8
    return BackboneWithFPN(
        body,
        return_layers={f"layer{k}": str(k - 1) for k in (1, 2, 3, 4)},
        in_channels_list=[stage2_channels * 2 ** (k - 1) for k in (1, 2, 3, 4)],
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
