"""A model that predicts something, for every test that compares predictions or AP.

An untrained model's scores sit at the focal prior (~0.005 for each of 81 classes): at the default
thresholds it keeps no detection, and two paths compared on it agree on empty lists and AP 0. Two
ways out, one per vocabulary the tests use:

- On the session's synthetic data (`synth_shards`): configs/tiny-cpu.yaml's model trained here, in
  this process without Ray, for TRAINED_ITERATIONS steps of 4 images (~35 s on 2 cores, once a
  session), at lr 0.01 (the official defaults' 2x bias lr and batch-wide proposals diverge at the
  config's 0.02 this early). Measured on the 10 val images (2026-12-07): box AP 0.28, mask AP 0.26,
  344 detections over the model's 0.05, 4 of them over serving's 0.5.
- On a vocabulary with no data here to train on (COCO's, for coco-tiny's real images): the untrained
  model with known logits. Classifier weights drawn wide (N(0, 0.1), no prior bias), so an RoI's best
  class scores anywhere from ~0.1 to ~0.9 and the kept detections straddle 0.05 and 0.5; the MLP mask
  branch's bias an ellipse inscribed in the box (+4 inside, -4 outside), so masks are neither empty
  nor noise. Its boxes are the untrained RPN's proposals: AP is ~0, so tests on it compare
  detections, not AP.
"""
from __future__ import annotations

import os

import torch
from torch import nn

CLASSIFIER_STD = 0.1
MASK_PRIOR_LOGIT = 4.0
TRAINED_ITERATIONS = 80
TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny-cpu.yaml")


def with_known_logits(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    classifier = model.roi_heads.box_predictor.cls_score
    mlp = model.roi_heads.mask_predictor.mlp_branch
    if mlp is None:
        raise ValueError("with_known_logits shapes masks through the MLP mask branch; this model has none")
    size = int(mlp.logits.out_features ** 0.5)
    centre = (torch.arange(size) + 0.5) / size - 0.5
    inside = (centre[:, None] ** 2 + centre[None, :] ** 2) <= 0.25  # the ellipse inscribed in the box
    with torch.no_grad():
        classifier.weight.copy_(torch.randn(classifier.weight.shape, generator=generator) * CLASSIFIER_STD)
        classifier.bias.zero_()
        mlp.logits.bias.copy_(torch.where(inside, MASK_PRIOR_LOGIT, -MASK_PRIOR_LOGIT).flatten())
    return model


def write_known_logits_checkpoint(folder: str, vocab) -> str:
    """A checkpoint folder of the tiny config's untrained model for `vocab`, with known logits."""
    from maskx.models import build_model
    from maskx.orchestrator.config import load_config
    from maskx.orchestrator.run_setup import bind_to_vocabulary
    from maskx.orchestrator.training.model_checkpoint import write_model_checkpoint

    cfg = bind_to_vocabulary(load_config(TINY, [f"model.num_classes={vocab.num_classes}"]), vocab)
    torch.manual_seed(cfg.seed)
    return write_model_checkpoint(folder, cfg, vocab, with_known_logits(build_model(cfg.model)))


def write_trained_checkpoint(folder: str, train_manifests: list[str]) -> str:
    """The tiny config's model trained for TRAINED_ITERATIONS steps on `train_manifests`, in this process
    (the run's own set-up, stream and step; no Ray), written as a checkpoint folder."""
    from maskx.models import build_model
    from maskx.orchestrator.config import load_config
    from maskx.orchestrator.run_setup import set_up_run
    from maskx.orchestrator.training.model_checkpoint import write_model_checkpoint
    from maskx.orchestrator.training.step import build_lr_scheduler, build_optimizer, train_step

    sources = ", ".join(f"{{manifest: {manifest}}}" for manifest in train_manifests)
    cfg = load_config(TINY, [f"data.train=[{sources}]", "data.val=null", "data.batch_size=4", "data.loader_workers=0",
                             "scaling.num_workers=1", f"solver.max_iter={TRAINED_ITERATIONS}", "solver.lr=0.01",
                             "solver.warmup_iters=20", f"solver.steps=[{TRAINED_ITERATIONS * 4 // 5}]"])
    setup = set_up_run(cfg)
    cfg = setup.config
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    optimizer = build_optimizer(model, cfg.solver)
    scheduler = build_lr_scheduler(optimizer, cfg.solver)
    iteration, epoch = 0, 0
    while iteration < TRAINED_ITERATIONS:
        stream = setup.train_stream(world_size=1, rank=0, epoch=epoch)
        for step in stream.steps():
            train_step(model, optimizer, scheduler, step.micro_batches, torch.device("cpu"), layout=stream.layout)
            iteration += 1
            if iteration == TRAINED_ITERATIONS:
                break
        epoch += 1
    return write_model_checkpoint(folder, cfg, setup.vocab, model, iteration=TRAINED_ITERATIONS)
