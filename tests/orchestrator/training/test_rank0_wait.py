"""While rank 0 alone scores an evaluation (inline, or the last one), the other ranks wait in a barrier
whose timeout is `eval_timeout_s`, not in the next collective, which `scaling.collective_timeout_s`
(NCCL's watchdog on GPUs) would end. Two gloo ranks whose collectives time out after 2 s; rank 0's
COCOeval takes 6; the checkpoint's gather after it must still meet."""
import json
import os

import pytest

COLLECTIVE_TIMEOUT_S = 2
SCORING_S = 6


def evaluate_on_rank(rank: int, port: int, eval_mode: str, last: bool, out: str) -> None:
    """One rank, in its own interpreter: the real PeriodicEvaluation.after_step and Worker's collectives
    on a stand-in worker, prediction and scoring stubbed (scoring slow), then the checkpoint's gather."""
    import datetime
    import time
    import types

    import torch
    import torch.distributed as dist

    from maskx.orchestrator.config import load_config
    from maskx.orchestrator.training import evaluation_hooks as hooks
    from maskx.orchestrator.training.worker import Worker, rank0_wait_group

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    cfg = load_config("configs/tiny-cpu.yaml", [f"eval_mode={eval_mode}", "eval_every=2", "mlflow.eval_figures=false",
                                                "mlflow.eval_images=0"])

    def slow_score(*args):
        time.sleep(SCORING_S)
        return types.SimpleNamespace(metrics={"segm/all/AP": 0.5}, summary=lambda: {})

    hooks.predict_on_shards = lambda *args, **kwargs: [f"rank {rank}'s share"]
    hooks.score_shares = slow_score
    hooks.log_line = lambda metrics, *args: "scored"
    hooks.BackgroundScoring = lambda **kwargs: types.SimpleNamespace(finished=lambda wait: [], submit=lambda *a: None)

    class StandIn:
        due, gather_to_rank0, wait_for_rank0 = Worker.due, Worker.gather_to_rank0, Worker.wait_for_rank0

    worker = StandIn()
    worker.config, worker.rank, worker.world_size, worker.device = cfg, rank, 2, torch.device("cpu")
    worker.model = worker.metric_logger = worker.mlflow_run = None
    worker.setup = types.SimpleNamespace(val_sources=[], vocab=None, set_a=set(), config=cfg)
    worker.max_iter, worker.last = 4, last
    worker.iteration = 4 if last else 2
    worker.state = types.SimpleNamespace(iteration=worker.iteration)
    worker.rank0_wait_group = rank0_wait_group(2, cfg.eval_timeout_s)
    evaluation = hooks.PeriodicEvaluation()
    answer = "met"
    try:
        evaluation.before_train(worker)
        evaluation.after_step(worker)
        worker.gather_to_rank0("position")  # what the checkpoint hook does next
    except Exception as exc:
        answer = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as f:
        json.dump(answer, f)


@pytest.mark.parametrize("eval_mode, last", [("inline", False), ("background", True)], ids=["inline", "the last one"])
def test_the_other_ranks_wait_out_rank_0_s_scoring_past_the_collective_timeout(tmp_path, eval_mode, last):
    from .gloo_ranks import run_ranks

    out = str(tmp_path / "answer")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert run_ranks(__file__, f"t.evaluate_on_rank(rank, port, {eval_mode!r}, {last!r}, {out!r})", timeout=120,
                     cwd=repo) == [0, 0]
    assert {rank: json.load(open(f"{out}.{rank}")) for rank in (0, 1)} == {0: "met", 1: "met"}
