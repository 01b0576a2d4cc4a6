"""The train step, solver and checkpoint contents, without Ray."""
import os

import pytest
import torch
from torchvision.transforms.v2 import functional as tv_functional

from maskx.datasets.batch import Batch
from maskx.datasets.partitions import DataPlan, EpochLayout
from maskx.datasets.stream import load_sources
from maskx.datasets.train_stream import TrainStream
from maskx.models import build_model
from maskx.orchestrator import run_folder
from maskx.orchestrator.config import SolverConfig, load_config
from maskx.orchestrator.run_setup import bind_to_vocabulary
from maskx.orchestrator.training import step as training_step

TINY = os.path.join(os.path.dirname(__file__), "..", "..", "..", "configs", "tiny-cpu.yaml")


@pytest.fixture(scope="module")
def setup(synth_shards):
    cfg = load_config(TINY, ["model.mask_head.conv_channels=16", "model.backbone.fpn_channels=32"])
    sources, vocab = load_sources([(synth_shards["coco_train"], 1.0), (synth_shards["vg"], 0.5)])
    bind_to_vocabulary(cfg, vocab)
    layout = EpochLayout(DataPlan(global_batch=2, partitions=1), world_size=1, batch_size=2)
    stream = TrainStream(sources=sources, vocab=vocab, mask_labels=cfg.model.mask_classes, layout=layout,
                         steps_per_epoch=6, min_sizes=(128,), max_size=160, seed=1)
    batches = [step.micro_batches[0] for step in stream.steps()]
    return cfg, batches, vocab


def fresh(cfg, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    optimizer = training_step.build_optimizer(model, cfg.solver)
    return model, optimizer, training_step.build_lr_scheduler(optimizer, cfg.solver)


def test_lr_warms_up_linearly_then_decays_at_the_steps():
    solver = SolverConfig(lr=0.1, warmup_iters=10, warmup_factor=0.1, steps=[20, 30], gamma=0.1)
    optimizer = training_step.build_optimizer(torch.nn.Linear(2, 2), solver)
    scheduler = training_step.build_lr_scheduler(optimizer, solver)
    lrs = []
    for _ in range(35):
        lrs.append(training_step.lr_of(optimizer))
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[5] == pytest.approx(0.01 + 0.09 * 0.5)
    assert lrs[10] == pytest.approx(0.1) and lrs[19] == pytest.approx(0.1)
    assert lrs[20] == pytest.approx(0.01) and lrs[30] == pytest.approx(0.001)


def test_no_weight_decay_on_biases_and_norms_and_biases_at_twice_the_lr_as_detectron():
    """lib/modeling/optimizer.py lines 113-118 (official): a bias gets no weight decay and its gradient
    scaled by 2 before the momentum update (2x lr); `solver.bias_lr_factor` 1 is detectron2's."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = training_step.build_optimizer(model, SolverConfig(weight_decay=0.5, lr=0.1, warmup_iters=2,
                                                                  warmup_factor=0.5, steps=[3]))
    decayed, norms, biases = optimizer.param_groups
    assert decayed["weight_decay"] == 0.5 and [p.ndim for p in decayed["params"]] == [4]
    assert norms["weight_decay"] == biases["weight_decay"] == 0.0
    assert [p is model[1].weight for p in norms["params"]] == [True]
    assert {id(p) for p in biases["params"]} == {id(model[0].bias), id(model[1].bias)}
    scheduler = training_step.build_lr_scheduler(optimizer, SolverConfig(lr=0.1, warmup_iters=2, warmup_factor=0.5,
                                                                          steps=[3]))
    for _ in range(4):  # through the warmup and the decay: the bias group stays at twice the lr
        assert biases["lr"] == pytest.approx(2 * decayed["lr"]) and norms["lr"] == decayed["lr"]
        optimizer.step()
        scheduler.step()
    assert decayed["lr"] == pytest.approx(0.01)
    one = training_step.build_optimizer(model, SolverConfig(bias_lr_factor=1.0, lr=0.1)).param_groups
    assert one[2]["lr"] == one[0]["lr"] == 0.1


def test_vocabulary_mismatch_names_the_field(synth_shards):
    cfg = load_config(TINY, ["model.num_classes=81"])
    _, vocab = load_sources([(synth_shards["coco_train"], 1.0)])
    with pytest.raises(ValueError, match="model.num_classes: 81.*set model.num_classes=11"):
        bind_to_vocabulary(cfg, vocab)


def test_bind_sets_set_a_from_the_named_mask_sets(setup):
    cfg, _, vocab = setup
    assert sorted(vocab.name(label) for label in cfg.model.mask_classes) == ["car", "chair", "dog", "person"]


def test_repeated_steps_on_one_batch_drive_the_loss_down(setup):
    cfg, batches, _ = setup
    cfg = load_config(TINY, ["solver.warmup_iters=1", "solver.lr=0.02", f"model.mask_classes={cfg.model.mask_classes}"])
    model, optimizer, scheduler = fresh(cfg)
    losses = [training_step.train_step(model, optimizer, scheduler, [batches[0]], torch.device("cpu"))["loss"] for _ in range(15)]
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses


def test_the_gpu_step_path_on_the_cpu_source_size_images_resized_under_bf16_autocast(setup):
    """What runs on a GPU, where torch allows it on a CPU: uint8 source-size images resized and
    flipped in the step (on the device), bf16 autocast (`solver.amp`), non-blocking copies."""
    cfg, batches, _ = setup
    batch = next(b for b in batches if any(a.flip for a in b.augmentations) and any("masks" in t for t in b.targets))
    images, targets = batch.to_device(torch.device("cpu"))
    for image, target, source, source_target, augmentation in zip(images, targets, batch.images, batch.targets,
                                                                  batch.augmentations):
        # Stated from the source image and torchvision's resize alone: shorter side to min_size (longer
        # at most max_size), flipped when drawn so, boxes scaled and mirrored with it, masks (decoded
        # at the source size by the loader: test_stream.py) mirrored.
        height, width = source.shape[-2:]
        scale = min(augmentation.min_size / min(height, width), augmentation.max_size / max(height, width))
        assert image.dtype == torch.float32
        assert abs(image.shape[-2] - height * scale) <= 1 and abs(image.shape[-1] - width * scale) <= 1
        expected_image = tv_functional.resize(source.float() / 255, list(image.shape[-2:]), antialias=True)
        boxes = source_target["boxes"] * torch.tensor([image.shape[-1] / width, image.shape[-2] / height] * 2)
        if augmentation.flip:
            expected_image = expected_image.flip(-1)
            boxes = torch.stack([image.shape[-1] - boxes[:, 2], boxes[:, 1], image.shape[-1] - boxes[:, 0], boxes[:, 3]], 1)
        assert (image - expected_image).abs().max() <= 2 / 255
        assert torch.allclose(target["boxes"], boxes, atol=1e-3)
        if "masks" in source_target:
            masks = source_target["masks"]
            assert torch.equal(target["masks"], masks.flip(-1) if augmentation.flip else masks)
    model, optimizer, scheduler = fresh(cfg)
    losses = training_step.train_step(model, optimizer, scheduler, [batch], torch.device("cpu"), amp=torch.bfloat16)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()) and losses["loss_mask"] > 0
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast leaves the weights in float32


def test_accumulated_micro_batches_and_blank_passes(setup):
    """A step over several micro-batches is one optimizer step; a blank pass (a rank with no sample in
    a micro-batch) at weight 0 changes nothing; micro-batches weighted 1/2 each come close to one batch
    of both (not equal: RPN and RoI sampling, padding and the mask loss's mean are per batch)."""
    cfg, batches, _ = setup
    device = torch.device("cpu")
    one, two = batches[0], batches[1]
    blank = Batch.blank(one.augmentations[0])
    params = {}
    for name, micro in (("alone", [one]), ("with blank", [one, blank])):  # the blank pass has no image: weight 0
        model, optimizer, scheduler = fresh(cfg)
        training_step.train_step(model, optimizer, scheduler, micro, device)
        params[name] = [p.detach().clone() for p in model.parameters()]
        assert scheduler._schedulers[0].last_epoch == 1  # one step of the schedule, whatever the micro-batches
    assert all(torch.equal(a, b) for a, b in zip(params["alone"], params["with blank"]))
    joined = Batch(one.images + two.images, one.targets + two.targets, one.keys + two.keys,
                   one.augmentations + two.augmentations)
    grads = {}
    for name, micro in (("joined", [joined]), ("accumulated", [one, two])):
        model, optimizer, scheduler = fresh(cfg)
        torch.manual_seed(3)
        training_step.train_step(model, optimizer, scheduler, micro, device)
        grads[name] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    cosine = torch.nn.functional.cosine_similarity(grads["joined"], grads["accumulated"], dim=0)
    assert cosine > 0.9, cosine


def test_checkpoint_resume_reproduces_the_unbroken_run(setup, tmp_path):
    cfg, batches, _ = setup
    device = torch.device("cpu")
    model, optimizer, scheduler = fresh(cfg)
    for batch in batches[:2]:
        training_step.train_step(model, optimizer, scheduler, [batch], device)
    state = run_folder.TrainState(iteration=2)
    run_folder.save_state(run_folder.checkpoint_contents(model, optimizer, scheduler, state),
                           str(tmp_path))
    unbroken = [training_step.train_step(model, optimizer, scheduler, [b], device)["loss"] for b in batches[2:4]]

    resumed_model, resumed_optimizer, resumed_scheduler = fresh(cfg, seed=123)
    restored = run_folder.restore(run_folder.load_state(str(tmp_path)), resumed_model, resumed_optimizer, resumed_scheduler)
    assert restored.iteration == 2
    resumed = [training_step.train_step(resumed_model, resumed_optimizer, resumed_scheduler, [b], device)["loss"] for b in batches[2:4]]
    assert resumed == pytest.approx(unbroken, rel=1e-5)
    assert training_step.lr_of(resumed_optimizer) == pytest.approx(training_step.lr_of(optimizer))


def test_checkpoint_loads_with_weights_only_and_names_a_corrupt_file(setup, tmp_path):
    cfg, _, _ = setup
    model, optimizer, scheduler = fresh(cfg)
    path = run_folder.save_state(run_folder.checkpoint_contents(model, optimizer, scheduler, run_folder.TrainState()), str(tmp_path))
    assert not os.path.exists(path + ".partial")
    torch.load(path, weights_only=True)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match=f"checkpoint {path}: unreadable"):
        run_folder.load_state(str(tmp_path))


def test_solver_amp_names_bf16_fp16_or_off_and_older_configs_keep_their_meaning():
    assert SolverConfig().amp == "bf16"
    assert load_config(TINY, ["solver.amp=true"]).solver.amp == "bf16"  # a checkpoint's config.yaml of before
    assert load_config(TINY, ["solver.amp=false"]).solver.amp == "off"
    assert load_config(TINY, ["solver.amp=fp16"]).solver.amp == "fp16"
    with pytest.raises(ValueError, match="solver.amp"):
        load_config(TINY, ["solver.amp=fp8"])


def test_autocast_runs_on_gpus_only_and_bf16_is_refused_where_the_gpu_has_none(monkeypatch):
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert training_step.autocast_dtype("bf16", cpu) is None and training_step.autocast_dtype("fp16", cpu) is None
    assert training_step.autocast_dtype("off", cuda) is None
    assert training_step.autocast_dtype("fp16", cuda, bf16_supported=lambda: False) is torch.float16
    assert training_step.autocast_dtype("bf16", cuda, bf16_supported=lambda: True) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    with pytest.raises(training_step.AmpUnsupported, match=r"solver.amp: bf16 needs a GPU with bfloat16.*\(Tesla "
                                                           r"V100-SXM2-16GB\).*set solver.amp=fp16"):
        training_step.autocast_dtype("bf16", cuda, bf16_supported=lambda: False)


def test_fp16_steps_with_a_gradient_scaler_track_float32_and_its_scale_travels_in_the_checkpoint(setup):
    """float16 autocast (CPU autocast runs the path the GPU does) with torch.amp's GradScaler: the
    first step's losses within 1% of float32's, every step finite; a step whose scaled gradients
    overflow is skipped and the scale backs off; the scale is saved and restored with the solver."""
    cfg, batches, _ = setup
    losses = {}
    for amp in (None, torch.float16):
        model, optimizer, scheduler = fresh(cfg)
        scaler = torch.amp.GradScaler("cpu") if amp else None
        losses[amp] = [training_step.train_step(model, optimizer, scheduler, [b], torch.device("cpu"), amp=amp,
                                                scaler=scaler) for b in batches[:3]]
    first_fp32, first_fp16 = losses[None][0], losses[torch.float16][0]
    assert first_fp16 == pytest.approx(first_fp32, rel=0.01), losses
    assert all(torch.isfinite(torch.tensor(step["loss"])) for step in losses[torch.float16])

    model, optimizer, scheduler = fresh(cfg)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**120)  # its scaled gradients overflow float16
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    training_step.train_step(model, optimizer, scheduler, [batches[0]], torch.device("cpu"), amp=torch.float16,
                             scaler=scaler)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # skipped
    assert scaler.get_scale() == 2.0**119  # backed off
    contents = run_folder.checkpoint_contents(model, optimizer, scheduler, run_folder.TrainState(1), scaler)
    restored = torch.amp.GradScaler("cpu")
    model, optimizer, scheduler = fresh(cfg)
    run_folder.restore(contents, model, optimizer, scheduler, restored)
    assert restored.get_scale() == 2.0**119
