"""Mask^X R-CNN assembled from its parts, and the one builder that reads ModelConfig."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from .backbone import resnet_fpn_backbone
from .config import MaskHeadConfig, ModelConfig
from .losses import sigmoid_prior_bias, softmax_prior_bias
from .mask_head import ClassAgnosticMaskWeights, ClassSpecificMaskWeights, MaskXPredictor, MLPMaskBranch
from .roi_heads import MaskXRoIHeads
from .rpn import MaskXRPN
from .transfer import TransferredMaskWeights, WeightTransfer, det_weights_dim

FPN_LEVELS = ["0", "1", "2", "3"]


class MaskXRCNN(GeneralizedRCNN):
    """GeneralizedRCNN(backbone, rpn, roi_heads, transform), as torchvision's Mask R-CNN.

    Training targets per image: boxes (N, 4) xyxy float, labels (N,) int64, and optionally has_mask
    (N,) bool with masks, uint8, either compact (M, h, w): one row per instance with has_mask, in
    order (what maskx's stream gives), or torchvision's full (N, h, w); images with boxes only omit
    masks. Masks cover the whole image at any resolution (the source's, typically), not necessarily
    the input's. Inference returns torchvision's dicts: boxes, labels, scores, masks (N, 1, H, W).
    """


IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class PreResizedTransform(GeneralizedRCNNTransform):
    """torchvision's transform (normalize, batch; resize at inference) for training images that the
    step has resized already (`maskx.datasets.batch.Batch.to_device`, on the device)."""

    def resize(self, image: torch.Tensor, target: Optional[dict] = None) -> tuple[torch.Tensor, Optional[dict]]:
        if self.training:
            return image, target
        return super().resize(image, target)


def build_mask_predictor(cfg: MaskHeadConfig, num_classes: int, box_head_dim: int) -> MaskXPredictor:
    channels = cfg.conv_channels
    if cfg.mode == "class_specific":
        class_weights: nn.Module = ClassSpecificMaskWeights(num_classes, channels)
    elif cfg.mode == "class_agnostic":
        class_weights = ClassAgnosticMaskWeights(channels)
    else:
        transfer = WeightTransfer(
            in_dim=det_weights_dim(box_head_dim, cfg.transfer_input),
            out_dim=channels,
            hidden_dim=cfg.transfer_hidden,
            num_layers=cfg.transfer_layers,
            activation=cfg.transfer_activation,
        )
        class_weights = TransferredMaskWeights(transfer, cfg.transfer_input, cfg.stop_gradient)
    mlp_branch = MLPMaskBranch(channels, cfg.mlp_channels) if cfg.mode == "transfer+mlp" else None
    return MaskXPredictor(channels, class_weights, mlp_branch)


def build_model(cfg: ModelConfig) -> MaskXRCNN:
    cfg.validate()
    bb = cfg.backbone
    backbone = resnet_fpn_backbone(bb.name, bb.fpn_channels, bb.norm, bb.trainable_layers, bb.weights)
    channels = backbone.out_channels

    anchors = AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes), (tuple(cfg.aspect_ratios),) * len(cfg.anchor_sizes))
    rpn_head = RPNHead(channels, anchors.num_anchors_per_location()[0])
    if cfg.rpn_loss.kind == "focal":
        nn.init.constant_(rpn_head.cls_logits.bias, sigmoid_prior_bias(cfg.rpn_loss.prior_prob))
    rpn = MaskXRPN(
        anchors, rpn_head,
        fg_iou_thresh=0.7, bg_iou_thresh=0.3,
        batch_size_per_image=cfg.rpn_batch_size_per_image, positive_fraction=0.5,
        pre_nms_top_n={"training": cfg.rpn_pre_nms_top_n_train, "testing": cfg.rpn_pre_nms_top_n_test},
        post_nms_top_n={"training": cfg.rpn_post_nms_top_n_train, "testing": cfg.rpn_post_nms_top_n_test},
        nms_thresh=0.7,
        loss_kind=cfg.rpn_loss.kind, focal_gamma=cfg.rpn_loss.gamma, focal_alpha=cfg.rpn_loss.alpha,
    )

    box_predictor = FastRCNNPredictor(cfg.box_head_dim, cfg.num_classes)
    if cfg.box_loss.kind == "focal":
        with torch.no_grad():
            box_predictor.cls_score.bias.copy_(softmax_prior_bias(cfg.num_classes, cfg.box_loss.prior_prob))
    mh = cfg.mask_head
    roi_heads = MaskXRoIHeads(
        box_roi_pool=MultiScaleRoIAlign(FPN_LEVELS, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(channels * 7 * 7, cfg.box_head_dim),
        box_predictor=box_predictor,
        fg_iou_thresh=0.5, bg_iou_thresh=0.5,
        batch_size_per_image=cfg.box_batch_size_per_image, positive_fraction=0.25,
        bbox_reg_weights=None,
        score_thresh=cfg.box_score_thresh, nms_thresh=cfg.box_nms_thresh, detections_per_img=cfg.detections_per_img,
        mask_roi_pool=MultiScaleRoIAlign(FPN_LEVELS, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(channels, [mh.conv_channels] * mh.num_convs, dilation=1),
        mask_predictor=build_mask_predictor(mh, cfg.num_classes, cfg.box_head_dim),
        num_classes=cfg.num_classes,
        mask_classes=cfg.mask_classes,
        loss_kind=cfg.box_loss.kind, focal_gamma=cfg.box_loss.gamma, focal_alpha=cfg.box_loss.alpha,
    )
    transform = PreResizedTransform(cfg.min_size, cfg.max_size, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    return MaskXRCNN(backbone, rpn, roi_heads, transform)
