"""What a training run says about itself every `log_every` iterations, as detectron2's console does:
iteration, ETA, seconds per iteration, the time the step waited for the loader, peak memory and the
losses. The same figures go to MLflow (`train/*`)."""
from __future__ import annotations

import datetime
import resource
import time

import torch


class Window:
    """The iterations since the last log line: their losses, images, and time spent waiting for data
    (from the end of one step to the arrival of the next batch: a stalled loader shows here, a slow
    GPU in s/iter)."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self.start = self.step_end = self.clock()
        self.images, self.steps, self.data_wait_s = 0, 0, 0.0
        self.loss_sums: dict[str, float] = {}  # each loss times the images it was measured on
        self.loss_images, self.skipped_steps = 0, 0  # images the losses were measured on; steps with no losses

    def batch_arrived(self) -> None:
        self.data_wait_s += self.clock() - self.step_end

    def step_done(self, losses: dict[str, float], images: int) -> None:
        """A step's losses (none for a step skipped on a non-finite loss) over its images."""
        for name, value in losses.items():
            self.loss_sums[name] = self.loss_sums.get(name, 0.0) + value * images
        self.loss_images += images if losses else 0
        self.skipped_steps += 0 if losses else 1
        self.images += images
        self.steps += 1
        self.step_end = self.clock()

    @property
    def elapsed_s(self) -> float:
        return max(self.clock() - self.start, 1e-9)


def peak_memory_mb(device: torch.device) -> float:
    """The GPU allocator's peak on a GPU, else the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def console_line(metrics: dict[str, float], iteration: int, max_iter: int) -> str:
    eta = datetime.timedelta(seconds=int(metrics["train/eta_s"]))
    losses = ", ".join(f"{k.split('/')[-1].removeprefix('loss_')} {v:.3f}" for k, v in sorted(metrics.items())
                       if k.startswith("loss/") and k != "loss/loss")
    return (f"iter {iteration}/{max_iter}  eta {eta}  {metrics['train/s_per_iter']:.3f} s/iter  "
            f"data {metrics['train/data_time_s']:.3f} s  mem {metrics['train/peak_memory_mb']:.0f} MB  "
            f"lr {metrics['train/lr']:.4g}  {metrics['train/images_per_s']:.1f} img/s  "
            f"loss {metrics['loss/loss']:.3f} ({losses})")
