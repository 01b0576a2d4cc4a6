"""A loss that is not finite on one rank: every rank knows before the gradients meet, and all raise
the same error naming the rank and its samples (none left waiting in DDP's all-reduce), or, with
`solver.on_nonfinite: skip_step`, all step over it with their weights unchanged and train on."""
import os
import sys

import torch
import torch.distributed as dist

from maskx.models import build_model
from maskx.orchestrator.config import SolverConfig
from maskx.orchestrator.training.step import NonFiniteLoss, build_lr_scheduler, build_optimizer, train_step


sys.path.insert(0, os.path.dirname(__file__))
import test_step_cut as cut  # noqa: E402  (its images and tiny model)


def poisoned(model):
    """NaN in rank 1's classifier after DDP broadcast rank 0's weights: its loss is NaN, rank 0's is not."""
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[0] = float("nan")


def run_rank(rank, port, on_nonfinite, out):
    """One rank of a gloo group, in its own process (a fresh interpreter: a fork of pytest's process,
    Ray's threads in it, can hang in gloo)."""
    import json

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        bare = build_model(cut.model_config("step"))
        model = torch.nn.parallel.DistributedDataParallel(bare)
        optimizer = build_optimizer(model, SolverConfig(lr=0.01))
        scheduler = build_lr_scheduler(optimizer, SolverConfig(lr=0.01, warmup_iters=10))
        lr_before = optimizer.param_groups[0]["lr"]
        images = cut.step_images()
        mine = [cut.joined(images[rank * 2:rank * 2 + 2])]
        saved = {name: value.clone() for name, value in bare.state_dict().items()}
        if rank == 1:
            poisoned(bare)
        try:
            losses = train_step(model, optimizer, scheduler, mine, torch.device("cpu"), on_nonfinite=on_nonfinite)
            answer = {"losses": losses, "lr_moved": optimizer.param_groups[0]["lr"] > lr_before}
        except NonFiniteLoss as exc:
            answer = {"error": str(exc)}
        unchanged = all(torch.equal(value, bare.state_dict()[name]) or name.endswith("cls_score.bias")
                        for name, value in saved.items())
        if rank == 1:
            bare.roi_heads.box_predictor.cls_score.bias.data.copy_(saved["roi_heads.box_predictor.cls_score.bias"])
        # The ranks train on together after a skipped step (DDP's reducer is not left expecting a backward).
        after = train_step(model, optimizer, scheduler, mine, torch.device("cpu")) if "losses" in answer else {}
        with open(f"{out}.{rank}", "w") as f:
            json.dump(dict(answer, unchanged=unchanged, after=after), f)
    finally:
        dist.destroy_process_group()


def two_ranks(on_nonfinite, tmp_path):
    import json

    from .gloo_ranks import run_ranks

    out = str(tmp_path / "answer")
    # none left waiting in the all-reduce
    assert run_ranks(__file__, f"t.run_rank(rank, port, {on_nonfinite!r}, {out!r})") == [0, 0]
    return {rank: json.load(open(f"{out}.{rank}")) for rank in (0, 1)}


def test_every_rank_raises_the_same_error_naming_the_rank_and_its_samples(tmp_path):
    got = two_ranks("raise", tmp_path)
    assert got[0]["error"] == got[1]["error"]
    assert "rank 1: {" in got[0]["error"] and "nan" in got[0]["error"] and "sample-3, sample-4" in got[0]["error"]
    assert "rank 0" not in got[0]["error"] and "solver.on_nonfinite=skip_step" in got[0]["error"]
    assert got[0]["unchanged"] and got[1]["unchanged"]


def test_with_skip_step_every_rank_keeps_its_weights_moves_the_schedule_and_trains_on(tmp_path):
    got = two_ranks("skip_step", tmp_path)
    for rank in (0, 1):
        assert got[rank]["losses"] == {} and got[rank]["lr_moved"] and got[rank]["unchanged"]
        assert got[rank]["after"]["loss"] > 0 and torch.isfinite(torch.tensor(got[rank]["after"]["loss"]))
