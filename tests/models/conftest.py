import pytest
import torch

from maskx.models import BackboneConfig, MaskHeadConfig, ModelConfig, build_model

NUM_CLASSES = 6  # background + 5; set A = {1, 2, 3}, set B = {4, 5}
SET_A = [1, 2, 3]


def tiny_config(mode: str = "transfer+mlp", **overrides) -> ModelConfig:
    cfg = ModelConfig(
        num_classes=NUM_CLASSES,
        mask_classes=SET_A,
        backbone=BackboneConfig(name="resnet18", fpn_channels=32, norm="frozen_bn", trainable_layers=5),
        mask_head=MaskHeadConfig(mode=mode, conv_channels=32, num_convs=2, mlp_input="reduced", mlp_channels=8),
        min_size=128, max_size=160, anchor_sizes=[16, 32, 64, 128, 256], box_head_dim=64,
        rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100, box_batch_size_per_image=64,
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_model(mode: str = "transfer+mlp", **overrides):
    torch.manual_seed(0)
    return build_model(tiny_config(mode, **overrides))


def tiny_batch():
    """Two images: one with a set-A instance with a mask and a set-B instance with a box only,
    one with boxes only (no masks tensor at all, as Visual Genome)."""
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 128, 160, generator=g), torch.rand(3, 128, 128, generator=g)]
    masks = torch.zeros(2, 128, 160, dtype=torch.uint8)
    masks[0, 10:50, 10:60] = 1
    targets = [
        {
            "boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0], [80.0, 60.0, 150.0, 100.0]]),
            "labels": torch.tensor([1, 4]),
            "masks": masks,
            "has_mask": torch.tensor([True, False]),
        },
        {"boxes": torch.tensor([[20.0, 20.0, 90.0, 100.0]]), "labels": torch.tensor([5])},
    ]
    return images, targets


@pytest.fixture
def batch():
    return tiny_batch()
