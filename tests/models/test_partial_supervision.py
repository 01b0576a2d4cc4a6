import copy

import pytest
import torch

from maskx.models import ClassifierLossConfig
from maskx.models.config import MASK_HEAD_MODES

from .conftest import tiny_batch, tiny_model


def mask_loss(model, targets, seed=7):
    images, _ = tiny_batch()
    torch.manual_seed(seed)  # the proposal sampler draws random indices
    return model(images, targets)["loss_mask"]


def test_instances_without_masks_do_not_change_the_mask_loss():
    model = tiny_model("transfer+mlp").train()
    _, targets = tiny_batch()
    reference = mask_loss(model, targets)
    garbage = copy.deepcopy(targets)
    garbage[0]["masks"][1] = torch.randint(0, 2, garbage[0]["masks"][1].shape, dtype=torch.uint8)
    assert torch.equal(mask_loss(model, garbage), reference)
    # ...whereas the mask of the instance that has one does change it.
    changed = copy.deepcopy(targets)
    changed[0]["masks"][0] = 1 - changed[0]["masks"][0]
    assert not torch.equal(mask_loss(model, changed), reference)


def test_set_b_class_masks_are_ignored_even_when_present():
    model = tiny_model("transfer").train()
    _, targets = tiny_batch()
    reference = mask_loss(model, targets)
    # Claim the set-B instance (label 4) has a garbage mask: mask_classes keeps it out.
    claimed = copy.deepcopy(targets)
    claimed[0]["has_mask"] = torch.tensor([True, True])
    claimed[0]["masks"][1] = 1
    assert torch.equal(mask_loss(model, claimed), reference)


def test_mask_loss_is_exactly_zero_without_masks_and_still_backprops():
    model = tiny_model("transfer+mlp").train()
    _, targets = tiny_batch()
    for t in targets:
        t.pop("masks", None)
        t.pop("has_mask", None)
    losses = model(tiny_batch()[0], targets)
    assert losses["loss_mask"].item() == 0.0 and not torch.isnan(losses["loss_mask"])
    sum(losses.values()).backward()  # the graph is intact
    assert all(torch.isfinite(v) for v in losses.values())


def test_masks_at_source_resolution_give_the_same_loss_as_at_input_resolution():
    # Soft targets: RoIAlign's fractions on either grid agree to 2%; binary ones round the boundary
    # pixels of this small mask either way (5% apart), which is not what this test is about. Proposals
    # per image: the RoIs this tolerance was measured on.
    model = tiny_model("class_specific", mask_target="soft", rpn_post_nms_per="image").train()
    _, targets = tiny_batch()
    at_input = mask_loss(model, targets)
    double = copy.deepcopy(targets)
    double[0]["masks"] = double[0]["masks"].repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    torch.testing.assert_close(mask_loss(model, double), at_input, rtol=0.02, atol=1e-3)


@pytest.mark.parametrize("mode", MASK_HEAD_MODES)
@pytest.mark.parametrize("with_masks", [True, False], ids=["coco-batch", "vg-only-batch"])
def test_every_trainable_parameter_takes_part_in_every_step(mode, with_masks):
    """What lets DDP run with find_unused_parameters=False (no extra graph traversal per step): a
    batch without a single mask (Visual Genome) still reaches every mask-head parameter, with a zero
    gradient, so every rank reduces the same parameters."""
    model = tiny_model(mode, box_loss=ClassifierLossConfig(kind="focal")).train()
    images, targets = tiny_batch()
    if not with_masks:
        for t in targets:
            t.pop("masks", None)
            t.pop("has_mask", None)
    torch.manual_seed(7)
    sum(model(images, targets).values()).backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    if not with_masks:
        assert all(p.grad.abs().sum() == 0 for p in model.roi_heads.mask_predictor.parameters())


def test_compact_masks_one_per_instance_with_a_mask_give_the_same_loss():
    """maskx's loader ships masks only for instances with has_mask (no zero placeholders); the loss
    is the one of torchvision's layout, a mask row per instance."""
    from maskx.datasets.transforms import resize_and_flip

    model = tiny_model("transfer+mlp").train()
    images, targets = tiny_batch()
    full = copy.deepcopy(targets)
    # a set-A instance without a mask ahead of the one with a mask: rows and instances no longer align
    full[0]["boxes"] = torch.cat([torch.tensor([[90.0, 5.0, 140.0, 40.0]]), full[0]["boxes"]])
    full[0]["labels"] = torch.cat([torch.tensor([1]), full[0]["labels"]])
    full[0]["has_mask"] = torch.tensor([False, True, False])
    full[0]["masks"] = torch.cat([torch.zeros(1, 128, 160, dtype=torch.uint8), full[0]["masks"]])
    compact = copy.deepcopy(full)
    compact[0]["masks"] = full[0]["masks"][1:2]
    torch.manual_seed(7)
    reference = model(images, full)["loss_mask"]
    torch.manual_seed(7)
    assert torch.equal(model(images, compact)["loss_mask"], reference) and reference > 0
    # the resize/flip keeps each mask with its instance when a box too small to keep is dropped
    for target in (full[0], compact[0]):
        target["boxes"][0] = torch.tensor([90.0, 5.0, 90.2, 40.0])
    _, kept_full = resize_and_flip(images[0], full[0], 64, 80, flip=True)
    _, kept_compact = resize_and_flip(images[0], compact[0], 64, 80, flip=True)
    assert kept_full["has_mask"].tolist() == [True, False] and len(kept_compact["masks"]) == 1
    assert torch.equal(kept_compact["masks"][0], kept_full["masks"][0])
