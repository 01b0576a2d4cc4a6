"""The weight transfer function of Mask^X R-CNN (Hu et al. 2018, Sec. 3.1).

The mask head's per-class weights are predicted from the box head's per-class weights,
w_seg[c] = T(w_det[c]), so classes with boxes but no masks (set B) still get a mask predictor.
Official definitions: GitHub ronghanghu/seg_every_thing, `lib/modeling/mask_rcnn_heads.py`,
`bbox2mask_weight_transfer` (T) and `add_mask_rcnn_outputs` (its input, stop-gradient, no bias).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

from .mask_head import msra_fill

# Official: T's hidden layers use LeakyReLU with this slope (cfg.MRCNN.BBOX2MASK.USE_LEAKYRELU).
LEAKY_RELU_SLOPE = 0.1


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
    """T: an MLP (Sec. 3.1: two layers with LeakyReLU work best) or, with num_layers=1, a linear map.
    Official: every layer MSRA-initialized with zero bias; the hidden width is the mask head's."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, num_layers: int, activation: str):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(msra_fill(nn.Linear(d_in, d_out)))
            if i < num_layers - 1:
                layers.append(nn.LeakyReLU(LEAKY_RELU_SLOPE) if activation == "leaky_relu" else nn.ReLU())
        self.mlp = nn.Sequential(*layers)

    def forward(self, det_weights: torch.Tensor) -> torch.Tensor:
        """(K+1, D_det) -> (K+1, D_mask)."""
        return self.mlp(det_weights)


class RandomClassEmbedding(nn.Module):
    """Table 1a's control input of T: a fixed random vector per class (official: `v_randn_0`, a stored
    Gaussian embedding of width 300 taken as T's input with no gradient; background zeros: its
    add_embeddings_to_weights.py), seeded so every rank and every restart has the same one; saved with
    the weights."""

    def __init__(self, num_classes: int, dim: int, seed: int, std: float):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        embedding = torch.randn(num_classes, dim, generator=generator) * std
        embedding[0] = 0.0
        self.register_buffer("embedding", embedding)

    def forward(self) -> torch.Tensor:
        return self.embedding


class TransferredMaskWeights(nn.Module):
    """Mask weights for every class computed from the box predictor (or a fixed random embedding) at
    each forward. Official: the mask conv with predicted weights has no bias term."""

    def __init__(self, transfer: WeightTransfer, source: str, stop_gradient: bool,
                 embedding: Optional[RandomClassEmbedding] = None):
        super().__init__()
        if (source == "randn") != (embedding is not None):
            raise ValueError("transfer_input randn needs a RandomClassEmbedding, and only it takes one")
        self.transfer = transfer
        self.source = source
        self.stop_gradient = stop_gradient
        self.embedding = embedding
        # A control (docs/ablation.md), never set in training: T reads row input_rows[c] of w_det for
        # class c, e.g. another family's set-B row, while the box head detects as it is.
        self.input_rows: Optional[torch.Tensor] = None

    def forward(self, box_predictor: FastRCNNPredictor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        w_det = self.embedding() if self.embedding is not None else det_weights(box_predictor, self.source)
        if self.input_rows is not None:
            w_det = w_det[self.input_rows.to(w_det.device)]
        if self.stop_gradient:
            # Sec. 3.1: the mask loss trains T, never the box head's weights.
            w_det = w_det.detach()
        return self.transfer(w_det), None
