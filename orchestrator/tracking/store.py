"""One MLflow store and its runs: params, metrics, tables, artifacts, inputs, the registry.

`Tracking` holds a store's client; `TrackedRun` is one run in it. The modules of maskx that talk to
MLflow do it through these, but for what MLflow itself must build: the logged model
(`model_logging.py`), the served model's class (`pyfunc.py`) and the system-metrics monitor
(`monitor_system`). The embedded default store is `sqlite:///mlflow.db` in the config's root (made
absolute, so Ray workers started elsewhere write to the same file; `config.resolve_tracking_uri`);
set `mlflow.tracking_uri` or `MLFLOW_TRACKING_URI` to use a tracking server.
"""
from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Optional

from ..config import resolve_tracking_uri
from ..redaction import flatten_params, redact, redact_text

if TYPE_CHECKING:
    from ..run_setup import TrainingData

log = logging.getLogger(__name__)

# MLflow's limits per log_batch call (mlflow.utils.validation: MAX_METRICS_PER_BATCH,
# MAX_PARAMS_TAGS_PER_BATCH).
METRICS_PER_BATCH = 1000
PARAMS_PER_BATCH = 100
def mlflow_at(tracking_uri: str):
    """The mlflow module, its fluent API pointed at `tracking_uri`."""
    # MLflow prints "View run at <tracking URI>" when a run ends, credentials in the URI included.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    return mlflow


def connection_errors() -> tuple[type[Exception], ...]:
    """What the MLflow client raises when the tracking server cannot be reached (after its retries)."""
    import requests
    from mlflow.exceptions import MlflowException

    return (requests.exceptions.ConnectionError, MlflowException)


def log_metric_batches(client, run_id: str, metrics: list) -> None:
    for i in range(0, len(metrics), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + METRICS_PER_BATCH])


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
            self._client = mlflow_at(self.uri).MlflowClient(tracking_uri=self.uri)
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
        for i in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(run.run_id, params=params[i:i + PARAMS_PER_BATCH])
        run.log_text(redact_text(config_yaml), "config.yaml")
        return run

    def run(self, run_id: str) -> "TrackedRun":
        return TrackedRun(self, run_id)

    def newest_run(self, experiment: str) -> str:
        """The id of the run of `experiment` that started last."""
        found = self.client.get_experiment_by_name(experiment)
        runs = self.client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"],
                                       max_results=1) if found else []
        if not runs:
            raise ValueError(f"--experiment {experiment}: no run in {self.redacted_uri}")
        return runs[0].info.run_id

    def register(self, model_uri: str, name: str, tags: Optional[dict] = None) -> str:
        """A new version of registered model `name` from `model_uri`; returns the version number."""
        return mlflow_at(self.uri).register_model(model_uri, name, tags=tags).version

    def alias_version(self, name: str, alias: str) -> Optional[str]:
        """The version `alias` points at; None only where the registry says there is no such alias (or
        model). Any other failure (403, 5xx, a timeout) raises: a champion that could not be read is
        not an absent one."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias).version
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or (
                    exc.error_code == "INVALID_PARAMETER_VALUE" and f"alias {alias} not found" in exc.message):
                return None
            raise

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(name, version).tags)

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(name, version, key, value)

    def model_source(self, model_uri: str) -> tuple[str, Optional[str], Optional[str]]:
        """(run id, registered name, version) of `runs:/ID/...` or `models:/NAME/VERSION|@ALIAS`; name
        and version None for a run's model."""
        if model_uri.startswith("runs:/"):
            return model_uri[len("runs:/"):].split("/")[0], None, None
        if not model_uri.startswith("models:/"):
            raise ValueError(f"{model_uri}: no MLflow model (runs:/ID/model or models:/NAME/VERSION)")
        reference = model_uri[len("models:/"):]
        if "@" in reference:
            name, alias = reference.split("@", 1)
            found = self.client.get_model_version_by_alias(name, alias)
        else:
            name, version = reference.split("/", 1)
            found = self.client.get_model_version(name, version)
        return found.run_id, name, found.version

    def describe(self, name: str, version: str, text: str) -> None:
        """The model card on the version and, as the latest word on it, on the registered model."""
        self.client.update_model_version(name, version, description=text)
        self.client.update_registered_model(name, description=f"Latest: version {version}.\n\n{text}")

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def download(self, uri: str, folder: str) -> str:
        """An MLflow model (`runs:/ID/model`, `models:/NAME/VERSION`, `models:/NAME@ALIAS`) or any artifact
        of a run (`runs:/ID/PATH`, a file or a folder) downloaded into `folder`; returns its path there."""
        return mlflow_at(self.uri).artifacts.download_artifacts(artifact_uri=uri, dst_path=folder)


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
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = []
        for d in data:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a local folder "can be interpreted in multiple ways"
                source = resolve_dataset_source(d.url)
            dataset = MetaDataset(source, name=f"{d.source}/{os.path.basename(d.url.rstrip('/'))}", digest=d.digest)
            tags = [InputTag("mlflow.data.context", d.context), InputTag("samples", str(d.samples))]
            tags += [InputTag("weight", str(d.weight))] if d.weight is not None else []
            inputs.append(DatasetInput(Dataset(**dataset.to_dict()), tags))
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

    def log_figure(self, figure, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_image(self, image, key: str, step: int) -> None:
        """A PIL image as MLflow's time-stepped image `key` at `step` (the UI's image slider)."""
        self.client.log_image(self.run_id, image, key=key, step=step)

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
