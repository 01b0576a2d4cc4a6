"""A step's gradient does not depend on how its images are cut into micro-batches and ranks
(`model.loss_normalization: step`, and each image's anchors and RoIs drawn from its own sampling seed):
the elastic promise, one SGD step on the global batch at any world size, holds for every loss. With
torchvision's per-batch means (`batch`) it does not."""
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
from pycocotools import mask as mask_utils

from maskx.datasets.batch import Batch
from maskx.datasets.partitions import DataPlan, EpochLayout
from maskx.datasets.transforms import Augmentation
from maskx.models import BackboneConfig, MaskHeadConfig, ModelConfig, build_model
from maskx.orchestrator.config import SolverConfig
from maskx.orchestrator.training.parallel import ddp_options
from maskx.orchestrator.training.step import build_lr_scheduler, build_optimizer, train_step

SIDE = 128  # every image the same size: a batch pads its images to the largest, and padding shows at the borders
SET_A = [1, 2]


def model_config(normalization: str) -> ModelConfig:
    return ModelConfig(
        num_classes=5, mask_classes=SET_A, loss_normalization=normalization,
        backbone=BackboneConfig(name="resnet18", fpn_channels=16, norm="gn", trainable_layers=5),
        mask_head=MaskHeadConfig(mode="transfer+mlp", conv_channels=16, num_convs=1, mlp_input="reduced", mlp_channels=4),
        min_size=SIDE, max_size=SIDE + 1, anchor_sizes=[16, 32, 64, 128, 256], box_head_dim=32,
        rpn_batch_size_per_image=64, box_batch_size_per_image=32,  # a real draw from each image's candidates
        rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150,
        # Per batch (the official default), an image's proposals depend on its micro-batch-mates, as its
        # padding does (which SIDE rules out): per image, nothing but the float sums does.
        rpn_post_nms_per="image")


def image(seed: int, instances: list[tuple[list[float], int, bool]]) -> Batch:
    """One sample as the stream ships it: uint8 image, boxes, labels, has_mask and the masks' RLEs."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (3, SIDE, SIDE), generator=g, dtype=torch.uint8)
    target = {"boxes": torch.tensor([box for box, _, _ in instances]), "labels": torch.tensor([l for _, l, _ in instances]),
              "has_mask": torch.tensor([m for _, _, m in instances])}
    rles = []
    for box, _, has_mask in instances:
        if has_mask:
            mask = np.zeros((SIDE, SIDE), dtype=np.uint8, order="F")
            x0, y0, x1, y1 = map(int, box)
            mask[y0 + 2:y1 - 2, x0 + 3:x1 - 1] = 1
            rle = mask_utils.encode(mask)
            rles.append({"size": rle["size"], "counts": rle["counts"].decode()})
    if rles:
        target["mask_rles"] = rles
    target["sampling_seed"] = 1000 + seed  # what the training stream sets from (run seed, epoch, sample)
    return Batch([pixels], [target], [f"sample-{seed}"], [Augmentation(SIDE, SIDE + 1, False)])  # no resize


def step_images() -> list[Batch]:
    return [
        image(1, [([10, 12, 70, 80], 1, True), ([60, 40, 120, 110], 2, True)]),  # COCO, set-A masks
        image(2, [([20, 20, 100, 90], 2, True), ([5, 70, 50, 125], 3, False)]),  # COCO, a set-A mask, set B without
        image(3, [([30, 10, 110, 60], 3, False), ([15, 60, 90, 120], 4, False)]),  # COCO, set B only: no mask at all
        image(4, [([12, 14, 64, 100], 4, False), ([70, 30, 118, 90], 1, False)]),  # VG: boxes only
    ]


def joined(samples: list[Batch]) -> Batch:
    return Batch([s.images[0] for s in samples], [s.targets[0] for s in samples], [s.keys[0] for s in samples],
                 [s.augmentations[0] for s in samples])


def step(normalization: str, cut: list[list[int]], layout=None, model=None) -> tuple[torch.Tensor, dict[str, float]]:
    """One step of a fresh model on the step's images cut so: the gradient, and the losses it reports."""
    samples = step_images()
    torch.manual_seed(0)
    bare = build_model(model_config(normalization))
    model = model(bare) if model else bare
    optimizer = build_optimizer(model, SolverConfig(lr=0.0, weight_decay=0.0))
    micro = [joined([samples[i] for i in part]) for part in cut]
    losses = train_step(model, optimizer, build_lr_scheduler(optimizer, SolverConfig()), micro, torch.device("cpu"),
                        layout=layout, loss_normalization=normalization)
    return torch.cat([p.grad.flatten() for p in bare.parameters() if p.grad is not None]), losses


def gradient(normalization: str, cut: list[list[int]], **kwargs) -> torch.Tensor:
    return step(normalization, cut, **kwargs)[0]


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


CUTS = {"1x4": [[0, 1, 2, 3]], "2x2": [[0, 1], [2, 3]], "4x1": [[0], [1], [2], [3]], "mixed": [[2, 0], [3, 1]]}


def test_one_step_s_gradient_and_losses_are_the_same_for_every_cut_into_micro_batches():
    reference, losses = step("step", CUTS["1x4"])
    assert set(losses) == {"loss", "loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    for name in ("2x2", "4x1", "mixed"):
        grad, cut_losses = step("step", CUTS[name])
        assert relative_difference(grad, reference) < 1e-5, name
        assert cut_losses == pytest.approx(losses, rel=1e-5), name


def test_per_batch_means_depend_on_the_cut():
    # What the step normalization fixes: torchvision's mask loss is a mean over each batch's mask RoIs,
    # and the micro-batches without masks dilute it.
    assert relative_difference(gradient("batch", CUTS["4x1"]), gradient("batch", CUTS["1x4"])) > 1e-3


def run_rank(rank: int, world_size: int, port: int, cut: list[list[int]], out: str) -> None:
    """One rank of a gloo process group on this machine: its share of the step under DDP."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    layout = EpochLayout(DataPlan(global_batch=4, partitions=4), world_size=world_size, batch_size=2)
    mine = [part for part in cut if layout.rank_of(part[0]) == rank]
    grad, losses = step("step", mine, layout=layout, model=lambda bare: torch.nn.parallel.DistributedDataParallel(bare, **ddp_options(bare)))
    torch.save({"grad": grad, "losses": losses, "images": sum(len(part) for part in mine)}, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.parametrize("cut", [[[0, 2], [1, 3]], [[0], [2], [1], [3]]], ids=["1 micro-batch a rank", "2 a rank"])
def test_two_ranks_give_the_gradient_of_one(tmp_path, cut):
    from .gloo_ranks import run_ranks

    out = str(tmp_path / "grad.pt")
    # Rank r reads partitions r, r+2: samples 0 and 2 on rank 0, 1 and 3 on rank 1 (EpochLayout).
    assert run_ranks(__file__, f"t.run_rank(rank, 2, port, {cut!r}, {out!r})") == [0, 0]
    reference, losses = step("step", CUTS["1x4"])
    ranks = [torch.load(f"{out}.{rank}") for rank in range(2)]
    assert all(relative_difference(r["grad"], reference) < 1e-5 for r in ranks)  # DDP: the same on every rank
    # the ranks' losses averaged by their images, as the training metrics do, are the one-process step's
    averaged = {name: sum(r["losses"][name] * r["images"] for r in ranks) / 4 for name in losses}
    assert averaged == pytest.approx(losses, rel=1e-5)
