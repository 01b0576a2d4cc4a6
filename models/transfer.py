"""The weight transfer function of Mask^X R-CNN (Hu et al. 2018, Sec. 3.1).

The mask head's per-class weights are predicted from the box head's per-class weights,
w_seg[c] = T(w_det[c]), so classes with boxes but no masks (set B) still get a mask predictor.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor


def det_weights(box_predictor: FastRCNNPredictor, source: str) -> torch.Tensor:
    """The box head's per-class weights w_det, (K+1, D): D = 1024 (cls), 4*1024 (box) or 5*1024."""
    num_classes = box_predictor.cls_score.out_features
    cls = box_predictor.cls_score.weight
    box = box_predictor.bbox_pred.weight.reshape(num_classes, -1)
    if source == "cls":
        return cls
    if source == "box":
        return box
    return torch.cat([cls, box], dim=1)


def det_weights_dim(representation_dim: int, source: str) -> int:
    return {"cls": 1, "box": 4, "cls+box": 5}[source] * representation_dim


class WeightTransfer(nn.Module):
    """T: an MLP (Sec. 3.1: two layers with LeakyReLU work best) or, with num_layers=1, a linear map."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, num_layers: int, activation: str):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < num_layers - 1:
                layers.append(nn.LeakyReLU(0.1) if activation == "leaky_relu" else nn.ReLU())
        self.mlp = nn.Sequential(*layers)

    def forward(self, det_weights: torch.Tensor) -> torch.Tensor:
        """(K+1, D_det) -> (K+1, D_mask)."""
        return self.mlp(det_weights)


class TransferredMaskWeights(nn.Module):
    """Mask weights for every class computed from the box predictor at each forward."""

    def __init__(self, transfer: WeightTransfer, source: str, stop_gradient: bool):
        super().__init__()
        self.transfer = transfer
        self.source = source
        self.stop_gradient = stop_gradient
        # One class-agnostic bias: T predicts weights only.
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, box_predictor: FastRCNNPredictor) -> tuple[torch.Tensor, torch.Tensor]:
        w_det = det_weights(box_predictor, self.source)
        if self.stop_gradient:
            # Sec. 3.1: the mask loss trains T, never the box head's weights.
            w_det = w_det.detach()
        w_seg = self.transfer(w_det)
        return w_seg, self.bias.expand(w_seg.shape[0])
