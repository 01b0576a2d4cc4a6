"""`model.init_from`: a torchvision Mask R-CNN, a maskx checkpoint folder or an MLflow model, whole
or by parts (the stage-wise protocol's second stage takes the detector of a box-only run)."""
import pytest
import torch

from maskx.datasets.vocab import COCO_CATEGORIES, build_vocabulary
from maskx.models import build_model
from maskx.orchestrator.config import load_config
from maskx.orchestrator.run_setup import bind_to_vocabulary
from maskx.orchestrator.training import step as training_step
from maskx.orchestrator.training.init_from import initialize_from
from maskx.orchestrator.training.model_checkpoint import write_model_checkpoint

from .test_step import TINY, fresh, setup  # noqa: F401 (setup: the module's fixture)


def test_init_from_a_torchvision_mask_rcnn_takes_its_weights_and_its_coco_rows(setup, tmp_path):
    """`model.init_from`: torchvision's maskrcnn_resnet50_fpn (random weights here, saved locally; never a
    download) into maskx's R-50-FPN: every tensor that fits is copied, the box predictor rows of COCO
    classes land at those classes' rows, the rest keeps maskx's initialization; then it fine-tunes."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    _, batches, vocab = setup
    torch.manual_seed(7)
    theirs = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    torch.save(theirs, tmp_path / "maskrcnn_resnet50_fpn.pth")
    cfg = load_config(TINY, ["model.backbone.name=resnet50", "model.backbone.fpn_channels=256", "model.box_head_dim=1024",
                             "model.mask_head.conv_channels=256", "model.mask_head.num_convs=4",
                             "model.anchor_sizes=[32, 64, 128, 256, 512]", "model.box_loss.kind=ce",
                             f"model.init_from={tmp_path}/maskrcnn_resnet50_fpn.pth"])
    bind_to_vocabulary(cfg, vocab)
    model, optimizer, scheduler = fresh(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    message = initialize_from(model, cfg.model.init_from, vocab)
    ours = model.state_dict()

    shared = [k for k in theirs if k in ours and ours[k].shape == theirs[k].shape and "box_predictor" not in k]
    assert any(k.startswith("backbone.body") for k in shared) and any(k.startswith("rpn.head") for k in shared)
    assert any(k.startswith("roi_heads.mask_head") for k in shared) and any(k.startswith("backbone.fpn") for k in shared)
    assert all(torch.equal(ours[k], theirs[k]) for k in shared)
    coco_labels = [label for label in range(1, vocab.num_classes) if vocab.classes[label - 1].coco_id is not None]
    other_labels = [label for label in range(1, vocab.num_classes) if vocab.classes[label - 1].coco_id is None]
    assert coco_labels and other_labels
    for label in coco_labels:
        row = vocab.classes[label - 1].coco_id
        assert torch.equal(ours["roi_heads.box_predictor.cls_score.weight"][label], theirs["roi_heads.box_predictor.cls_score.weight"][row])
        assert torch.equal(ours["roi_heads.box_predictor.bbox_pred.weight"][4 * label:4 * label + 4],
                           theirs["roi_heads.box_predictor.bbox_pred.weight"][4 * row:4 * row + 4])
    for label in other_labels:  # VG-only classes: freshly initialized, as before
        assert torch.equal(ours["roi_heads.box_predictor.cls_score.weight"][label], before["roi_heads.box_predictor.cls_score.weight"][label])
    # the up-convolution of torchvision's mask predictor is the mask head's last layer; the transfer function is new
    for suffix in ("weight", "bias"):
        assert torch.equal(ours[f"roi_heads.mask_predictor.upsample.{suffix}"], theirs[f"roi_heads.mask_predictor.conv5_mask.{suffix}"])
    assert all(torch.equal(ours[k], before[k]) for k in ours if "mask_predictor" in k and ".upsample." not in k)
    assert f"box predictor rows of {len(coco_labels)} COCO classes" in message
    losses = [training_step.train_step(model, optimizer, scheduler, [batch], torch.device("cpu"))["loss"] for batch in batches[:2]]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_init_from_torchvisions_v2_takes_what_matches_and_says_what_it_skipped(setup, tmp_path):
    """maskrcnn_resnet50_fpn_v2 shares the ResNet-50 body and FPN; its box head (4 convs + fc), RPN head
    (2 convs) and norms differ from maskx's, so those are skipped and named, not forced."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

    _, _, vocab = setup
    torch.save(maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=91).state_dict(),
               tmp_path / "v2.pth")
    cfg = load_config(TINY, ["model.backbone.name=resnet50", "model.backbone.fpn_channels=256", "model.box_head_dim=1024",
                             "model.mask_head.conv_channels=256", "model.mask_head.num_convs=4",
                             "model.anchor_sizes=[32, 64, 128, 256, 512]"])
    bind_to_vocabulary(cfg, vocab)
    model, _, _ = fresh(cfg)
    message = initialize_from(model, str(tmp_path / "v2.pth"), vocab)
    assert "backbone.body" in message and "skipped" in message and "keep their initialization" in message


def test_init_from_a_file_that_is_no_detector_is_a_clear_error(setup, tmp_path):
    _, _, vocab = setup
    torch.save({"something": torch.zeros(3)}, tmp_path / "other.pth")
    model = build_model(load_config(TINY, ["model.num_classes=11"]).model)
    with pytest.raises(ValueError, match="model.init_from: .*other.pth has no tensor that fits this model"):
        initialize_from(model, str(tmp_path / "other.pth"), vocab)


def write_checkpoint(folder, cfg, vocab, seed):
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    write_model_checkpoint(str(folder), cfg, vocab, model, iteration=4)
    return model.state_dict()


def test_init_from_a_maskx_checkpoint_takes_the_parts_named(setup, tmp_path):
    cfg, _, vocab = setup
    source = write_checkpoint(tmp_path / "checkpoint_00000004", cfg, vocab, seed=1)
    torch.manual_seed(2)
    model = build_model(cfg.model)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    message = initialize_from(model, str(tmp_path / "checkpoint_00000004"), vocab, parts=["backbone", "rpn", "box_head"])
    for name, tensor in model.state_dict().items():
        detector = name.startswith(("backbone.", "rpn.", "roi_heads.box_head.", "roi_heads.box_predictor."))
        assert torch.equal(tensor, source[name] if detector else own[name]), name
    assert "backbone, box_head, rpn" in message
    everything = build_model(cfg.model)
    initialize_from(everything, str(tmp_path / "checkpoint_00000004"), vocab)
    assert all(torch.equal(t, source[name]) for name, t in everything.state_dict().items())


def test_init_from_a_maskx_model_of_another_vocabulary_is_refused(setup, tmp_path):
    cfg, _, vocab = setup
    write_checkpoint(tmp_path / "checkpoint_00000004", cfg, build_vocabulary(COCO_CATEGORIES[:10]), seed=1)
    with pytest.raises(ValueError, match="model.init_from: .*checkpoint_00000004 was prepared with another vocabulary"):
        initialize_from(build_model(cfg.model), str(tmp_path / "checkpoint_00000004"), vocab)
