"""Everything maskx says to MLflow: runs, params, metrics, eval tables, overlays, models, registry.

No other module imports mlflow, but `serving.py` (the served model's class). The embedded default store is `sqlite:///mlflow.db` in the working
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
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from .model_card import TrainingData

log = logging.getLogger(__name__)

DEFAULT_STORE = "mlflow.db"
REDACTED = "***"
# Keys whose values are secrets (AWS keys, tokens, passwords) never reach params or tags.
_SECRET_KEY = re.compile(r"(secret|password|passwd|token|credential|access_key|api_key|private)", re.I)
# `scheme://user:password@host` in any value.
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s:]+:[^/@\s]+@")


def resolve_tracking_uri(configured: Optional[str] = None, root: Optional[str] = None) -> str:
    """The store to use; a relative sqlite path resolves against `root` (default: the working folder)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + os.path.abspath(os.path.join(root or os.getcwd(), uri[len("sqlite:///"):]))
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


def redact_text(text: str) -> str:
    lines = []
    for line in text.splitlines():
        key = line.split(":", 1)[0]
        lines.append(f"{key}: {REDACTED}" if ":" in line and _SECRET_KEY.search(key) else redact(line))
    return "\n".join(lines) + "\n"


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


def log_metric_batches(client, run_id: str, metrics: list) -> None:
    for i in range(0, len(metrics), 500):  # MLflow's limit per log_batch call
        client.log_batch(run_id, metrics=metrics[i:i + 500])


def _pip_requirements() -> list[str]:
    # mlflow's inference would pin whatever the env holds; the model needs only these to load.
    import torch
    import torchvision

    return [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}", "maskx"]


class Tracking:
    """One MLflow tracking store (a server, or the sqlite default): its client, runs and registry.

    Pickles as its URI alone (Ray Tune saves its callbacks), and opens its client when first used."""

    def __init__(self, uri: Optional[str] = None):
        self.uri = resolve_tracking_uri(uri)
        self._client = None

    def __getstate__(self) -> dict:
        return {"uri": self.uri, "_client": None}

    @property
    def client(self):
        if self._client is None:
            self._client = _mlflow(self.uri).MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def redacted_uri(self) -> str:
        return redact(self.uri)

    def start_run(self, experiment: str, run_name: str, config_tree: dict, config_yaml: str,
                  tags: Optional[dict] = None, extra_params: Optional[dict[str, str]] = None) -> "TrackedRun":
        """A new run for one training run (or sweep): the resolved config as params and as `config.yaml`,
        and `extra_params` (facts about its data)."""
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        created = self.client.create_run(experiment_id, run_name=run_name,
                                         tags={k: str(redact(v)) for k, v in (tags or {}).items()})
        run = self.run(created.info.run_id)
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in {**flatten_params(config_tree), **(extra_params or {})}.items()]
        for i in range(0, len(params), 100):  # MLflow's limit per log_batch call
            self.client.log_batch(run.run_id, params=params[i:i + 100])
        run.log_text(redact_text(config_yaml), "config.yaml")
        return run

    def run(self, run_id: str) -> "TrackedRun":
        return TrackedRun(self, run_id)

    def register(self, model_uri: str, name: str, tags: Optional[dict] = None) -> str:
        """A new version of registered model `name` from `model_uri`; returns the version number."""
        return _mlflow(self.uri).register_model(model_uri, name, tags=tags).version

    def alias_version(self, name: str, alias: str) -> Optional[str]:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias).version
        except MlflowException:
            return None

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(name, version).tags)

    def describe(self, name: str, version: str, text: str) -> None:
        """The model card on the version and, as the latest word on it, on the registered model."""
        self.client.update_model_version(name, version, description=text)
        self.client.update_registered_model(name, description=f"Latest: version {version}.\n\n{text}")

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def download_model(self, uri: str) -> str:
        """A local folder with an MLflow model (`runs:/ID/model`, `models:/NAME/VERSION`, `models:/NAME@ALIAS`)."""
        return _mlflow(self.uri).artifacts.download_artifacts(artifact_uri=uri, dst_path=tempfile.mkdtemp(prefix="maskx-model-"))


class TrackedRun:
    """One MLflow run in a store, and everything maskx logs into it."""

    def __init__(self, tracking: Tracking, run_id: str):
        self.tracking, self.run_id = tracking, run_id

    @property
    def client(self):
        return self.tracking.client

    def status(self) -> str:
        return self.client.get_run(self.run_id).info.status

    def latest_metrics(self) -> dict[str, float]:
        return dict(self.client.get_run(self.run_id).data.metrics)

    def reopen(self) -> None:
        """A resumed run (or sweep) logs into the run it started, which an interruption or failure ended."""
        if self.status() != "RUNNING":
            self.client.update_run(self.run_id, status="RUNNING")

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)

    def mark_stopped(self, reason: str) -> None:
        """A run a scheduler stopped is KILLED, whatever its dying process managed to set (FAILED)."""
        if self.status() != "FINISHED":
            self.client.set_tag(self.run_id, "maskx.end_reason", reason)
            self.client.set_terminated(self.run_id, "KILLED")

    def close_if_open(self, status: str, reason: str) -> None:
        """End a run its process could not end (a trial stopped early or killed), saying why."""
        if self.status() == "RUNNING":
            self.client.set_tag(self.run_id, "maskx.end_reason", reason)
            self.client.set_terminated(self.run_id, status)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        log_metric_batches(self.client, self.run_id, [Metric(k, float(v), now, step) for k, v in metrics.items()])

    def logged_steps(self, after: int) -> dict[str, set[int]]:
        """metric -> the steps past `after` it already holds (what an interrupted pass logged)."""
        history = {key: self.client.get_metric_history(self.run_id, key) for key in self.latest_metrics()}
        return {key: {m.step for m in values if m.step > after} for key, values in history.items()}

    def log_datasets(self, data: list["TrainingData"]) -> None:
        """The run's inputs (the UI's Datasets): each manifest's URL, digest, sample count and source."""
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        inputs = []
        for d in data:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a local folder "can be interpreted in multiple ways"
                source = resolve_dataset_source(d.url)
            dataset = MetaDataset(source, name=f"{d.source}/{os.path.basename(d.url.rstrip('/'))}", digest=d.digest)
            tags = [InputTag("mlflow.data.context", d.context), InputTag("samples", str(d.samples))]
            tags += [InputTag("weight", str(d.weight))] if d.weight is not None else []
            inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags))
        self.client.log_inputs(self.run_id, datasets=inputs)

    def monitor_system(self, node: str, every_s: float):
        """MLflow's system metrics (CPU, memory, disk, network, GPU) of this node, as
        `system/NODE/...`, sampled every `every_s` seconds until `.finish()`; a restart continues the steps."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=every_s, resume_logging=True, node_id=node,
                                       tracking_uri=self.tracking.uri)
        monitor.start()
        return monitor

    def description(self) -> str:
        return self.client.get_run(self.run_id).data.tags.get("mlflow.note.content", "")

    def set_description(self, text: str) -> None:
        self.client.set_tag(self.run_id, "mlflow.note.content", text)

    def log_unsent(self, unsent: list[dict]) -> None:
        """Metric values a training process could not send (MLflow was down at its end), sent now."""
        from mlflow.entities import Metric

        metrics = [Metric(m["key"], m["value"], m["timestamp"], m["step"]) for m in unsent]
        log_metric_batches(self.client, self.run_id, metrics)

    def tags(self) -> dict[str, str]:
        return self.client.get_run(self.run_id).data.tags

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, redact(value))

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)

    def log_table(self, table: dict, artifact_file: str) -> None:
        self.client.log_table(self.run_id, table, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_evaluation(self, per_class_ap: dict[str, dict[str, float]], set_a_names: list[str]) -> None:
        """Per-class AP tables (one row per class, bbox and segm columns, set A/B) as an MLflow table."""
        names = sorted(set().union(*[set(t) for t in per_class_ap.values()])) if per_class_ap else []
        table = {"class": names, "set": ["A" if n in set_a_names else "B" for n in names]}
        for iou_type, column in per_class_ap.items():
            table[f"{iou_type}_AP"] = [column.get(n, -1.0) for n in names]
        self.log_table(table, "eval/per_class_ap.json")

    def log_model(self, model_files: str, example_image: bytes, registered_model: Optional[str]) -> Optional[str]:
        """Log the serving model (`serving.py`: a pyfunc from code, artifacts `model_files`) with its
        signature and a real image as input example; register it. Returns the version."""
        import pandas as pd
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

        from .run_folder import MODEL_FILES_ARTIFACT
        from .serving import DEFAULT_PARAMS, INPUT_COLUMN

        mlflow = _mlflow(self.tracking.uri)
        signature = ModelSignature(
            inputs=Schema([ColSpec("binary", INPUT_COLUMN)]),
            params=ParamSchema([ParamSpec("score_threshold", "double", DEFAULT_PARAMS["score_threshold"]),
                                ParamSpec("max_detections", "long", DEFAULT_PARAMS["max_detections"])]))
        with mlflow.start_run(run_id=self.run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=os.path.join(os.path.dirname(__file__), "pyfunc_model.py"),
                artifacts={MODEL_FILES_ARTIFACT: model_files}, signature=signature,
                input_example=pd.DataFrame({INPUT_COLUMN: [example_image]}), pip_requirements=_pip_requirements())
        if not registered_model:
            return None
        return self.tracking.register(info.model_uri, registered_model, {"run_id": self.run_id})
