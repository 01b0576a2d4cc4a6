"""The training console: a stalled loader shows as data time, and one line says everything."""
import pytest
import torch

from maskx.orchestrator.training.progress import Window, console_line, peak_memory_mb


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_time_waiting_for_the_loader_is_data_time():
    clock = FakeClock()
    window = Window(clock)
    clock.now += 0.2  # the loader is slow to hand over the batch
    window.batch_arrived()
    clock.now += 1.0  # the step
    window.step_done({"loss_mask": 0.5}, images=2)
    window.batch_arrived()  # the next batch was ready
    clock.now += 1.0
    window.step_done({"loss_mask": 0.4}, images=1)  # a rank's share of a step can be smaller
    assert window.data_wait_s == pytest.approx(0.2) and window.elapsed_s == pytest.approx(2.2)
    assert window.images == 3 and window.steps == 2
    assert window.loss_sums["loss_mask"] == 0.5 * 2 + 0.4 * 1  # weighted by images; divided by every rank's images when logged
    window.reset()
    assert window.data_wait_s == 0 and window.loss_sums == {} and window.steps == 0


def test_one_line_like_detectron2s():
    metrics = {"train/eta_s": 192.4, "train/s_per_iter": 1.2345, "train/data_time_s": 0.0123,
               "train/peak_memory_mb": 1834.2, "train/lr": 0.01, "train/images_per_s": 12.34, "loss/loss": 2.5,
               "loss/loss_classifier": 0.8, "loss/loss_mask": 0.7, "data/skipped_samples": 0.0}
    assert console_line(metrics, 20, 200) == ("iter 20/200  eta 0:03:12  1.234 s/iter  data 0.012 s  mem 1834 MB  "
                                             "lr 0.01  12.3 img/s  loss 2.500 (classifier 0.800, mask 0.700)")
    assert peak_memory_mb(torch.device("cpu")) > 10  # this process's peak RSS
