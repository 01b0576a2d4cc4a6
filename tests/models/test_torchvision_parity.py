"""Plain mode is torchvision's Mask R-CNN: its weights loaded into maskx's class-specific CE model give
the same detections and the same five training losses. The anchor every change of maskx is held to."""
import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from maskx.models import BackboneConfig, ClassifierLossConfig, MaskHeadConfig, ModelConfig, build_model
from maskx.models.torchvision_init import load_torchvision_detector

MIN_SIZE, MAX_SIZE = 256, 352  # images arrive at this size, so neither model resizes them
COCO_ROWS = 91  # torchvision's predictors: background + COCO category ids 1..90


def pair(normalization: str):
    torch.manual_seed(0)
    # Without pretrained weights torchvision builds trainable BatchNorm and trains every stage.
    theirs = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=COCO_ROWS, min_size=MIN_SIZE,
                                   max_size=MAX_SIZE, box_score_thresh=0.0)
    ours = build_model(ModelConfig(
        num_classes=COCO_ROWS, mask_classes=None, loss_normalization=normalization,
        backbone=BackboneConfig(name="resnet50", fpn_channels=256, norm="bn", trainable_layers=5),
        box_loss=ClassifierLossConfig(kind="ce"), rpn_loss=ClassifierLossConfig(kind="ce"),
        mask_head=MaskHeadConfig(mode="class_specific", conv_channels=256, num_convs=4),
        min_size=MIN_SIZE, max_size=MAX_SIZE, box_score_thresh=0.0,
        # torchvision's settings where maskx's defaults are the official code's (test_official_training.py)
        rpn_post_nms_per="image", box_reg_beta=1 / 9, mask_target="soft"))
    report = load_torchvision_detector(ours, theirs.state_dict(), [None] + list(range(1, COCO_ROWS)))
    assert not report.skipped and not report.untouched, (report.skipped, report.untouched)
    return theirs, ours


def images_and_targets(count: int):
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, MIN_SIZE, MAX_SIZE, generator=g) for _ in range(count)]
    targets = []
    for i in range(count):
        masks = torch.zeros(2, MIN_SIZE, MAX_SIZE, dtype=torch.uint8)
        masks[0, 20:120, 30:150] = 1
        masks[1, 100:230, 160 + 10 * i:330] = 1
        targets.append({"boxes": torch.tensor([[30.0, 20.0, 150.0, 120.0], [160.0 + 10 * i, 100.0, 330.0, 230.0]]),
                        "labels": torch.tensor([18, 3 + i]), "masks": masks})
    return images, targets


def test_the_same_detections_in_eval_mode():
    theirs, ours = pair("batch")
    images, _ = images_and_targets(2)
    with torch.no_grad():
        expected, got = theirs.eval()(images), ours.eval()(images)
    for e, g in zip(expected, got):
        assert len(e["boxes"]) == len(g["boxes"]) > 0
        torch.testing.assert_close(g["boxes"], e["boxes"])
        torch.testing.assert_close(g["scores"], e["scores"])
        assert torch.equal(g["labels"], e["labels"])
        torch.testing.assert_close(g["masks"], e["masks"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("normalization, count", [("batch", 2), ("step", 1)])
def test_the_same_five_losses_in_training(normalization, count):
    """batch normalization is torchvision's at any batch; step equals it on one image that fills its
    sampling quotas (256 anchors, 512 RoIs)."""
    theirs, ours = pair(normalization)
    images, targets = images_and_targets(count)
    losses = {}
    for name, model in (("theirs", theirs), ("ours", ours)):
        torch.manual_seed(2)  # the same anchors and RoIs sampled
        if name == "ours":
            # torchvision's transform draws each image's training scale (torch_choice) even from one
            # min_size; maskx's leaves training images as the step resized them, and draws nothing.
            torch.empty(count).uniform_()
        losses[name] = {k: v.item() for k, v in model.train()(images, targets).items()}
    assert set(losses["ours"]) == set(losses["theirs"]) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                                                            "loss_box_reg", "loss_mask"}
    for key, value in losses["theirs"].items():
        assert losses["ours"][key] == pytest.approx(value, rel=1e-4), key
