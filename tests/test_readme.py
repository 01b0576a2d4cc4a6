"""The README's commands run as printed: every shell block marked as running after `make demo` runs,
with bash -euo pipefail, in a copy of the repository where the demo has run (a short one: the blocks
need its shards, its `mlflow.db` and its registered `maskx-demo`, not its accuracy)."""
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
MARK = "<!-- test: runs after make demo (tests/test_readme.py) -->"
VENV = Path(sys.executable).parents[1]


def marked_blocks() -> list[str]:
    return re.findall(re.escape(MARK) + r"\s*```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)


@pytest.fixture(scope="module")
def after_demo(tmp_path_factory):
    """A copy of the repository (what git tracks) with `.venv` linked in, after a short `maskx demo`."""
    work = tmp_path_factory.mktemp("readme") / "maskx"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, work / name)
    (work / ".venv").symlink_to(VENV)
    home = tmp_path_factory.mktemp("home")  # `ray get-auth-token --generate` writes ~/.ray/auth_token
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "AWS_"))}
    env.update(HOME=str(home), PATH=f"{VENV / 'bin'}:{env['PATH']}")
    demo = subprocess.run([str(VENV / "bin" / "maskx"), "demo", "solver.max_iter=10", "solver.warmup_iters=2",
                           "checkpoint.every=10", "log_every=5"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=900)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    return work, env


def test_the_readme_has_blocks_to_run():
    assert len(marked_blocks()) >= 3


@pytest.mark.integration
@pytest.mark.readme
@pytest.mark.parametrize("index", range(len(marked_blocks())))
def test_a_readme_block_runs_as_printed(after_demo, index, tmp_path):
    work, env = after_demo
    block = marked_blocks()[index]
    # Output to a file, not a pipe: a block that fails before it stops what it started in the background
    # (a model server) would leave the pipe open, and reading it would wait for the timeout.
    with open(tmp_path / "block.log", "w") as log:
        process = subprocess.Popen(["bash", "-euo", "pipefail", "-c", block], cwd=work, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            process.wait(timeout=900)
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # whatever it left running in the background
            except ProcessLookupError:
                pass
    output = (tmp_path / "block.log").read_text()
    assert process.returncode == 0, f"README block exited {process.returncode}:\n{block}\n--- output ---\n{output[-6000:]}"
