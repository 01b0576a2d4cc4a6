"""Typed configuration of the Mask^X R-CNN model.

`build_model` (models/mask_x_rcnn.py) is the only reader of these dataclasses; every module below it
takes plain arguments.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
NORMS = ("frozen_bn", "bn", "gn")
CLASSIFIER_LOSSES = ("ce", "focal")
MASK_HEAD_MODES = ("class_specific", "class_agnostic", "transfer", "transfer+mlp")
TRANSFER_INPUTS = ("cls", "box", "cls+box")
ACTIVATIONS = ("leaky_relu", "relu")


def _check_choice(where: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")


# Unknown keys are errors when a loader validates these with pydantic (the orchestrator does);
# a plain dict keeps models/ free of that dependency.
_STRICT = {"extra": "forbid"}


@dataclass
class BackboneConfig:
    __pydantic_config__ = _STRICT
    name: str = "resnet50"
    fpn_channels: int = 256
    # Frozen BN as in detectron2 when starting from weights; "gn" or "bn" train from scratch.
    norm: str = "frozen_bn"
    trainable_layers: int = 3
    # A local state dict of the ResNet body (torchvision key names). Never downloaded.
    weights: Optional[str] = None

    def validate(self, where: str = "model.backbone") -> None:
        _check_choice(f"{where}.name", self.name, BACKBONES)
        _check_choice(f"{where}.norm", self.norm, NORMS)
        if not 0 <= self.trainable_layers <= 5:
            raise ValueError(f"{where}.trainable_layers: {self.trainable_layers} is not in 0..5")
        if self.fpn_channels <= 0:
            raise ValueError(f"{where}.fpn_channels: must be positive, got {self.fpn_channels}")


@dataclass
class ClassifierLossConfig:
    __pydantic_config__ = _STRICT
    kind: str = "ce"
    gamma: float = 2.0
    # None: no alpha weighting. With kind=focal, gamma=0 and alpha=None the loss equals CE.
    alpha: Optional[float] = 0.25
    # Lin et al. 2017, Sec. 4.1: bias init so every foreground class starts at probability pi.
    prior_prob: float = 0.01

    def validate(self, where: str) -> None:
        _check_choice(f"{where}.kind", self.kind, CLASSIFIER_LOSSES)
        if self.gamma < 0:
            raise ValueError(f"{where}.gamma: must be >= 0, got {self.gamma}")
        if self.alpha is not None and not 0 <= self.alpha <= 1:
            raise ValueError(f"{where}.alpha: must be in [0, 1] or null, got {self.alpha}")
        if not 0 < self.prior_prob < 1:
            raise ValueError(f"{where}.prior_prob: must be in (0, 1), got {self.prior_prob}")


@dataclass
class MaskHeadConfig:
    __pydantic_config__ = _STRICT
    mode: str = "transfer+mlp"
    conv_channels: int = 256
    num_convs: int = 4
    # Weight transfer function T (Sec. 3.1): w_seg[c] = T(w_det[c]).
    transfer_input: str = "cls+box"
    transfer_layers: int = 2
    transfer_hidden: int = 1024
    transfer_activation: str = "leaky_relu"
    stop_gradient: bool = True
    # Class-agnostic MLP mask branch (Sec. 3.4); channels of its 3x3 reduction conv.
    mlp_channels: int = 128

    def validate(self, where: str = "model.mask_head") -> None:
        _check_choice(f"{where}.mode", self.mode, MASK_HEAD_MODES)
        _check_choice(f"{where}.transfer_input", self.transfer_input, TRANSFER_INPUTS)
        _check_choice(f"{where}.transfer_activation", self.transfer_activation, ACTIVATIONS)
        if self.transfer_layers < 1:
            raise ValueError(f"{where}.transfer_layers: must be >= 1, got {self.transfer_layers}")
        if self.num_convs < 1:
            raise ValueError(f"{where}.num_convs: must be >= 1, got {self.num_convs}")


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
    # A local torchvision Mask R-CNN state dict (maskrcnn_resnet50_fpn[_v2]) to start from: backbone,
    # FPN, RPN, box head, mask convs and the COCO classes' box predictor rows. Never downloaded.
    init_from: Optional[str] = None
    min_size: int = 800
    max_size: int = 1333
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    box_head_dim: int = 1024
    rpn_batch_size_per_image: int = 256
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    box_batch_size_per_image: int = 512
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections_per_img: int = 100

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
        self.backbone.validate(f"{where}.backbone")
        self.box_loss.validate(f"{where}.box_loss")
        self.rpn_loss.validate(f"{where}.rpn_loss")
        self.mask_head.validate(f"{where}.mask_head")
