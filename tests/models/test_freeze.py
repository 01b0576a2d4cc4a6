"""`model.freeze`: the paper's stage-wise protocol trains the mask branch on a frozen detector."""
import torch

from maskx.models import build_model

from .conftest import tiny_batch, tiny_config

FROZEN = ["backbone", "rpn", "box_head"]


def test_frozen_parts_get_no_gradient_keep_their_values_and_stay_in_eval_mode():
    cfg = tiny_config("transfer+mlp", freeze=FROZEN)
    cfg.backbone.norm = "bn"  # a norm layer with statistics that training would move
    torch.manual_seed(0)
    model = build_model(cfg).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    assert not model.backbone.training and not model.rpn.training and not model.roi_heads.box_head.training
    assert model.roi_heads.training and model.roi_heads.mask_head.training
    images, targets = tiny_batch()
    losses = model(images, targets)
    assert set(losses) == {"loss_mask"}  # a frozen RPN proposes as at inference; a frozen box head is not run
    losses["loss_mask"].backward()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    optimizer.step()
    for name, param in model.named_parameters():
        frozen = name.startswith(("backbone.", "rpn.", "roi_heads.box_head.", "roi_heads.box_predictor."))
        assert param.requires_grad != frozen, name
        assert torch.equal(param, before[name]) == frozen, name
    for name, buffer in model.named_buffers():
        if name.startswith("backbone."):
            assert torch.equal(buffer, buffers[name]), name  # BN statistics untouched


def test_the_transfer_function_still_reads_the_frozen_box_predictor():
    model = build_model(tiny_config("transfer", freeze=FROZEN)).train()
    images, targets = tiny_batch()
    torch.manual_seed(1)
    model(images, targets)["loss_mask"].backward()
    assert model.roi_heads.mask_predictor.class_weights.transfer.mlp[0].weight.grad.abs().sum() > 0
