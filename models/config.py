"""Typed configuration of the Mask^X R-CNN model.

`build_model` (models/mask_x_rcnn.py) is the only reader of these dataclasses; every module below it
takes plain arguments.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
NORMS = ("frozen_bn", "bn", "gn")
# Old names kept working (with a warning): "none" always built GroupNorm, as "gn" does.
RENAMED_NORMS = {"none": "gn"}
CLASSIFIER_LOSSES = ("ce", "focal")
MASK_HEAD_MODES = ("class_specific", "class_agnostic", "class_agnostic+mlp", "transfer", "transfer+mlp")
TRANSFER_INPUTS = ("cls", "box", "cls+box", "randn")
ACTIVATIONS = ("leaky_relu", "relu")
MLP_INPUTS = ("upsampled", "reduced")
LOSS_NORMALIZATIONS = ("step", "batch")
PROPOSAL_SCOPES = ("batch", "image")
MASK_TARGETS = ("binary", "soft")
# What `model.freeze` may name: the detector under the mask branch (the paper's stage-wise protocol).
FREEZABLE_PARTS = ("backbone", "rpn", "box_head")


def _check_choice(where: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")


# Unknown keys are errors when a loader validates these with pydantic (the orchestrator does);
# a plain dict keeps models/ free of that dependency.
_STRICT = {"extra": "forbid"}


@dataclass
class BackboneConfig:
    __pydantic_config__ = _STRICT
    name: str = "resnet50"  # the ResNet body: resnet18, resnet34, resnet50, resnet101 (torchvision's)
    fpn_channels: int = 256  # the FPN's width (256, the paper's; the tiny CPU configs use 64)
    # frozen_bn: the BN statistics of the ImageNet weights, frozen (Detectron; needs `weights`).
    # gn: GroupNorm(32), trains from scratch at any batch (the tiny CPU configs). bn: BatchNorm, synced
    # across the GPUs of a run (SyncBatchNorm), per process on CPU.
    norm: str = "frozen_bn"
    trainable_layers: int = 3  # ResNet stages trained, from the top (3: res3-res5, Detectron's; 5: all, from scratch)
    # A state dict of the ResNet body (torchvision key names): a local file, s3://BUCKET/KEY or an MLflow
    # run's artifact (runs:/ID/PATH), fetched where the model is built. Never downloaded from the internet.
    weights: Optional[str] = None

    @property
    def frozen(self) -> bool:
        """Whether part of the backbone keeps its starting values: frozen BN or frozen stages."""
        return self.norm == "frozen_bn" or self.trainable_layers < 5

    def validate(self, where: str = "model.backbone") -> None:
        _check_choice(f"{where}.name", self.name, BACKBONES)
        if self.norm in RENAMED_NORMS:
            warnings.warn(f"{where}.norm: {self.norm!r} is now called {RENAMED_NORMS[self.norm]!r} (it always built "
                          f"GroupNorm); write {RENAMED_NORMS[self.norm]!r}", FutureWarning, stacklevel=2)
            self.norm = RENAMED_NORMS[self.norm]
        _check_choice(f"{where}.norm", self.norm, NORMS)
        if not 0 <= self.trainable_layers <= 5:
            raise ValueError(f"{where}.trainable_layers: {self.trainable_layers} is not in 0..5")
        if self.fpn_channels <= 0:
            raise ValueError(f"{where}.fpn_channels: must be positive, got {self.fpn_channels}")


@dataclass
class ClassifierLossConfig:
    __pydantic_config__ = _STRICT
    kind: str = "ce"  # ce (softmax cross-entropy for the box head, sigmoid BCE for the RPN) or focal
    gamma: float = 2.0  # focal only: the focusing exponent (Lin et al. 2017; 0 is cross-entropy)
    # None: no alpha weighting. With kind=focal, gamma=0 and alpha=None the loss equals CE. Sampled
    # heads see a fixed foreground share already (docs/training.md, focal loss), so none by default.
    alpha: Optional[float] = None
    # focal only: the foreground probability the classifier starts at (Lin et al. 2017, Sec. 4.1: pi).
    # None: the sampler's foreground fraction (box head 0.25 spread over the classes, RPN 0.5), the
    # share of foreground among the samples the loss sees.
    prior_prob: Optional[float] = None

    def validate(self, where: str) -> None:
        _check_choice(f"{where}.kind", self.kind, CLASSIFIER_LOSSES)
        if self.gamma < 0:
            raise ValueError(f"{where}.gamma: must be >= 0, got {self.gamma}")
        if self.alpha is not None and not 0 <= self.alpha <= 1:
            raise ValueError(f"{where}.alpha: must be in [0, 1] or null, got {self.alpha}")
        if self.prior_prob is not None and not 0 < self.prior_prob < 1:
            raise ValueError(f"{where}.prior_prob: must be in (0, 1) or null, got {self.prior_prob}")


@dataclass
class MaskHeadConfig:
    __pydantic_config__ = _STRICT
    mode: str = "transfer+mlp"  # where class-specific mask weights come from: transfer, transfer+mlp, class_specific, class_agnostic, class_agnostic+mlp
    conv_channels: int = 256  # the mask head's 3x3 convolutions' width
    num_convs: int = 4  # 3x3 convolutions of the mask head before the upsampling (4, Mask R-CNN's)
    # Weight transfer function T (Sec. 3.1): w_seg[c] = T(w_det[c]). Official (bbox2mask_weight_transfer):
    # hidden width = the mask head's (null here), MSRA init, LeakyReLU 0.1, no bias on the mask conv.
    transfer_input: str = "cls+box"  # cls | box | cls+box | randn (a fixed random embedding per class)
    transfer_layers: int = 2  # T's layers: 1 (linear) or 2 (the paper's best, Table 1b)
    transfer_hidden: Optional[int] = None  # null: conv_channels
    transfer_activation: str = "leaky_relu"  # between T's layers: leaky_relu (0.1, official) or relu
    stop_gradient: bool = True  # T reads w_det without sending the mask loss back into the box head (Sec. 3.2, the paper's default)
    randn_dim: int = 300  # transfer_input randn: the embedding's width (official PRETRAINED_EMBED_DIM)
    randn_seed: int = 0  # transfer_input randn: the seed of the fixed embedding
    # transfer_input randn: the embedding's element std. Official `v_randn_0`
    # (lib/datasets/bbox2mask_dataset_processing/coco/glove_randn/fixed_embedding_mat_coco_randn_0.npy, 80 x
    # 300): std 0.0548, rows of norm ~0.94. maskx drew std 1 before 2026-12 (rows ~17: ~18x the official).
    randn_std: float = 0.0548
    # Class-agnostic MLP mask branch fused with the FCN logits (Sec. 3.4; official
    # cls_agnostic_mlp_branch): FC layers from the upsampled 28x28 mask features to 28x28 logits.
    mlp_layers: int = 1
    mlp_hidden: int = 1024  # the MLP branch's hidden width when mlp_layers > 1
    # upsampled: the official input. reduced: a 3x3 conv to mlp_channels on the 14x14 features first
    # (the tiny CPU configs: the official first FC is C*28*28 x 784 weights, 39M at 64 channels).
    mlp_input: str = "upsampled"
    mlp_channels: int = 128  # mlp_input reduced: the channels of the 3x3 conv before the MLP

    def validate(self, where: str = "model.mask_head") -> None:
        _check_choice(f"{where}.mode", self.mode, MASK_HEAD_MODES)
        _check_choice(f"{where}.transfer_input", self.transfer_input, TRANSFER_INPUTS)
        _check_choice(f"{where}.transfer_activation", self.transfer_activation, ACTIVATIONS)
        _check_choice(f"{where}.mlp_input", self.mlp_input, MLP_INPUTS)
        for key in ("transfer_layers", "mlp_layers", "num_convs", "randn_dim", "mlp_hidden", "mlp_channels"):
            if getattr(self, key) < 1:
                raise ValueError(f"{where}.{key}: must be >= 1, got {getattr(self, key)}")
        if self.transfer_hidden is not None and self.transfer_hidden < 1:
            raise ValueError(f"{where}.transfer_hidden: must be >= 1 or null, got {self.transfer_hidden}")

    @property
    def has_mlp_branch(self) -> bool:
        return self.mode.endswith("+mlp")


@dataclass
class ModelConfig:
    __pydantic_config__ = _STRICT
    # Classes including background (label 0), as in torchvision. None: whoever builds the model
    # fills it in (the orchestrator takes it from the shards' vocabulary).
    num_classes: Optional[int] = 81
    # Set A: labels whose ground-truth masks train the mask head. None: every class.
    mask_classes: Optional[list[int]] = None
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    box_loss: ClassifierLossConfig = field(default_factory=ClassifierLossConfig)
    rpn_loss: ClassifierLossConfig = field(default_factory=ClassifierLossConfig)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    # Where to start from: a torchvision Mask R-CNN state dict (maskrcnn_resnet50_fpn[_v2]: its COCO
    # classes' rows go to ours) or a maskx checkpoint folder, each local or s3://, or an MLflow model
    # (models:/, runs:/) of the same vocabulary (stage 2 of the stage-wise protocol). Never downloaded
    # from the internet.
    init_from: Optional[str] = None
    # Which parts to take from init_from (backbone, rpn, box_head, mask_head); null: every tensor that fits,
    # allowed only where every class is in set A (a mask head that saw set-B masks would void the run).
    init_from_parts: Optional[list[str]] = None
    # Parts that keep their starting values (no gradient, no weight decay, norm layers in eval mode; a
    # frozen RPN proposes as at inference and has no loss; a frozen box head has none either).
    freeze: list[str] = field(default_factory=list)
    # step: every loss normalized by what the global step holds, so a step's gradient does not depend on
    # how its images are cut into micro-batches and ranks. batch: torchvision's means over each batch.
    loss_normalization: str = "step"
    min_size: int = 800  # the model's resize at inference: shorter side (training images come resized by the stream: data.min_sizes)
    max_size: int = 1333  # the longer side's limit for that resize
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])  # one anchor size per FPN level, P2-P6 (Detectron's)
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # anchor aspect ratios at every level
    box_head_dim: int = 1024  # the box head's two FC layers' width: also the width of w_det's rows that T reads
    rpn_batch_size_per_image: int = 256  # anchors sampled per image for the RPN's losses (half foreground at most)
    rpn_pre_nms_top_n_train: int = 2000  # training: proposals per level kept before NMS
    rpn_post_nms_top_n_train: int = 2000  # training: proposals kept after NMS (per batch or image: rpn_post_nms_per)
    # In training, rpn_post_nms_top_n_train proposals per batch (each rank's micro-batch: the official FPN
    # collect, 2000 for a GPU's 2 images) or per image (torchvision, detectron2). Per batch, which images
    # share a micro-batch changes their proposals, as their padding already does (docs/training.md).
    rpn_post_nms_per: str = "batch"
    rpn_pre_nms_top_n_test: int = 1000  # inference: proposals per level kept before NMS
    rpn_post_nms_top_n_test: int = 1000  # inference: proposals per image kept after NMS
    box_batch_size_per_image: int = 512  # RoIs sampled per image for the box losses (a quarter foreground at most)
    # Fast R-CNN box regression's smooth-L1 beta: 1.0 (official: fast_rcnn_heads.py's SmoothL1Loss, Caffe2's
    # default); torchvision's 1/9. The RPN's stays 1/9 in both.
    box_reg_beta: float = 1.0
    # Mask targets in each RoI: binary (official: lib/roi_data/mask_rcnn.py rasterizes the polygon in the
    # RoI at 28x28 and keeps mask > 0; here RoIAlign of the mask at >= 0.5) or soft (torchvision: RoIAlign's
    # fractions as BCE targets).
    mask_target: str = "binary"
    box_score_thresh: float = 0.05  # inference: detections scoring under this are dropped
    box_nms_thresh: float = 0.5  # inference: class-wise NMS IoU
    detections_per_img: int = 100  # inference: the most detections an image keeps (COCO's 100)

    def validate(self, where: str = "model", require_num_classes: bool = True) -> None:
        if self.num_classes is None:
            if require_num_classes:
                raise ValueError(f"{where}.num_classes: not set")
        elif self.num_classes < 2:
            raise ValueError(f"{where}.num_classes: needs background plus at least one class, got {self.num_classes}")
        if self.mask_classes is not None and self.num_classes is not None:
            bad = [c for c in self.mask_classes if not 0 < c < self.num_classes]
            if bad:
                raise ValueError(f"{where}.mask_classes: labels {bad[:5]} are outside 1..{self.num_classes - 1}")
        if len(self.anchor_sizes) != 5:
            raise ValueError(f"{where}.anchor_sizes: one size per FPN level (5), got {len(self.anchor_sizes)}")
        _check_choice(f"{where}.loss_normalization", self.loss_normalization, LOSS_NORMALIZATIONS)
        _check_choice(f"{where}.rpn_post_nms_per", self.rpn_post_nms_per, PROPOSAL_SCOPES)
        _check_choice(f"{where}.mask_target", self.mask_target, MASK_TARGETS)
        if self.box_reg_beta < 0:
            raise ValueError(f"{where}.box_reg_beta: smooth-L1's beta, 0 or more; got {self.box_reg_beta}")
        for part in self.freeze:
            _check_choice(f"{where}.freeze", part, FREEZABLE_PARTS)
        for part in self.init_from_parts or []:
            _check_choice(f"{where}.init_from_parts", part, FREEZABLE_PARTS + ("mask_head",))
        self.backbone.validate(f"{where}.backbone")
        self.box_loss.validate(f"{where}.box_loss")
        self.rpn_loss.validate(f"{where}.rpn_loss")
        self.mask_head.validate(f"{where}.mask_head")
