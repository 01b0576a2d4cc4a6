"""The mask heads and their initializations as the official code defines them (GitHub
ronghanghu/seg_every_thing, lib/modeling/mask_rcnn_heads.py): shapes and init statistics."""
import math

import pytest
import torch

from maskx.models import MaskHeadConfig, build_model
from maskx.models.mask_head import ClassAgnosticMaskWeights, MLPMaskBranch
from maskx.models.transfer import TransferredMaskWeights

from .conftest import tiny_config

C = 64  # mask head width here (official: MRCNN.DIM_REDUCED 256)
K = 81  # classes with background


def predictor(mode: str, **head):
    torch.manual_seed(0)
    cfg = tiny_config(mode, num_classes=K, box_head_dim=256)
    cfg.mask_head = MaskHeadConfig(mode=mode, conv_channels=C, num_convs=2, **head)
    return build_model(cfg).roi_heads.mask_predictor


def test_class_agnostic_logits_start_from_gaussian_0_001():
    # add_mask_rcnn_outputs: "If using class-agnostic mask, scale down init to avoid NaN loss": GaussianFill std 0.001
    weights = predictor("class_agnostic").class_weights
    assert isinstance(weights, ClassAgnosticMaskWeights) and weights.weight.shape == (1, C)
    assert weights.weight.std().item() == pytest.approx(0.001, rel=0.25)
    assert torch.equal(weights.bias, torch.zeros(1))


def test_class_specific_logits_are_msra_filled_as_the_paper_s_configs_and_torchvision():
    # mask_fcn_logits with MRCNN.CONV_INIT: MSRAFill: std sqrt(2 / fan_out), fan_out = classes x 1 x 1
    weights = predictor("class_specific").class_weights
    assert weights.weight.shape == (K, C) and weights.weight.std().item() == pytest.approx(math.sqrt(2 / K), rel=0.1)


def test_the_transfer_function_is_msra_filled_with_the_mask_head_s_width_leaky_relu_and_no_bias():
    # bbox2mask_weight_transfer, TYPE 2_layer: FC(5*1024 -> dim) MSRAFill, LeakyReLU 0.1, FC(dim -> dim) MSRAFill,
    # zero biases; the mask conv with the predicted weights has no bias term.
    transferred = predictor("transfer").class_weights
    assert isinstance(transferred, TransferredMaskWeights)
    first, activation, last = transferred.transfer.mlp
    assert first.weight.shape == (C, 5 * 256) and last.weight.shape == (C, C)  # hidden width = the mask head's
    assert activation.negative_slope == 0.1
    for layer in (first, last):
        assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / C), rel=0.1)  # MSRAFill: fan_out = C
        assert torch.equal(layer.bias, torch.zeros(C))
    box_predictor = build_model(tiny_config("transfer", num_classes=K, box_head_dim=256)).roi_heads.box_predictor
    weights, bias = transferred(box_predictor)
    assert weights.shape == (K, C) and bias is None


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_the_mlp_branch_is_fc_layers_on_the_upsampled_features_ending_at_gaussian_0_001(layers):
    # cls_agnostic_mlp_branch: dim_in = dim * 28 * 28, hidden 1024 (MSRAFill, ReLU), last FC -> 28*28 from std 0.001
    branch = predictor("transfer+mlp", mlp_layers=layers).mlp_branch
    assert isinstance(branch, MLPMaskBranch) and branch.reduce is None
    widths = [C * 28 * 28] + [1024] * (layers - 1)
    assert [tuple(layer.weight.shape) for layer in branch.hidden] == [(1024, w) for w in widths[:-1]]
    assert branch.logits.weight.shape == (28 * 28, widths[-1])
    assert branch.logits.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert torch.equal(branch.logits.bias, torch.zeros(28 * 28))
    for layer in branch.hidden:
        assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / 1024), rel=0.05)
    features, upsampled = torch.randn(3, C, 14, 14), torch.randn(3, C, 28, 28)
    assert branch(features, upsampled).shape == (3, 28, 28)


def test_class_agnostic_with_the_mlp_branch_is_a_head_of_its_own():
    head = predictor("class_agnostic+mlp")
    assert isinstance(head.class_weights, ClassAgnosticMaskWeights) and head.mlp_branch is not None


def test_a_fixed_random_embedding_can_feed_the_transfer_function():
    """Table 1a's control: T's input is a seeded Gaussian vector per class (official v_randn_0, width 300),
    never trained, the same for the same seed, and saved with the weights."""
    head = predictor("transfer", transfer_input="randn")
    embedding = head.class_weights.embedding.embedding
    assert embedding.shape == (K, 300) and not embedding.requires_grad
    assert torch.equal(embedding, predictor("transfer", transfer_input="randn").class_weights.embedding.embedding)
    assert not torch.equal(embedding, predictor("transfer", transfer_input="randn", randn_seed=1).class_weights.embedding.embedding)
    assert head.class_weights.transfer.mlp[0].weight.shape == (C, 300)
    assert "roi_heads.mask_predictor.class_weights.embedding.embedding" in build_model(
        tiny_config("transfer", mask_head=MaskHeadConfig(mode="transfer", transfer_input="randn"))).state_dict()


def test_the_box_predictor_starts_as_detectron_s():
    # fast_rcnn_heads.add_fast_rcnn_outputs: cls_score GaussianFill 0.01, bbox_pred GaussianFill 0.001, zero biases
    box_predictor = build_model(tiny_config("transfer", num_classes=K, box_head_dim=256)).roi_heads.box_predictor
    assert box_predictor.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert box_predictor.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert torch.equal(box_predictor.bbox_pred.bias, torch.zeros_like(box_predictor.bbox_pred.bias))
