"""Classification losses of the box head and the RPN: cross-entropy or focal loss, as sums over the
sampled RoIs or anchors divided by a normalizer the caller chooses (`loss_normalization`).

Focal loss in a sampled head (docs/training.md): Lin et al. divide the focal loss of a dense detector by
its number of foreground anchors and start every class at probability pi = 0.01, because there ~100k
anchors, nearly all easy background, would otherwise swamp the loss and the first steps. A two-stage
head samples its RoIs at a fixed foreground share (25% at most in the box head, 50% in the RPN), so
here the focal loss keeps the normalizer of the cross-entropy it replaces (a foreground count that
swings with each image's positives would make the weight of an RoI swing with it), and the prior
matches what the sampler feeds the classifier: background at 1 - fraction, the fraction shared by the
foreground classes.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss


def softmax_focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float,
                       alpha: Optional[float] = None) -> torch.Tensor:
    """Per-row focal loss -alpha_t (1 - p_t)^gamma log p_t over a softmax with background at label 0.

    logits: (N, K+1); labels: (N,) in 0..K -> (N,). torchvision.ops only has the sigmoid form, which
    cannot equal softmax cross-entropy; with gamma=0 and alpha=None this one does.
    alpha weights foreground rows and 1 - alpha the background ones (Lin et al. 2017, Sec. 3.1).
    """
    log_pt = F.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
    loss = -log_pt if gamma == 0 else -((1.0 - log_pt.exp()) ** gamma) * log_pt
    if alpha is not None:
        loss = torch.where(labels > 0, alpha, 1.0 - alpha) * loss
    return loss


def box_classifier_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str, gamma: float, alpha: Optional[float],
                        normalizer: float) -> torch.Tensor:
    """The box head's classification loss summed over its sampled RoIs, divided by `normalizer`."""
    if kind == "ce":
        return F.cross_entropy(logits, labels, reduction="sum") / normalizer
    return softmax_focal_loss(logits, labels, gamma, alpha).sum() / normalizer


def objectness_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str, gamma: float, alpha: Optional[float],
                    normalizer: float) -> torch.Tensor:
    """Binary loss of the RPN's objectness logits (N,) against labels (N,) in {0, 1}, summed, divided."""
    if kind == "ce":
        return F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / normalizer
    return sigmoid_focal_loss(logits, labels, alpha=-1 if alpha is None else alpha, gamma=gamma,
                              reduction="sum") / normalizer


def softmax_prior_bias(num_classes: int, prior_prob: float) -> torch.Tensor:
    """Classifier bias (K+1,): background starts at probability 1 - prior_prob and the K foreground
    classes share prior_prob (the softmax form of Lin et al.'s pi init)."""
    bias = torch.zeros(num_classes)
    bias[0] = math.log((num_classes - 1) * (1.0 - prior_prob) / prior_prob)
    return bias


def sigmoid_prior_bias(prior_prob: float) -> float:
    return -math.log((1.0 - prior_prob) / prior_prob)
