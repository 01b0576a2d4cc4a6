"""The names of a run folder's files and folders, and the run's name."""
from __future__ import annotations

import secrets
import time
from typing import Optional

from maskx.datasets import storage

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
VOCAB_FILE = "vocab.json"
EVAL_FILE = "eval.json"
UNSENT_METRICS_FILE = "unsent_metrics.json"
WEIGHTS_FILE = "weights.pt"
MLFLOW_RUN_FILE = "mlflow_run.json"
COMPLETE_FILE = "complete.json"
CHECKPOINT_PREFIX = "checkpoint_"
BEST_FILE = "best.json"


def run_folder(storage_path: str, run_name: str) -> str:
    return storage.join(storage_path, run_name)


def checkpoint_name(iteration: int) -> str:
    return f"{CHECKPOINT_PREFIX}{iteration:08d}"


def checkpoint_iteration(name: str) -> Optional[int]:
    """The iteration a checkpoint folder's name says, or None for another name."""
    digits = name[len(CHECKPOINT_PREFIX):]
    return int(digits) if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else None


def new_run_name(config_name: str) -> str:
    """A generated run name: the config's, the UTC start time, and a random part, so that two runs
    started in the same second (a sweep, two users, a retried job) never share a folder."""
    return f"{config_name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
