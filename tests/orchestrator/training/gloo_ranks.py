"""Tests that need several torch.distributed ranks run each in a fresh interpreter: a fork of pytest's
process, with Ray's threads or cached S3 clients in it, can hang in gloo."""
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(test_file: str, call: str, world_size: int = 2, timeout: float = 300, **popen) -> list[int]:
    """Each rank imports the test module (as `t`) and evaluates `call`, with `rank` and `port` (a free
    one, the same for all) defined; their exit codes. Ranks still running at `timeout` are killed."""
    module = Path(test_file)
    code = (f"import sys; sys.path.insert(0, {str(module.parent)!r}); import {module.stem} as t; "
            f"rank, port = int(sys.argv[1]), {free_port()}; {call}")
    ranks = [subprocess.Popen([sys.executable, "-P", "-c", code, str(rank)], **popen) for rank in range(world_size)]
    try:
        return [rank.wait(timeout=timeout) for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
