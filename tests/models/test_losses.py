import math

import torch
import torch.nn.functional as F

from maskx.models.losses import objectness_loss, softmax_focal_loss, softmax_prior_bias


def test_focal_with_gamma_zero_and_no_alpha_equals_cross_entropy():
    logits = torch.randn(50, 7)
    labels = torch.randint(0, 7, (50,))
    torch.testing.assert_close(softmax_focal_loss(logits, labels, gamma=0.0, alpha=None), F.cross_entropy(logits, labels))


def test_focal_matches_hand_computation_at_gamma_2_alpha_025():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    labels = torch.tensor([0, 2])  # a background row and a foreground row
    expected = []
    for row, label in zip(logits.tolist(), labels.tolist()):
        p = math.exp(row[label]) / sum(math.exp(v) for v in row)
        alpha_t = 0.25 if label > 0 else 0.75
        expected.append(-alpha_t * (1 - p) ** 2 * math.log(p))
    got = softmax_focal_loss(logits, labels, gamma=2.0, alpha=0.25)
    assert abs(got.item() - sum(expected) / 2) < 1e-6


def test_rpn_focal_with_gamma_zero_equals_bce():
    logits = torch.randn(100)
    labels = torch.randint(0, 2, (100,)).float()
    torch.testing.assert_close(
        objectness_loss(logits, labels, "focal", gamma=0.0, alpha=None),
        F.binary_cross_entropy_with_logits(logits, labels),
    )


def test_prior_bias_starts_foreground_at_pi():
    probs = softmax_prior_bias(num_classes=81, prior_prob=0.01).softmax(0)
    assert abs(probs[0].item() - 0.99) < 1e-6
    assert abs(probs[1:].sum().item() - 0.01) < 1e-6


def test_focal_box_loss_sets_the_prior_bias():
    from maskx.models import build_model

    from .conftest import tiny_config

    cfg = tiny_config()
    cfg.box_loss.kind = "focal"
    cfg.rpn_loss.kind = "focal"
    model = build_model(cfg)
    bias = model.roi_heads.box_predictor.cls_score.bias
    assert abs(bias.softmax(0)[0].item() - (1 - cfg.box_loss.prior_prob)) < 1e-6
    rpn_bias = model.rpn.head.cls_logits.bias
    assert torch.allclose(rpn_bias.sigmoid(), torch.full_like(rpn_bias, cfg.rpn_loss.prior_prob))
