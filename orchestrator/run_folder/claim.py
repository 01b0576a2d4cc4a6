"""`mlflow_run.json`: the MLflow run a run folder belongs to, claimed once."""
from __future__ import annotations

import json
import time
from typing import Optional

from maskx.datasets import storage

from .layout import MLFLOW_RUN_FILE

RECORD_WAIT_S = 5.0  # how long a claim record read empty is waited for (see read_mlflow_run)


def read_mlflow_run(folder: str) -> Optional[str]:
    """The MLflow run id recorded in a run folder, or None for a run that never started."""
    record = storage.join(folder, MLFLOW_RUN_FILE)
    if storage.stat(record) is None:
        return None
    payload = storage.read_bytes(record)
    # Where the filesystem cannot hard-link (FUSE), the claim is created empty and written an instant later.
    deadline = time.monotonic() + RECORD_WAIT_S
    while not payload and time.monotonic() < deadline:
        time.sleep(0.05)
        payload = storage.read_bytes(record)
    return json.loads(payload)["run_id"]


def write_mlflow_run(folder: str, run_id: str, redacted_tracking_uri: str) -> None:
    """Claim the run folder for MLflow run `run_id`: created exclusively, so two drivers starting one
    run name at once cannot both log into it (the second gets FileExistsError)."""
    record = storage.join(folder, MLFLOW_RUN_FILE)
    if not storage.create_exclusive(record, json.dumps({"run_id": run_id, "tracking_uri": redacted_tracking_uri}).encode()):
        raise FileExistsError(f"run folder {folder}: another driver started a run in it just now "
                              f"(MLflow run {read_mlflow_run(folder)}); this one ({run_id}) stops")
