"""Mask^X R-CNN assembled from its parts, and the one builder that reads ModelConfig."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from .backbone import resnet_fpn_backbone
from .config import ClassifierLossConfig, MaskHeadConfig, ModelConfig
from .losses import sigmoid_prior_bias, softmax_prior_bias
from .mask_head import ClassAgnosticMaskWeights, ClassSpecificMaskWeights, MaskXPredictor, MLPMaskBranch
from .roi_heads import MaskXRoIHeads
from .rpn import Float32AnchorGenerator, Float32RPNHead, MaskXRPN
from .transfer import RandomClassEmbedding, TransferredMaskWeights, WeightTransfer, det_weights_dim

FPN_LEVELS = ["0", "1", "2", "3"]
# The samplers' foreground fractions (Detectron's TRAIN.RPN_FG_FRACTION and TRAIN.FG_FRACTION).
RPN_POSITIVE_FRACTION = 0.5
BOX_POSITIVE_FRACTION = 0.25
# Detectron's box head (fast_rcnn_heads.py; detectron2's FastRCNNOutputLayers the same): class scores
# from std 0.01, box deltas from std 0.001, zero biases; the two FC layers XavierFill.
CLS_SCORE_STD = 0.01
BBOX_PRED_STD = 0.001


class MaskXRCNN(GeneralizedRCNN):
    """GeneralizedRCNN(backbone, rpn, roi_heads, transform), as torchvision's Mask R-CNN.

    `frozen`: parts (`backbone`, `rpn`, `box_head`) that keep their values; they stay in eval mode when
    the model trains (norm layers keep their statistics, the RPN proposes as at inference).

    Training targets per image: boxes (N, 4) xyxy float, labels (N,) int64, and optionally has_mask
    (N,) bool with masks, uint8, either compact (M, h, w): one row per instance with has_mask, in
    order (what maskx's stream gives), or torchvision's full (N, h, w); images with boxes only omit
    masks. Masks cover the whole image at any resolution (the source's, typically), not necessarily
    the input's. Inference returns torchvision's dicts: boxes, labels, scores, masks (N, 1, H, W);
    with `transform.paste_masks = False`, mask_probs (N, 1, M, M) instead of masks.
    """

    def __init__(self, backbone, rpn, roi_heads, transform, frozen: tuple[str, ...] = ()):
        super().__init__(backbone, rpn, roi_heads, transform)
        self.frozen = tuple(frozen)
        for part in self.frozen:
            for module in self.frozen_modules(part):
                module.requires_grad_(False)

    def frozen_modules(self, part: str) -> list[nn.Module]:
        return {"backbone": [self.backbone], "rpn": [self.rpn],
                "box_head": [self.roi_heads.box_head, self.roi_heads.box_predictor]}[part]

    def train(self, mode: bool = True) -> "MaskXRCNN":
        super().train(mode)
        for part in self.frozen:
            for module in self.frozen_modules(part):
                module.eval()
        return self


IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class PreResizedTransform(GeneralizedRCNNTransform):
    """torchvision's transform (normalize, batch; resize at inference) for training images that the
    step has resized already (`maskx.datasets.batch.Batch.to_device`, on the device).

    `paste_masks = False` leaves each detection's mask at inference as the head's (1, M, M)
    probabilities, under `mask_probs` instead of `masks` (the boxes are in the input's pixels either
    way): torchvision pastes every detection's mask on the whole input as floats at once, N x H x W,
    7.9 GB of peak memory for 100 detections on a 3000x3000 image. Whoever reads the detections then
    pastes the ones it keeps, one at a time (torchvision's `paste_masks_in_image` on one mask).

    `prepared_inputs = True` takes images at inference as `prepare` left them (normalized and
    resized: a batch job does that on CPU tasks elsewhere) and only batches them; the boxes come back
    in the prepared image's pixels."""

    paste_masks = True
    prepared_inputs = False

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """One float image normalized and resized as `forward` does at inference, before batching."""
        return super().resize(super().normalize(image))[0]

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if self.prepared_inputs and not self.training:
            return image
        return super().normalize(image)

    def resize(self, image: torch.Tensor, target: Optional[dict] = None) -> tuple[torch.Tensor, Optional[dict]]:
        if self.training or self.prepared_inputs:
            return image, target
        return super().resize(image, target)

    def postprocess(self, result: list[dict], image_shapes: list[tuple[int, int]],
                    original_image_sizes: list[tuple[int, int]]) -> list[dict]:
        if self.training or self.paste_masks:
            return super().postprocess(result, image_shapes, original_image_sizes)
        mask_probs = [r.pop("masks") for r in result]
        result = super().postprocess(result, image_shapes, original_image_sizes)
        for r, probs in zip(result, mask_probs):
            r["mask_probs"] = probs
        return result


def build_mask_predictor(cfg: MaskHeadConfig, num_classes: int, box_head_dim: int) -> MaskXPredictor:
    channels = cfg.conv_channels
    if cfg.mode == "class_specific":
        class_weights: nn.Module = ClassSpecificMaskWeights(num_classes, channels)
    elif cfg.mode.startswith("class_agnostic"):
        class_weights = ClassAgnosticMaskWeights(channels)
    else:
        embedding = None
        in_dim = cfg.randn_dim if cfg.transfer_input == "randn" else det_weights_dim(box_head_dim, cfg.transfer_input)
        if cfg.transfer_input == "randn":
            embedding = RandomClassEmbedding(num_classes, cfg.randn_dim, cfg.randn_seed, cfg.randn_std)
        transfer = WeightTransfer(in_dim=in_dim, out_dim=channels, hidden_dim=cfg.transfer_hidden or channels,
                                  num_layers=cfg.transfer_layers, activation=cfg.transfer_activation)
        class_weights = TransferredMaskWeights(transfer, cfg.transfer_input, cfg.stop_gradient, embedding)
    mlp_branch = None
    if cfg.has_mlp_branch:
        mlp_branch = MLPMaskBranch(channels, cfg.mlp_layers, cfg.mlp_hidden,
                                   cfg.mlp_channels if cfg.mlp_input == "reduced" else None)
    return MaskXPredictor(channels, class_weights, mlp_branch)


def build_box_head(in_features: int, representation_dim: int, num_classes: int,
                   loss: ClassifierLossConfig) -> tuple[TwoMLPHead, FastRCNNPredictor]:
    """torchvision's two-FC box head and predictor, initialized as Detectron's: the predictor's weights
    are what the weight transfer function reads at its first step."""
    head, predictor = TwoMLPHead(in_features, representation_dim), FastRCNNPredictor(representation_dim, num_classes)
    for fc in (head.fc6, head.fc7):
        nn.init.kaiming_uniform_(fc.weight, a=1)  # Caffe2's XavierFill: U(+-sqrt(3 / fan_in))
        nn.init.zeros_(fc.bias)
    nn.init.normal_(predictor.cls_score.weight, std=CLS_SCORE_STD)
    nn.init.normal_(predictor.bbox_pred.weight, std=BBOX_PRED_STD)
    nn.init.zeros_(predictor.bbox_pred.bias)
    with torch.no_grad():
        if loss.kind == "focal":
            predictor.cls_score.bias.copy_(softmax_prior_bias(num_classes, loss.prior_prob or BOX_POSITIVE_FRACTION))
        else:
            predictor.cls_score.bias.zero_()
    return head, predictor


def build_model(cfg: ModelConfig) -> MaskXRCNN:
    cfg.validate()
    bb = cfg.backbone
    backbone = resnet_fpn_backbone(bb.name, bb.fpn_channels, bb.norm, bb.trainable_layers, bb.weights)
    channels = backbone.out_channels

    anchors = Float32AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes), (tuple(cfg.aspect_ratios),) * len(cfg.anchor_sizes))
    rpn_head = Float32RPNHead(channels, anchors.num_anchors_per_location()[0])
    if cfg.rpn_loss.kind == "focal":
        nn.init.constant_(rpn_head.cls_logits.bias, sigmoid_prior_bias(cfg.rpn_loss.prior_prob or RPN_POSITIVE_FRACTION))
    rpn = MaskXRPN(
        anchors, rpn_head,
        fg_iou_thresh=0.7, bg_iou_thresh=0.3,
        batch_size_per_image=cfg.rpn_batch_size_per_image, positive_fraction=RPN_POSITIVE_FRACTION,
        pre_nms_top_n={"training": cfg.rpn_pre_nms_top_n_train, "testing": cfg.rpn_pre_nms_top_n_test},
        post_nms_top_n={"training": cfg.rpn_post_nms_top_n_train, "testing": cfg.rpn_post_nms_top_n_test},
        nms_thresh=0.7,
        loss_kind=cfg.rpn_loss.kind, focal_gamma=cfg.rpn_loss.gamma, focal_alpha=cfg.rpn_loss.alpha,
        loss_normalization=cfg.loss_normalization, post_nms_per=cfg.rpn_post_nms_per,
    )

    box_head, box_predictor = build_box_head(channels * 7 * 7, cfg.box_head_dim, cfg.num_classes, cfg.box_loss)
    mh = cfg.mask_head
    roi_heads = MaskXRoIHeads(
        box_roi_pool=MultiScaleRoIAlign(FPN_LEVELS, output_size=7, sampling_ratio=2),
        box_head=box_head,
        box_predictor=box_predictor,
        fg_iou_thresh=0.5, bg_iou_thresh=0.5,
        batch_size_per_image=cfg.box_batch_size_per_image, positive_fraction=BOX_POSITIVE_FRACTION,
        bbox_reg_weights=None,
        score_thresh=cfg.box_score_thresh, nms_thresh=cfg.box_nms_thresh, detections_per_img=cfg.detections_per_img,
        mask_roi_pool=MultiScaleRoIAlign(FPN_LEVELS, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(channels, [mh.conv_channels] * mh.num_convs, dilation=1),
        mask_predictor=build_mask_predictor(mh, cfg.num_classes, cfg.box_head_dim),
        num_classes=cfg.num_classes,
        mask_classes=cfg.mask_classes,
        loss_kind=cfg.box_loss.kind, focal_gamma=cfg.box_loss.gamma, focal_alpha=cfg.box_loss.alpha,
        loss_normalization=cfg.loss_normalization, box_reg_beta=cfg.box_reg_beta, mask_target=cfg.mask_target,
    )
    return MaskXRCNN(backbone, rpn, roi_heads, build_transform(cfg), frozen=tuple(cfg.freeze))


def build_transform(cfg: ModelConfig) -> PreResizedTransform:
    """The model's input transform alone (no weights): what a batch job's CPU tasks prepare images with."""
    return PreResizedTransform(cfg.min_size, cfg.max_size, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
