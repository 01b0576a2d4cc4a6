"""Resuming on several ranks: whatever rank 0 meets while finding the checkpoint (a damaged folder,
storage it cannot reach), every rank raises it at once; none is left in the broadcast."""
import json
import os


def resume_on_rank(rank, port, folder, out):
    """One rank, in its own interpreter (a fork of pytest's process, Ray's threads in it, can hang in gloo)."""
    import datetime

    import torch.distributed as dist

    from maskx.orchestrator.training.worker import agreed_resume_state

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        agreed_resume_state(folder, None, rank)
        answer = "no error"
    except Exception as exc:
        answer = f"{type(exc).__name__}: {exc}"
    finally:
        dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as f:
        json.dump(answer, f)


def test_an_error_on_rank_0_that_is_not_a_value_error_is_every_rank_s(tmp_path):
    from .gloo_ranks import run_ranks

    out = str(tmp_path / "answer")
    # No credentials anywhere: rank 0's listing fails at once with a StorageError (an OSError).
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")}
    environment.update(AWS_SHARED_CREDENTIALS_FILE="/nonexistent", AWS_CONFIG_FILE="/nonexistent",
                       AWS_EC2_METADATA_DISABLED="true", AWS_ENDPOINT_URL="http://127.0.0.1:9")
    # Under the collective's 60 s: a rank stranded in the broadcast would still be waiting.
    assert run_ranks(__file__, f"t.resume_on_rank(rank, port, 's3://runs/run-1', {out!r})", timeout=50,
                     env=environment) == [0, 0]
    got = {rank: json.load(open(f"{out}.{rank}")) for rank in (0, 1)}
    assert got[0] == got[1] == "ValueError: StorageError: s3://runs/run-1: no AWS credentials found " \
                               "(environment, config file or instance role)", got
