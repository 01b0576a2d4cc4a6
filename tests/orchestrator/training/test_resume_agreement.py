"""Resuming on several ranks: whatever rank 0 meets while finding the checkpoint (a damaged folder,
storage it cannot reach), every rank raises it at once; none is left in the broadcast."""
import multiprocessing
import os

from ...conftest import free_port


def resume_on_rank(rank, port, folder, answers):
    import torch.distributed as dist

    from maskx.orchestrator.training.worker import agreed_resume_state

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(name, None)
    # No credentials anywhere: rank 0's listing fails at once with a StorageError (an OSError).
    os.environ.update(AWS_SHARED_CREDENTIALS_FILE="/nonexistent", AWS_CONFIG_FILE="/nonexistent",
                      AWS_EC2_METADATA_DISABLED="true", AWS_ENDPOINT_URL="http://127.0.0.1:9")
    import datetime

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        agreed_resume_state(folder, None, rank)
        answers.put((rank, "no error"))
    except Exception as exc:
        answers.put((rank, f"{type(exc).__name__}: {exc}"))
    finally:
        dist.destroy_process_group()


def test_an_error_on_rank_0_that_is_not_a_value_error_is_every_rank_s():
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    port = free_port()
    ranks = [context.Process(target=resume_on_rank, args=(rank, port, "s3://runs/run-1", answers)) for rank in (0, 1)]
    for process in ranks:
        process.start()
    try:
        for process in ranks:
            process.join(timeout=50)  # under the collective's 60 s: a stranded rank would still be waiting
        assert all(p.exitcode == 0 for p in ranks), [p.exitcode for p in ranks]
    finally:
        for process in ranks:
            process.kill()
    got = dict(answers.get(timeout=5) for _ in ranks)
    assert got[0] == got[1] == "ValueError: StorageError: s3://runs/run-1: no AWS credentials found " \
                               "(environment, config file or instance role)", got
