import torch

from maskx.models import build_model

from .conftest import tiny_batch, tiny_config


def mask_loss_grads(stop_gradient: bool, transfer_input: str = "cls+box"):
    cfg = tiny_config("transfer")
    cfg.mask_head.stop_gradient = stop_gradient
    cfg.mask_head.transfer_input = transfer_input
    torch.manual_seed(0)
    model = build_model(cfg).train()
    losses = model(*tiny_batch())
    losses["loss_mask"].backward()
    return model


def test_stop_gradient_keeps_mask_loss_out_of_box_weights():
    model = mask_loss_grads(stop_gradient=True)
    box_predictor = model.roi_heads.box_predictor
    for param in (box_predictor.cls_score.weight, box_predictor.bbox_pred.weight):
        assert param.grad is None or torch.count_nonzero(param.grad) == 0
    transfer = model.roi_heads.mask_predictor.class_weights.transfer
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in transfer.parameters())


def test_without_stop_gradient_mask_loss_reaches_box_weights():
    model = mask_loss_grads(stop_gradient=False)
    box_predictor = model.roi_heads.box_predictor
    for param in (box_predictor.cls_score.weight, box_predictor.bbox_pred.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_transfer_input_selects_which_box_weights_feed_t():
    model = mask_loss_grads(stop_gradient=False, transfer_input="cls")
    box_predictor = model.roi_heads.box_predictor
    assert box_predictor.cls_score.weight.grad.abs().sum() > 0
    assert box_predictor.bbox_pred.weight.grad is None


def test_transfer_mlp_shapes():
    from maskx.models.transfer import WeightTransfer

    t = WeightTransfer(in_dim=40, out_dim=8, hidden_dim=16, num_layers=2, activation="leaky_relu")
    assert t(torch.randn(7, 40)).shape == (7, 8)
    linear = WeightTransfer(in_dim=40, out_dim=8, hidden_dim=16, num_layers=1, activation="leaky_relu")
    assert len(linear.mlp) == 1
