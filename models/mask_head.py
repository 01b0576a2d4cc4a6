"""The mask predictor of Mask^X R-CNN: per-class weights from one of three sources, and an optional
class-agnostic MLP branch fused with the FCN logits (Hu et al. 2018, Sec. 3.4).

Definitions and initializations follow the official code, GitHub ronghanghu/seg_every_thing,
`lib/modeling/mask_rcnn_heads.py`: `add_mask_rcnn_outputs` (the mask logits: class-specific,
class-agnostic or transferred weights), `cls_agnostic_mlp_branch` (the MLP branch) and
`mask_rcnn_fcn_head_v1upXconvs` (the 2x up-convolution). Caffe2's MSRAFill is PyTorch's
`kaiming_normal_(mode="fan_out", nonlinearity="relu")` (what detectron2's c2_msra_fill does).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

# Official: the class-agnostic mask logits and the MLP branch's last layer start from GaussianFill
# with std 0.001 ("scale down init to avoid NaN loss").
SMALL_INIT_STD = 0.001
MASK_RESOLUTION = 28  # the mask logits (and the MLP branch's output) per RoI, after the 2x up-conv


def msra_fill(module: nn.Module) -> nn.Module:
    """Caffe2's MSRAFill for the weight, zeros for the bias."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return module


class ClassSpecificMaskWeights(nn.Module):
    """Plain Mask R-CNN: one learned 1x1-conv weight vector and bias per class. Official: `mask_fcn_logits`
    with CONV_INIT MSRAFill (the paper's configs; torchvision's MaskRCNNPredictor inits the same)."""

    def __init__(self, num_classes: int, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, channels))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, box_predictor: nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self.weight, self.bias


class ClassAgnosticMaskWeights(nn.Module):
    """The partial-supervision baseline: one mask channel shared by every class. Official: GaussianFill
    std 0.001, bias 0."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1, channels).normal_(std=SMALL_INIT_STD))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, box_predictor: nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self.weight, self.bias


class MLPMaskBranch(nn.Module):
    """Class-agnostic mask logits from fully connected layers (Sec. 3.4, after PANet), added to every
    class's FCN logits. Official (`cls_agnostic_mlp_branch`): on the upsampled (N, C, 28, 28) mask
    features, 1 to 3 layers (hidden 1024, MSRA, ReLU), the last to 28x28 logits from std 0.001.

    `reduce_channels` (maskx's `mlp_input: reduced`, for CPU configs): a 3x3 conv to that many channels
    on the (N, C, 14, 14) features first, then the same layers. -> (N, 28, 28).
    """

    def __init__(self, in_channels: int, num_layers: int = 1, hidden: int = 1024, reduce_channels: Optional[int] = None):
        super().__init__()
        self.reduce = msra_fill(nn.Conv2d(in_channels, reduce_channels, 3, padding=1)) if reduce_channels else None
        in_features = reduce_channels * (MASK_RESOLUTION // 2) ** 2 if reduce_channels else in_channels * MASK_RESOLUTION**2
        widths = [in_features] + [hidden] * (num_layers - 1)
        self.hidden = nn.ModuleList(msra_fill(nn.Linear(a, b)) for a, b in zip(widths[:-1], widths[1:]))
        self.logits = nn.Linear(widths[-1], MASK_RESOLUTION**2)
        nn.init.normal_(self.logits.weight, std=SMALL_INIT_STD)
        nn.init.zeros_(self.logits.bias)

    def forward(self, features: torch.Tensor, upsampled: torch.Tensor) -> torch.Tensor:
        """features (N, C, 14, 14) from the mask head's convs, upsampled (N, C, 28, 28) after the up-conv."""
        x = F.relu(self.reduce(features)) if self.reduce is not None else upsampled
        x = x.flatten(1)
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.logits(x).view(-1, MASK_RESOLUTION, MASK_RESOLUTION)


class MaskXPredictor(nn.Module):
    """Upsamples mask-head features and scores each RoI with the weights of one class only.

    Unlike torchvision's MaskRCNNPredictor, which computes all K+1 mask channels and then picks
    one, this gathers the weight vector of the class each RoI needs: with thousands of classes
    that is the difference between (N, 28, 28) and (N, K+1, 28, 28) logits.
    """

    def __init__(self, in_channels: int, class_weights: nn.Module, mlp_branch: Optional[MLPMaskBranch] = None):
        super().__init__()
        self.upsample = msra_fill(nn.ConvTranspose2d(in_channels, in_channels, 2, stride=2))
        self.class_weights = class_weights
        self.mlp_branch = mlp_branch

    @property
    def class_agnostic(self) -> bool:
        return isinstance(self.class_weights, ClassAgnosticMaskWeights)

    def forward(self, features: torch.Tensor, class_ids: torch.Tensor, box_predictor: nn.Module) -> torch.Tensor:
        """features (N, C, 14, 14), class_ids (N,) -> mask logits (N, 28, 28)."""
        weights, bias = self.class_weights(box_predictor)
        if self.class_agnostic:
            class_ids = torch.zeros_like(class_ids)
        x = F.relu(self.upsample(features))
        logits = torch.einsum("nchw,nc->nhw", x, weights[class_ids].to(x.dtype))
        if bias is not None:
            logits = logits + bias[class_ids, None, None]
        if self.mlp_branch is not None:
            logits = logits + self.mlp_branch(features, x)
        return logits
