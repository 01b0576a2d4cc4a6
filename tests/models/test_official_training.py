"""What the official code trains with, as maskx's defaults (GitHub ronghanghu/seg_every_thing, on
Detectron): each a named option whose other value is torchvision's, so plain mode can still equal
torchvision's Mask R-CNN (test_torchvision_parity.py sets them)."""
import pytest
import torch

from maskx.models import ModelConfig
from maskx.models.config import MaskHeadConfig

from .conftest import tiny_batch, tiny_model


def test_the_random_embedding_is_at_the_official_file_s_scale_with_a_zero_background_row():
    """lib/datasets/bbox2mask_dataset_processing/coco/glove_randn/fixed_embedding_mat_coco_randn_0.npy: 80 x
    300, std 0.0548, rows of norm ~0.94; add_embeddings_to_weights.py line 20 prepends a zero row for
    the background."""
    model = tiny_model("transfer", mask_head=MaskHeadConfig(mode="transfer", transfer_input="randn", conv_channels=32,
                                                            num_convs=2))
    embedding = model.roi_heads.mask_predictor.class_weights.embedding.embedding
    assert torch.equal(embedding[0], torch.zeros(300))
    assert embedding[1:].std().item() == pytest.approx(0.0548, rel=0.1)
    assert embedding[1:].norm(dim=1).mean().item() == pytest.approx(0.95, rel=0.1)


def test_fast_rcnn_box_regression_is_smooth_l1_with_beta_1_and_the_rpn_s_keeps_1_9():
    """lib/modeling/fast_rcnn_heads.py line 76: SmoothL1Loss with Caffe2's default beta (1.0); the RPN's
    (lib/modeling/FPN.py line 478) beta=1/9. torchvision uses 1/9 for both."""
    assert ModelConfig().box_reg_beta == 1.0
    losses = {}
    for beta in (1.0, 1 / 9):
        model = tiny_model(box_reg_beta=beta).train()
        images, targets = tiny_batch()
        torch.manual_seed(3)
        losses[beta] = {k: v.item() for k, v in model(images, targets).items()}
    assert losses[1.0]["loss_box_reg"] != losses[1 / 9]["loss_box_reg"]
    assert losses[1.0]["loss_rpn_box_reg"] == losses[1 / 9]["loss_rpn_box_reg"]  # the RPN's beta does not move


def test_the_rpn_keeps_its_training_proposals_per_batch_as_the_official_fpn_collect():
    """lib/ops/collect_and_distribute_fpn_rpn_proposals.py, collect(): np.argsort(-scores)[:post_nms_topN]
    over the proposals of every image of the batch (2000 for a GPU's 2 images), not per image."""
    assert ModelConfig().rpn_post_nms_per == "batch"
    images, targets = tiny_batch()
    kept = {}
    for scope in ("batch", "image"):
        model = tiny_model(rpn_post_nms_per=scope, rpn_post_nms_top_n_train=50).train()
        transformed, _ = model.transform(images, targets)
        features = model.backbone(transformed.tensors)
        boxes, _ = model.rpn(transformed, features, targets)
        kept[scope] = [len(b) for b in boxes]
    assert kept["image"] == [50, 50] and sum(kept["batch"]) == 50 and kept["batch"] != [25, 25], kept
    model.eval()  # at inference each image keeps its own (the official test batch is one image)
    with torch.no_grad():
        transformed, _ = model.transform(images)
        boxes, _ = model.rpn(transformed, model.backbone(transformed.tensors))
    assert all(len(b) == model.rpn.post_nms_top_n() for b in boxes)


def test_mask_targets_are_binary_as_detectron_rasterizes_them(monkeypatch):
    """lib/roi_data/mask_rcnn.py line 84: `mask = np.array(mask > 0, dtype=np.int32)  # Ensure it's binary`
    (the polygon rasterized in the RoI at 28x28); torchvision's targets are RoIAlign's fractions."""
    assert ModelConfig().mask_target == "binary"
    captured = {}
    original = torch.nn.functional.binary_cross_entropy_with_logits

    def record(logits, targets, **kwargs):
        captured["targets"] = targets
        return original(logits, targets, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "binary_cross_entropy_with_logits", record)
    for kind in ("binary", "soft"):
        model = tiny_model("class_specific", mask_target=kind).train()
        images, targets = tiny_batch()
        model(images, targets)
        values = captured["targets"].unique()
        if kind == "binary":
            assert set(values.tolist()) <= {0.0, 1.0}
        else:
            assert ((values > 0) & (values < 1)).any()  # fractions at the mask's edges
