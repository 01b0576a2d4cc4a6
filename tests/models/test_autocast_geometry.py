"""Box geometry stays float32 under bf16 autocast (models/rpn.py), and FrozenBatchNorm keeps its
input's dtype (models/backbone.py). On a CPU, CPU autocast: the same dtype rules as on a GPU.

Between 1024 and 2048 px bf16 can only say multiples of 8, so the images here are COCO-sized
(1344 x 800) and the boxes that matter sit past x = 1024."""
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FrozenBatchNorm2d

from maskx.models import BackboneConfig, MaskHeadConfig, ModelConfig, build_model
from maskx.models.backbone import DtypeKeepingFrozenBatchNorm2d

HEIGHT, WIDTH = 800, 1344
LEVELS = {"0": 4, "1": 8, "2": 16, "3": 32, "pool": 64}  # FPN level: stride


def bf16_autocast(enabled: bool = True):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def coco_sized_model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=5, mask_classes=[1, 2],
                      backbone=BackboneConfig(name="resnet18", fpn_channels=16, norm="gn", trainable_layers=5),
                      mask_head=MaskHeadConfig(conv_channels=16, num_convs=1, mlp_input="reduced", mlp_channels=4),
                      min_size=HEIGHT, max_size=WIDTH, box_head_dim=32, **overrides)
    return build_model(cfg)


def feature_maps(dtype: torch.dtype, channels: int = 16) -> dict[str, torch.Tensor]:
    """Small whole numbers: the same values in bf16 and float32."""
    g = torch.Generator().manual_seed(0)
    return {name: torch.randint(0, 8, (1, channels, -(-HEIGHT // stride), -(-WIDTH // stride)), generator=g).to(dtype)
            for name, stride in LEVELS.items()}


def images() -> ImageList:
    return ImageList(torch.zeros(1, 3, HEIGHT, WIDTH), [(HEIGHT, WIDTH)])


def test_anchors_are_float32_and_exact_whatever_the_feature_maps_dtype():
    generator = coco_sized_model().rpn.anchor_generator
    exact = generator(images(), list(feature_maps(torch.float32).values()))[0]
    under_bf16 = generator(images(), list(feature_maps(torch.bfloat16).values()))[0]
    assert under_bf16.dtype == torch.float32
    assert (under_bf16 - exact).abs().max() < 1e-3
    # What torchvision's generator does with bf16 maps (the reason for ours): anchors off by pixels.
    theirs = AnchorGenerator(generator.sizes, generator.aspect_ratios)(images(), list(feature_maps(torch.bfloat16).values()))[0]
    assert theirs.dtype == torch.bfloat16 and (theirs.float() - exact).abs().max() > 2


def exact_rpn_head(head: torch.nn.Module) -> None:
    """Weights whose products and sums bf16 holds exactly (powers of two on whole-number features): the
    head's outputs are then the same in bf16 and float32, and any difference after it is geometry's."""
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.zero_()
        for channel in range(head.conv[0][0].out_channels):
            head.conv[0][0].weight[channel, channel, 1, 1] = 1.0
        anchors = head.cls_logits.out_channels
        for a in range(anchors):
            head.cls_logits.weight[a, 0] = 0.25 * (a + 1)
            head.cls_logits.weight[a, 2] = -0.125
            head.cls_logits.bias[a] = 0.5 - 0.25 * a
            head.bbox_pred.weight[4 * a + 0, 1] = 2.0 ** -5  # dx
            head.bbox_pred.weight[4 * a + 1, 3] = -(2.0 ** -5)  # dy
            head.bbox_pred.bias[4 * a + 2] = 0.125  # dw
            head.bbox_pred.bias[4 * a + 3] = -0.0625  # dh


def test_proposals_under_bf16_autocast_are_the_float32_proposals():
    rpn = coco_sized_model().rpn.eval()
    exact_rpn_head(rpn.head)
    with torch.no_grad():
        (exact,), _ = rpn(images(), feature_maps(torch.float32))
        with bf16_autocast():
            (under_bf16,), _ = rpn(images(), feature_maps(torch.bfloat16))
    assert under_bf16.dtype == torch.float32 and len(under_bf16) == len(exact) > 100
    assert (under_bf16 - exact).abs().max() < 1e-3
    assert (exact[:, 2] > 1024).sum() > 10  # boxes where bf16 says multiples of 8


def test_training_targets_under_bf16_autocast_are_float32_geometry():
    """The regression targets of anchors and of RoIs, under bf16 autocast, equal those computed in float64
    from the same boxes: a 40 px box at x ~ 1100 got (0, -1, 0, 0) for (-0.91, -0.60, -0.12, -0.27) in bf16."""
    model = coco_sized_model(box_batch_size_per_image=128).train()
    targets = [{"boxes": torch.tensor([[1100.0, 300.0, 1140.0, 340.0], [1180.0, 500.0, 1300.0, 620.0],
                                       [200.0, 100.0, 400.0, 300.0]]), "labels": torch.tensor([1, 3, 2])}]
    seen = {}

    def keep(name, method):
        def wrapped(*args):
            seen[name] = args
            return method(*args)
        return wrapped

    model.rpn.compute_loss = keep("rpn", model.rpn.compute_loss)
    select = model.roi_heads.select_training_samples
    model.roi_heads.select_training_samples = lambda proposals, targets: seen.setdefault("roi", select(proposals, targets))
    g = torch.Generator().manual_seed(0)
    with bf16_autocast():
        losses = model([torch.rand(3, HEIGHT, WIDTH, generator=g)], targets)
    assert all(torch.isfinite(v) for v in losses.values())

    # Anchors: where the RPN's own assignment put a ground-truth box, its target in float64.
    _, _, labels, regression_targets = seen["rpn"]
    anchors = model.rpn.anchor_generator(images(), list(feature_maps(torch.float32).values()))
    _, matched = model.rpn.assign_targets_to_anchors(anchors, targets)
    positive = labels[0] == 1
    reference = model.rpn.box_coder.encode_single(matched[0][positive].double(), anchors[0][positive].double())
    assert positive.sum() > 0 and regression_targets[0].dtype == torch.float32
    assert (regression_targets[0][positive].double() - reference).abs().max() < 1e-3

    # RoIs: the proposals the RoI heads sampled, float32, and their targets as float64 computes them.
    proposals, matched_idxs, roi_labels, roi_targets = seen["roi"]
    assert proposals[0].dtype == torch.float32
    positive = roi_labels[0] > 0
    gt = targets[0]["boxes"][matched_idxs[0][positive]].double()
    reference = model.roi_heads.box_coder.encode_single(gt, proposals[0][positive].double())
    assert positive.sum() > 0 and (roi_targets[0][positive].double() - reference).abs().max() < 1e-3
    assert (proposals[0][positive][:, 0] > 1024).any()


def test_a_few_bf16_steps_track_float32_training(batch):
    """bf16 autocast changes the convolutions' rounding, not the geometry. Stated tolerance, on the tiny
    model: at the first step (the same weights) every loss within 1% of float32's; over the next three
    the total within 6% (the proposals, hence the sampled RoIs, drift apart with the weights). With bf16
    geometry the first step's box regression loss was 2x float32's (0.133 vs 0.065)."""
    from .conftest import tiny_model

    images, targets = batch
    curves = {}
    for amp in (False, True):
        model = tiny_model().train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.002, momentum=0.9)
        curve = []
        for _ in range(4):
            with bf16_autocast(amp):
                losses = model(images, targets)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            curve.append({name: value.item() for name, value in losses.items()})
        curves[amp] = curve
    (first_fp32, *later_fp32), (first_bf16, *later_bf16) = curves[False], curves[True]
    assert first_bf16 == pytest.approx(first_fp32, rel=0.01), curves
    for fp32, bf16 in zip(later_fp32, later_bf16):
        assert sum(bf16.values()) == pytest.approx(sum(fp32.values()), rel=0.06), curves


def test_frozen_batch_norm_keeps_its_input_dtype_and_torchvision_s_values():
    g = torch.Generator().manual_seed(0)
    theirs = FrozenBatchNorm2d(8)
    for name in ("weight", "bias", "running_mean"):
        getattr(theirs, name).copy_(torch.randn(8, generator=g))
    theirs.running_var.copy_(torch.rand(8, generator=g) + 0.5)
    ours = DtypeKeepingFrozenBatchNorm2d(8)
    ours.load_state_dict(theirs.state_dict())  # the same buffers: ImageNet weights load as they are
    x = torch.randn(2, 8, 5, 5, generator=g)
    assert torch.equal(ours(x), theirs(x))
    assert ours(x.bfloat16()).dtype == torch.bfloat16 and theirs(x.bfloat16()).dtype == torch.float32
    assert (ours(x.bfloat16()).float() - theirs(x)).abs().max() < 0.1


def test_a_frozen_bn_backbone_stays_bf16_under_autocast():
    """The ResNet's elementwise path and activations in bf16 (torchvision's FrozenBatchNorm turned them float32)."""
    backbone = build_model(ModelConfig(num_classes=5, backbone=BackboneConfig(name="resnet18", fpn_channels=16,
                                                                              norm="frozen_bn"))).backbone.body
    outputs = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        getattr(backbone, name).register_forward_hook(lambda m, i, out, name=name: outputs.__setitem__(name, out.dtype))
    with torch.no_grad(), bf16_autocast():
        backbone(torch.rand(1, 3, 64, 64))
    assert outputs == {name: torch.bfloat16 for name in outputs} and len(outputs) == 4
