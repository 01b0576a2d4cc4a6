"""Everything maskx says to MLflow: runs, params, metrics, eval tables, overlays, models, registry.

No other module imports mlflow. The embedded default store is `sqlite:///mlflow.db` in the working
folder (made absolute, so Ray workers started elsewhere write to the same file); set
`mlflow.tracking_uri` or `MLFLOW_TRACKING_URI` to use a tracking server.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from typing import Any, Optional

log = logging.getLogger(__name__)

DEFAULT_STORE = "mlflow.db"
REDACTED = "***"
# Keys whose values are secrets (AWS keys, tokens, passwords) never reach params or tags.
_SECRET_KEY = re.compile(r"(secret|password|passwd|token|credential|access_key|api_key|private)", re.I)
# `scheme://user:password@host` in any value.
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s:]+:[^/@\s]+@")


def resolve_tracking_uri(configured: Optional[str] = None) -> str:
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    return uri


def redact(value: Any) -> Any:
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(REDACTED + "@", value)
    return value


_PARAM_NAME = re.compile(r"[\w\-. /:]+")


def flatten_params(tree: dict, prefix: str = "") -> dict[str, str]:
    """`{"solver": {"lr": 0.01}}` -> `{"solver.lr": "0.01"}`, secrets redacted."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        # A section whose keys MLflow cannot take as names (sweep.variants: "transfer+MLP (cls+box)")
        # is one JSON param.
        if isinstance(value, dict) and not all(_PARAM_NAME.fullmatch(str(k)) for k in value):
            value = json.dumps(value)
        if isinstance(value, dict):
            flat.update(flatten_params(value, name + "."))
        elif _SECRET_KEY.search(str(key)):
            flat[name] = REDACTED
        else:
            text = json.dumps(value) if isinstance(value, (list, tuple)) else str(redact(value))
            flat[name] = text if len(text) <= 6000 else text[:5997] + "..."
    return flat


def _mlflow(tracking_uri: str):
    # MLflow prints "View run at <tracking URI>" when a run ends, credentials in the URI included.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    return mlflow


def start_run(tracking_uri: str, experiment: str, run_name: str, config_tree: dict, config_yaml: str,
              tags: Optional[dict] = None) -> str:
    """Create the run for one training run: resolved config as params and as `config.yaml`; returns its id."""
    mlflow = _mlflow(tracking_uri)
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name=run_name, tags={k: str(redact(v)) for k, v in (tags or {}).items()})
    params = flatten_params(config_tree)
    items = [mlflow.entities.Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i:i + 100])
    client.log_text(run.info.run_id, redact_text(config_yaml), "config.yaml")
    return run.info.run_id


def redact_text(text: str) -> str:
    lines = []
    for line in text.splitlines():
        key = line.split(":", 1)[0]
        lines.append(f"{key}: {REDACTED}" if ":" in line and _SECRET_KEY.search(key) else redact(line))
    return "\n".join(lines) + "\n"


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    _mlflow(tracking_uri).MlflowClient().set_terminated(run_id, status)


def run_status(tracking_uri: str, run_id: str) -> str:
    return _mlflow(tracking_uri).MlflowClient().get_run(run_id).info.status


def latest_metrics(tracking_uri: str, run_id: str) -> dict[str, float]:
    return dict(_mlflow(tracking_uri).MlflowClient().get_run(run_id).data.metrics)


def reopen_run(tracking_uri: str, run_id: str) -> None:
    """A resumed run (or sweep) logs into the run it started, which an interruption or failure ended."""
    client = _mlflow(tracking_uri).MlflowClient()
    if client.get_run(run_id).info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")


class MetricLogger:
    """Metrics with steps from rank 0. A tracking server that is down does not stop training: metrics
    wait in a buffer and go out with the next call that reaches the server."""

    def __init__(self, run_id: Optional[str], tracking_uri: Optional[str], in_training_process: bool = False):
        self.run_id, self.tracking_uri = run_id, tracking_uri
        self.pending: list = []
        self._client = None
        self._warned = False
        if in_training_process:
            # MLflow's client retries a refused request for minutes (process-wide settings); a
            # training step must not wait on it: fail at once and keep the metrics for later.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.run_id:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.flush()

    def flush(self) -> bool:
        if not self.run_id or not self.pending:
            return True
        try:
            if self._client is None:
                self._client = _mlflow(self.tracking_uri).MlflowClient()
            _log_metric_batches(self._client, self.run_id, self.pending)
            self.pending = []
            self._warned = False
            return True
        except Exception as exc:  # the server is down or restarting: keep the metrics, keep training
            if not self._warned:
                log.warning("MLflow at %s unreachable (%s); %d metric values buffered until it is back",
                            redact(self.tracking_uri), type(exc).__name__, len(self.pending))
                self._warned = True
            return False


    def unsent(self) -> list[dict]:
        return [{"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step} for m in self.pending]


def server_command(store: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """`mlflow server` on a sqlite store and a local artifact folder under `store`, proxying artifacts
    (clients need no access to the folder)."""
    import shutil
    import sys

    store = os.path.abspath(store)
    mlflow_bin = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
    return [mlflow_bin, "server", "--host", host, "--port", str(port), "--backend-store-uri",
            f"sqlite:///{store}/mlflow.db", "--artifacts-destination", os.path.join(store, "artifacts"), "--workers", "1"]


def connection_errors() -> tuple[type[Exception], ...]:
    """What the MLflow client raises when the tracking server cannot be reached (after its retries)."""
    import requests
    from mlflow.exceptions import MlflowException

    return (requests.exceptions.ConnectionError, MlflowException)


def log_unsent(tracking_uri: str, run_id: str, unsent: list[dict]) -> None:
    """Metric values a training process could not send (MLflow was down at its end), sent now."""
    from mlflow.entities import Metric

    metrics = [Metric(m["key"], m["value"], m["timestamp"], m["step"]) for m in unsent]
    _log_metric_batches(_mlflow(tracking_uri).MlflowClient(), run_id, metrics)


def _log_metric_batches(client, run_id: str, metrics: list) -> None:
    for i in range(0, len(metrics), 500):  # MLflow's limit per log_batch call
        client.log_batch(run_id, metrics=metrics[i:i + 500])


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    MetricLogger(run_id, tracking_uri).log(metrics, step)


def log_evaluation(tracking_uri: str, run_id: str, per_class_ap: dict[str, dict[str, float]], set_a_names: list[str]) -> None:
    """Per-class AP tables (one row per class, bbox and segm columns, set A/B) as an MLflow table."""
    names = sorted(set().union(*[set(t) for t in per_class_ap.values()])) if per_class_ap else []
    table = {"class": names, "set": ["A" if n in set_a_names else "B" for n in names]}
    for iou_type, column in per_class_ap.items():
        table[f"{iou_type}_AP"] = [column.get(n, -1.0) for n in names]
    log_table(tracking_uri, run_id, table, "eval/per_class_ap.json")


def log_artifact(tracking_uri: str, run_id: str, path: str, artifact_path: Optional[str] = None) -> None:
    _mlflow(tracking_uri).MlflowClient().log_artifact(run_id, path, artifact_path)


def log_model(tracking_uri: str, run_id: str, model, example_image, extra_files: list[str],
              registered_model: Optional[str]) -> Optional[str]:
    """Log the model (mlflow.pytorch) with a signature and input example; register it. Returns the version."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    mlflow = _mlflow(tracking_uri)
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1), "images")]))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(model, name="model", signature=signature,
                                        input_example=example_image[None].numpy().astype(np.float32),
                                        extra_files=extra_files, pip_requirements=_pip_requirements(),
                                        serialization_format="pickle")
    if not registered_model:
        return None
    return register(tracking_uri, info.model_uri, registered_model, {"run_id": run_id})


def register(tracking_uri: str, model_uri: str, name: str, tags: Optional[dict] = None) -> str:
    """A new version of registered model `name` from `model_uri`; returns the version number."""
    return _mlflow(tracking_uri).register_model(model_uri, name, tags=tags).version


def alias_version(tracking_uri: str, name: str, alias: str) -> Optional[str]:
    from mlflow.exceptions import MlflowException

    try:
        return _mlflow(tracking_uri).MlflowClient().get_model_version_by_alias(name, alias).version
    except MlflowException:
        return None


def version_tags(tracking_uri: str, name: str, version: str) -> dict[str, str]:
    return dict(_mlflow(tracking_uri).MlflowClient().get_model_version(name, version).tags)


def set_alias(tracking_uri: str, name: str, alias: str, version: str) -> None:
    _mlflow(tracking_uri).MlflowClient().set_registered_model_alias(name, alias, version)


def set_tags(tracking_uri: str, run_id: str, tags: dict[str, str]) -> None:
    client = _mlflow(tracking_uri).MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, redact(value))


def log_table(tracking_uri: str, run_id: str, table: dict, artifact_file: str) -> None:
    _mlflow(tracking_uri).MlflowClient().log_table(run_id, table, artifact_file)


def log_text(tracking_uri: str, run_id: str, text: str, artifact_file: str) -> None:
    _mlflow(tracking_uri).MlflowClient().log_text(run_id, text, artifact_file)


def mark_stopped(tracking_uri: str, run_id: str, reason: str) -> None:
    """A run a scheduler stopped is KILLED, whatever its dying process managed to set (FAILED)."""
    client = _mlflow(tracking_uri).MlflowClient()
    if client.get_run(run_id).info.status != "FINISHED":
        client.set_tag(run_id, "maskx.end_reason", reason)
        client.set_terminated(run_id, "KILLED")


def close_run_if_open(tracking_uri: str, run_id: str, status: str, reason: str) -> None:
    """End a run its process could not end (a trial stopped early or killed), saying why."""
    client = _mlflow(tracking_uri).MlflowClient()
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, "maskx.end_reason", reason)
        client.set_terminated(run_id, status)


def _pip_requirements() -> list[str]:
    # mlflow's inference would pin whatever the env holds; the model needs only these to load.
    import torch
    import torchvision

    return [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}", "maskx"]


def download_model(uri: str, tracking_uri: Optional[str] = None) -> str:
    """A local folder with an MLflow model (`runs:/ID/model`, `models:/NAME/VERSION`, `models:/NAME@ALIAS`)."""
    mlflow = _mlflow(resolve_tracking_uri(tracking_uri))
    return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tempfile.mkdtemp(prefix="maskx-model-"))
