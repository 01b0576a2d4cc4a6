"""A sweep trial as maskx records it: what the live table, the summary, the variant table and
promotion read."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

FINISHED = "finished"  # the run got to the end: model logged, MLflow run FINISHED
STOPPED = "stopped early"  # by the scheduler (ASHA), possibly at its last report
INTERRUPTED = "interrupted"  # by Ctrl-C; a resumed sweep continues it
ERROR = "error"


@dataclass
class Trial:
    trial: str  # Tune's trial id
    status: str  # FINISHED | STOPPED | INTERRUPTED | ERROR
    params: dict  # the trial's dotted overrides (its variant's, then its point of the space)
    metric: Optional[float]  # sweep.metric at the last report
    mlflow_run_id: Optional[str]
    iteration: Optional[int] = None
    variant: Optional[str] = None
    table_metrics: dict[str, Optional[float]] = field(default_factory=dict)
