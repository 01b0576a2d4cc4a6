import io

import pytest
import torch

from maskx.models import build_model
from maskx.models.config import MASK_HEAD_MODES

from .conftest import SET_A, tiny_config, tiny_model

LOSS_NAMES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}


@pytest.mark.parametrize("mode", MASK_HEAD_MODES)
@pytest.mark.parametrize("loss_kind", ["ce", "focal"])
def test_forward_backward_every_mode(mode, loss_kind, batch):
    model = tiny_model(mode)
    model.roi_heads.loss_kind = loss_kind
    model.train()
    losses = model(*batch)
    assert set(losses) == LOSS_NAMES
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"] > 0
    sum(losses.values()).backward()
    grads = [p.grad for p in model.roi_heads.mask_predictor.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_mask_logits_are_computed_for_one_class_per_roi():
    model = tiny_model("class_specific").eval()
    features = torch.randn(3, 32, 14, 14)
    class_ids = torch.tensor([1, 4, 5])
    logits = model.roi_heads.mask_predictor(features, class_ids, model.roi_heads.box_predictor)
    assert logits.shape == (3, 28, 28)


def test_set_b_class_gets_masks_at_inference_in_transfer_mode(batch):
    model = tiny_model("transfer", box_score_thresh=0.0, detections_per_img=500).eval()
    images, _ = batch
    with torch.no_grad():
        outputs = model(images)
    out = outputs[0]
    set_b = ~torch.isin(out["labels"], torch.tensor(SET_A))
    assert set_b.any(), "expected detections of set-B classes with a zero score threshold"
    masks_b = out["masks"][set_b]
    assert masks_b.shape[1:] == (1, 128, 160)
    assert masks_b.max() > 0  # masks are predicted, not placeholders
    assert {"boxes", "labels", "scores", "masks"} <= set(out)


def test_state_dict_round_trip(batch):
    model = tiny_model("transfer+mlp", box_score_thresh=0.0).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)  # a different init, overwritten by the load
    restored = build_model(tiny_config("transfer+mlp", box_score_thresh=0.0)).eval()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    images, _ = batch
    with torch.no_grad():
        a, b = model(images), restored(images)
    for x, y in zip(a, b):
        assert torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["masks"], y["masks"])


def test_bad_config_names_the_field():
    cfg = tiny_config()
    cfg.mask_head.mode = "transfer+rnn"
    with pytest.raises(ValueError, match=r"model\.mask_head\.mode"):
        build_model(cfg)
    cfg = tiny_config(mask_classes=[1, 99])
    with pytest.raises(ValueError, match=r"model\.mask_classes"):
        build_model(cfg)


def test_backbone_weights_load_from_a_local_path_only(tmp_path):
    from torchvision.models import resnet18

    path = tmp_path / "r18.pt"
    body = resnet18(weights=None)
    torch.save(body.state_dict(), path)
    cfg = tiny_config()
    cfg.backbone.weights = str(path)
    model = build_model(cfg)
    assert torch.equal(model.backbone.body.conv1.weight, body.conv1.weight)
    cfg.backbone.weights = str(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build_model(cfg)


def test_no_ray_or_mlflow_under_models():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "models"
    sources = list(root.rglob("*.py"))
    assert len(sources) > 5, root
    for source in sources:
        text = source.read_text()
        assert "import ray" not in text and "import mlflow" not in text, source
