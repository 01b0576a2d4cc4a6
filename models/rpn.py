"""torchvision's RPN with a configurable objectness loss (cross-entropy or focal) and normalizer, and
the training proposals kept per image (torchvision) or per batch (the official FPN collect).

Box geometry stays float32 under autocast. torchvision makes anchors in the feature maps' dtype and
decodes proposals in the head's, which under bf16 autocast is bf16: 8 bits of mantissa, so between
1024 and 2048 px a coordinate can only be a multiple of 8 (anchors off by up to 7 px, regression
targets of small boxes wrong, NMS's per-level offsets flipping suppression). Here the anchors are
float32 and the head's outputs are cast to float32 before anything decodes or scores them; every box
after them (proposals, RoIs, regression targets, the mask targets' RoIs) follows in float32."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from .losses import objectness_loss
from .sampling import RPN_STREAM, SeededSampler, sampling_seeds


class Float32AnchorGenerator(AnchorGenerator):
    """torchvision's anchors, always float32 (the feature maps only give their grid sizes and device)."""

    def forward(self, image_list, feature_maps):
        grids = [torch.empty((), dtype=torch.float32, device=f.device).expand(f.shape) for f in feature_maps]
        return super().forward(image_list, grids)


class Float32RPNHead(RPNHead):
    """torchvision's RPN head (the same parameters), its objectness and box deltas returned in float32."""

    def forward(self, x):
        logits, bbox_reg = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in bbox_reg]


class MaskXRPN(RegionProposalNetwork):
    def __init__(self, *args, loss_kind: str = "ce", focal_gamma: float = 2.0, focal_alpha: Optional[float] = None,
                 loss_normalization: str = "step", post_nms_per: str = "batch", **kwargs):
        super().__init__(*args, **kwargs)
        self.post_nms_per = post_nms_per
        self.fg_bg_sampler = SeededSampler(self.fg_bg_sampler.batch_size_per_image, self.fg_bg_sampler.positive_fraction)
        self.loss_normalization = loss_normalization
        self.loss_kind = loss_kind
        self.focal_gamma = focal_gamma
        self.focal_alpha = focal_alpha

    def forward(self, images, features, targets=None):
        self.fg_bg_sampler.seeds = sampling_seeds(targets, RPN_STREAM) if self.training else None
        return super().forward(images, features, targets)

    def filter_proposals(self, proposals, objectness, image_shapes, num_anchors_per_level):
        boxes, scores = super().filter_proposals(proposals, objectness, image_shapes, num_anchors_per_level)
        if not self.training or self.post_nms_per == "image" or len(scores) < 2:
            return boxes, scores
        # Official (lib/ops/collect_and_distribute_fpn_rpn_proposals.py, collect): in training the batch
        # keeps its top RPN_POST_NMS_TOP_N proposals over every image, not that many per image.
        everything = torch.cat(scores)
        keep = torch.zeros_like(everything, dtype=torch.bool)
        keep[everything.topk(min(self.post_nms_top_n(), everything.numel())).indices] = True
        kept = keep.split([len(s) for s in scores])
        return [b[k] for b, k in zip(boxes, kept)], [s[k] for s, k in zip(scores, kept)]

    # Same as RegionProposalNetwork.compute_loss but for the objectness loss, which it hard-codes to BCE,
    # and the normalizer: the anchors sampled in the batch (batch, torchvision's), or each image's quota
    # (step: the same whenever every image fills its quota, as images with thousands of anchors do).
    def compute_loss(
        self, objectness: torch.Tensor, pred_bbox_deltas: torch.Tensor, labels: list[torch.Tensor],
        regression_targets: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        sampled_pos_inds = torch.where(torch.cat(sampled_pos, dim=0))[0]
        sampled_neg_inds = torch.where(torch.cat(sampled_neg, dim=0))[0]
        sampled_inds = torch.cat([sampled_pos_inds, sampled_neg_inds], dim=0)

        normalizer = (max(sampled_inds.numel(), 1) if self.loss_normalization == "batch"
                      else len(labels) * self.fg_bg_sampler.batch_size_per_image)
        labels = torch.cat(labels, dim=0)
        regression_targets = torch.cat(regression_targets, dim=0)
        box_loss = F.smooth_l1_loss(
            pred_bbox_deltas[sampled_pos_inds], regression_targets[sampled_pos_inds], beta=1 / 9, reduction="sum"
        ) / normalizer
        loss = objectness_loss(objectness.flatten()[sampled_inds], labels[sampled_inds], self.loss_kind, self.focal_gamma,
                               self.focal_alpha, normalizer)
        return loss, box_loss
