import math

import torch
import torch.nn.functional as F

from maskx.models.losses import box_classifier_loss, objectness_loss, softmax_focal_loss, softmax_prior_bias


def test_focal_with_gamma_zero_and_no_alpha_equals_cross_entropy():
    logits = torch.randn(50, 7)
    labels = torch.randint(0, 7, (50,))
    torch.testing.assert_close(softmax_focal_loss(logits, labels, gamma=0.0, alpha=None),
                               F.cross_entropy(logits, labels, reduction="none"))
    # both divide their sum by the normalizer the head chooses (the sampled RoIs, or each image's quota)
    torch.testing.assert_close(box_classifier_loss(logits, labels, "focal", 0.0, None, normalizer=80),
                               box_classifier_loss(logits, labels, "ce", 2.0, None, normalizer=80))
    torch.testing.assert_close(box_classifier_loss(logits, labels, "ce", 2.0, None, normalizer=50),
                               F.cross_entropy(logits, labels))


def test_focal_matches_hand_computation_at_gamma_2_alpha_025():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    labels = torch.tensor([0, 2])  # a background row and a foreground row
    expected = []
    for row, label in zip(logits.tolist(), labels.tolist()):
        p = math.exp(row[label]) / sum(math.exp(v) for v in row)
        alpha_t = 0.25 if label > 0 else 0.75
        expected.append(-alpha_t * (1 - p) ** 2 * math.log(p))
    got = softmax_focal_loss(logits, labels, gamma=2.0, alpha=0.25)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)


def test_rpn_focal_with_gamma_zero_equals_bce():
    logits = torch.randn(100)
    labels = torch.randint(0, 2, (100,)).float()
    torch.testing.assert_close(
        objectness_loss(logits, labels, "focal", gamma=0.0, alpha=None, normalizer=100),
        F.binary_cross_entropy_with_logits(logits, labels),
    )


def test_prior_bias_starts_foreground_at_pi():
    probs = softmax_prior_bias(num_classes=81, prior_prob=0.01).softmax(0)
    assert abs(probs[0].item() - 0.99) < 1e-6
    assert abs(probs[1:].sum().item() - 0.01) < 1e-6


def test_focal_priors_start_each_classifier_at_its_sampler_s_foreground_share():
    """Box head: 25% of its sampled RoIs are foreground at most, so background starts at 0.75 (not Lin et
    al.'s 0.99, for a dense detector's ~100k anchors); RPN: 50%, which is a zero bias."""
    from maskx.models import build_model

    from .conftest import tiny_config

    cfg = tiny_config()
    cfg.box_loss.kind = "focal"
    cfg.rpn_loss.kind = "focal"
    model = build_model(cfg)
    probs = model.roi_heads.box_predictor.cls_score.bias.softmax(0)
    assert abs(probs[0].item() - 0.75) < 1e-6 and torch.allclose(probs[1:], torch.full_like(probs[1:], 0.25 / 5))
    assert torch.equal(model.rpn.head.cls_logits.bias, torch.zeros_like(model.rpn.head.cls_logits.bias))
    cfg.box_loss.prior_prob = 0.01  # Lin et al.'s pi, on request
    probs = build_model(cfg).roi_heads.box_predictor.cls_score.bias.softmax(0)
    assert abs(probs[0].item() - 0.99) < 1e-6
