"""Mask^X R-CNN (Hu et al., "Learning to Segment Every Thing", CVPR 2018) on torchvision parts.

Pure torch: nothing here imports Ray or MLflow.
"""
from .config import BackboneConfig, ClassifierLossConfig, MaskHeadConfig, ModelConfig
from .mask_x_rcnn import MaskXRCNN, build_model, build_transform

__all__ = ["BackboneConfig", "ClassifierLossConfig", "MaskHeadConfig", "ModelConfig", "MaskXRCNN", "build_model",
           "build_transform"]
