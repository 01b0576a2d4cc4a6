"""The host waits for the device once a step, whatever the batch: every read of a tensor's value that
maskx's own step and model code makes (`.item()`, `.tolist()`, `.cpu()`, `.numpy()`, `bool()`,
`int()`, `float()` of a tensor: on a GPU each waits for the device) is counted, with torch's methods
patched. torchvision's own code and the host-side batch code (datasets/: the loader's tensors, before
they reach the device) are not maskx's step: not counted."""
import os
import sys

import pytest
import torch

import maskx
from maskx.datasets.batch import Batch
from maskx.orchestrator.config import SolverConfig
from maskx.orchestrator.training.step import build_lr_scheduler, build_optimizer, train_step

from .test_step_cut import image, model_config

MASKX = os.path.dirname(os.path.realpath(maskx.models.__file__)), os.path.realpath(
    os.path.join(os.path.dirname(maskx.models.__file__), "..", "orchestrator", "training", "step.py"))
READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


@pytest.fixture
def counted_reads(monkeypatch):
    reads = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            caller = os.path.realpath(sys._getframe(1).f_code.co_filename)
            if caller.startswith(MASKX[0]) or caller == MASKX[1]:
                reads.append(f"{_name} at {os.path.basename(caller)}:{sys._getframe(1).f_lineno}")
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counting)
    return reads


def samples(first: int, count: int) -> list[Batch]:
    box = lambda i: [8.0 + 4 * (i % 5), 10.0, 70.0 + 3 * (i % 7), 90.0]  # noqa: E731
    return [image(first + i, [(box(i), 1 + i % 2, i % 3 != 2), ([60.0, 50.0, 120.0, 110.0], 3, False)])
            for i in range(count)]


def micro_batches(sizes: list[int]) -> list[Batch]:
    batches, first = [], 0
    for size in sizes:
        parts = samples(first, size)
        batches.append(Batch([p.images[0] for p in parts], [p.targets[0] for p in parts], [p.keys[0] for p in parts],
                             [p.augmentations[0] for p in parts]))
        first += size
    return batches


@pytest.mark.parametrize("normalization", ["step", "batch"])
def test_one_host_read_a_step_however_many_images_and_micro_batches(counted_reads, normalization):
    from maskx.models import build_model

    torch.manual_seed(0)
    model = build_model(model_config(normalization))
    optimizer = build_optimizer(model, SolverConfig(lr=0.001))
    scheduler = build_lr_scheduler(optimizer, SolverConfig(lr=0.001))
    counts = {}
    for sizes in ([1], [2, 2, 2]):
        counted_reads.clear()
        losses = train_step(model, optimizer, scheduler, micro_batches(sizes), torch.device("cpu"),
                            loss_normalization=normalization)
        counts[str(sizes)] = list(counted_reads)
        assert losses["loss"] > 0 and losses["loss_mask"] > 0
    assert counts["[1]"] == counts["[2, 2, 2]"] and len(counts["[1]"]) == 1, counts
