"""The mask predictor of Mask^X R-CNN: per-class weights from one of three sources, and an
optional class-agnostic MLP branch fused with the FCN logits (Hu et al. 2018, Sec. 3.4)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class ClassSpecificMaskWeights(nn.Module):
    """Plain Mask R-CNN: one learned 1x1-conv weight vector per class."""

    def __init__(self, num_classes: int, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, channels))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, box_predictor: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight, self.bias


class ClassAgnosticMaskWeights(ClassSpecificMaskWeights):
    """The partial-supervision baseline: one mask channel shared by every class."""

    def __init__(self, channels: int):
        super().__init__(1, channels)


class MLPMaskBranch(nn.Module):
    """Class-agnostic mask logits from an MLP on the mask head's RoI features (Sec. 3.4, after PANet).

    (N, C, 14, 14) -> (N, 28, 28).
    """

    def __init__(self, in_channels: int, reduced_channels: int, in_resolution: int = 14):
        super().__init__()
        self.out_resolution = 2 * in_resolution
        self.reduce = nn.Conv2d(in_channels, reduced_channels, 3, padding=1)
        self.fc = nn.Linear(reduced_channels * in_resolution**2, self.out_resolution**2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.reduce(features)).flatten(1)
        return self.fc(x).view(-1, self.out_resolution, self.out_resolution)


class MaskXPredictor(nn.Module):
    """Upsamples mask-head features and scores each RoI with the weights of one class only.

    Unlike torchvision's MaskRCNNPredictor, which computes all K+1 mask channels and then picks
    one, this gathers the weight vector of the class each RoI needs: with thousands of classes
    that is the difference between (N, 28, 28) and (N, K+1, 28, 28) logits.
    """

    def __init__(self, in_channels: int, class_weights: nn.Module, mlp_branch: Optional[MLPMaskBranch] = None):
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, in_channels, 2, stride=2)
        self.class_weights = class_weights
        self.mlp_branch = mlp_branch
        nn.init.kaiming_normal_(self.upsample.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.upsample.bias)

    @property
    def class_agnostic(self) -> bool:
        return isinstance(self.class_weights, ClassAgnosticMaskWeights)

    def forward(self, features: torch.Tensor, class_ids: torch.Tensor, box_predictor: nn.Module) -> torch.Tensor:
        """features (N, C, 14, 14), class_ids (N,) -> mask logits (N, 28, 28)."""
        weights, bias = self.class_weights(box_predictor)
        if self.class_agnostic:
            class_ids = torch.zeros_like(class_ids)
        x = F.relu(self.upsample(features))
        logits = torch.einsum("nchw,nc->nhw", x, weights[class_ids].to(x.dtype)) + bias[class_ids, None, None]
        if self.mlp_branch is not None:
            logits = logits + self.mlp_branch(features)
        return logits
