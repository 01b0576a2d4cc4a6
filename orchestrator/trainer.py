"""`maskx train` on the driver: check the inputs, open the MLflow run, run the TorchTrainer, then log
the evaluation, overlays and the model, and register it.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

import torch
from torchvision.io import encode_jpeg, write_png

from maskx.datasets import storage
from maskx.datasets.partitions import EpochLayout
from maskx.datasets.shard_format import load_manifest
from maskx.datasets.stream import EvalStream, load_sources

from . import engine, run_folder
from .config import TrainConfig, dump_config
from .model_card import TrainingData, model_card
from .tracking import TrackedRun, Tracking, connection_errors, redact, resolve_tracking_uri
from .train_loop import train_loop_per_worker

log = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    run_name: str
    run_folder: str
    checkpoint: Optional[str]
    metrics: dict
    mlflow_run_id: Optional[str]
    tracking_uri: str
    model_version: Optional[str]


def run_folder_of(cfg: TrainConfig, run_name: str) -> str:
    return run_folder.run_folder(absolute_storage_path(cfg.checkpoint.storage_path), run_name)


def absolute_storage_path(path: str, root: Optional[str] = None) -> str:
    return path if storage.is_s3(path) else os.path.abspath(os.path.join(root or os.getcwd(), path))


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Relative local paths resolved against `root` (default: the driver's working folder), since Ray
    workers run elsewhere; a sqlite tracking store too."""
    for source in cfg.data.train:
        source.manifest = absolute_storage_path(source.manifest, cfg.root)
    if cfg.data.val:
        cfg.data.val = absolute_storage_path(cfg.data.val, cfg.root)
    cfg.checkpoint.storage_path = absolute_storage_path(cfg.checkpoint.storage_path, cfg.root)
    if cfg.sweep.storage_path:
        cfg.sweep.storage_path = absolute_storage_path(cfg.sweep.storage_path, cfg.root)
    if cfg.model.backbone.weights:
        cfg.model.backbone.weights = absolute_storage_path(cfg.model.backbone.weights, cfg.root)
    if cfg.model.init_from:
        cfg.model.init_from = absolute_storage_path(cfg.model.init_from, cfg.root)
    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri, cfg.root)
    if uri.startswith("sqlite:"):
        cfg.mlflow.tracking_uri = uri
    return cfg


def check_inputs(cfg: TrainConfig) -> None:
    """Fail on the driver, before any worker starts, when the shards or the config cannot work."""
    if not cfg.data.train:
        raise ValueError("data.train: no training manifests configured")
    if cfg.data.require_vg_coco_exclusion:
        check_vg_coco_exclusion(cfg)
    _, vocab = load_sources([(s.manifest, s.weight) for s in cfg.data.train])
    engine.bind_to_vocabulary(cfg, vocab)
    EpochLayout(engine.data_plan(cfg), cfg.scaling.max_workers, cfg.data.batch_size)  # the most workers fit the data plan
    if cfg.data.val:
        _, val_vocab = load_sources([(cfg.data.val, 1.0)])
        if val_vocab.to_json() != vocab.to_json():
            raise ValueError(f"data.val: {cfg.data.val} was prepared with another vocabulary than data.train")


def check_paths_reach_every_node(cfg: TrainConfig, tracking_uri: str) -> None:
    """On a cluster of several hosts, every path a worker opens must be one each host sees: `s3://`,
    a tracking server, or a local folder under `scaling.shared_paths`. Said at start, not at the first
    checkpoint an hour in."""
    shared = [os.path.abspath(p) for p in cfg.scaling.shared_paths]

    def local_only(path: Optional[str]) -> bool:
        return bool(path) and not storage.is_s3(path) and not any(
            os.path.commonpath([os.path.abspath(path), prefix]) == prefix for prefix in shared)

    problems = [f"checkpoint.storage_path {cfg.checkpoint.storage_path}: use s3://BUCKET/PREFIX"] \
        if local_only(cfg.checkpoint.storage_path) else []
    problems += [f"data.train.{i}.manifest {s.manifest}: prepare the shards to s3:// (maskx prepare --out s3://...)"
                 for i, s in enumerate(cfg.data.train) if local_only(s.manifest)]
    if local_only(cfg.data.val):
        problems.append(f"data.val {cfg.data.val}: prepare the val shards to s3://")
    for key, path in (("model.backbone.weights", cfg.model.backbone.weights), ("model.init_from", cfg.model.init_from)):
        if local_only(path):
            problems.append(f"{key} {path}: put the file on every node or on a shared path")
    if tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri:
        store = tracking_uri.split(":///", 1)[-1]
        if local_only(store):
            problems.append(f"mlflow.tracking_uri {redact(tracking_uri)}: a store on this host; run a tracking server "
                            "the workers reach (`maskx mlflow-server --host ADDRESS`) and set mlflow.tracking_uri=http://...")
    if problems:
        raise ValueError("this Ray cluster has several hosts, and these paths exist on this one only: "
                         + "; ".join(problems)
                         + ". Or, if they are on a filesystem every node mounts at the same path, list it in "
                           "scaling.shared_paths")


def spans_several_hosts(cfg: TrainConfig) -> bool:
    """Whether the workers may run on another host than this driver: the cluster has other nodes, or
    this node has nothing to train on (a head kept free of training, its workers yet to be autoscaled)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    alive = [node for node in ray.nodes() if node["Alive"]]
    if any(node["NodeID"] != here for node in alive):
        return True
    resources = next((node["Resources"] for node in alive if node["NodeID"] == here), {})
    return resources.get("GPU" if cfg.scaling.use_gpu else "CPU", 0) == 0


def check_vg_coco_exclusion(cfg: TrainConfig) -> None:
    """Every VG training manifest was prepared with --exclude-coco (its counts say how many it left out)."""
    for i, source in enumerate(cfg.data.train):
        manifest = load_manifest(source.manifest)
        if manifest.source == "vg" and "excluded_coco_images" not in manifest.counts["vg"]:
            raise ValueError(
                f"data.train.{i}: {manifest.location} was prepared without --exclude-coco, and "
                "data.require_vg_coco_exclusion is true: VG images that are COCO images of the evaluation split "
                "would be trained on. Prepare it again with `maskx prepare vg ... --exclude-coco "
                "instances_val2017.json`, or set data.require_vg_coco_exclusion=false")


def train(cfg: TrainConfig, resume: Optional[str] = None, record_keys_to: Optional[str] = None,
          run_name: Optional[str] = None, parent_run_id: Optional[str] = None, callbacks: list = (),
          verbose: bool = False) -> TrainingResult:
    """Train (or continue run `resume`) on the connected Ray cluster, or a local one when none is running.

    A sweep trial passes its own `run_name`, the sweep's MLflow `parent_run_id` and Tune's report callback.
    `verbose` keeps Ray Train's per-report records and MLflow's upload progress bars."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .metric_logger import FailureRecorder
    from .process_group import NodeAddressTorchConfig

    cfg = with_absolute_paths(cfg)
    if not verbose:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    check_inputs(cfg)
    tracking = Tracking(cfg.mlflow.tracking_uri)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"))
    if spans_several_hosts(cfg):
        check_paths_reach_every_node(cfg, tracking.uri)
    run_name = resume or run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = run_folder_of(cfg, run_name)
    if resume and run_folder.read_mlflow_run(folder) is None:
        raise FileNotFoundError(f"--resume {resume}: no run of that name under {cfg.checkpoint.storage_path}")
    mlflow_run = _mlflow_run(cfg, run_name, folder, tracking, parent_run_id)
    log.info("run %s: checkpoints in %s, MLflow run %s at %s", run_name, folder, mlflow_run.run_id, tracking.redacted_uri)

    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = cfg.scaling.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "run_folder": folder, "mlflow_run_id": mlflow_run.run_id,
                           "mlflow_tracking_uri": tracking.uri,
                           "record_keys_to": record_keys_to and os.path.abspath(record_keys_to), "verbose": verbose},
        scaling_config=ScalingConfig(num_workers=cfg.scaling.ray_num_workers(), use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker=resources, placement_strategy=cfg.scaling.placement_strategy,
                                     elastic_resize_monitor_interval_s=cfg.scaling.elastic_resize_monitor_interval_s),
        torch_config=NodeAddressTorchConfig(timeout_s=cfg.scaling.collective_timeout_s),
        run_config=RunConfig(
            name=run_name,
            storage_path=absolute_storage_path(cfg.checkpoint.storage_path),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep),
            failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures),
            callbacks=[FailureRecorder(tracking.uri, mlflow_run.run_id), *callbacks],
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:
        # Only if still open: a sweep marks a trial its scheduler stopped KILLED.
        mlflow_run.close_if_open("FAILED", f"training failed: {type(exc).__name__}")
        raise RuntimeError(f"run {run_name} failed ({exc}); its checkpoints are in {folder}; "
                           f"continue it with `maskx train --config ... --resume {run_name}`") from exc

    checkpoint = result.checkpoint.path if result.checkpoint else None
    metrics, version = {}, None
    try:
        if result.checkpoint is not None:
            with result.checkpoint.as_directory() as checkpoint_folder:
                metrics, version = _log_final(cfg, checkpoint_folder, mlflow_run, run_name)
        mlflow_run.end()
    except connection_errors() as exc:
        raise RuntimeError(
            f"run {run_name} trained to the end (checkpoint {checkpoint}), but its last metrics, evaluation, "
            f"overlays and model could not be logged to MLflow at {tracking.redacted_uri} "
            f"({type(exc).__name__}: {redact(str(exc).splitlines()[0][:200])}); once the server is back, "
            f"`maskx train --config ... --resume {run_name}` logs them") from None
    return TrainingResult(run_name, folder, checkpoint, metrics, mlflow_run.run_id, tracking.uri, version)


def _mlflow_run(cfg: TrainConfig, run_name: str, folder: str, tracking: Tracking,
                parent_run_id: Optional[str] = None) -> TrackedRun:
    """The run's MLflow run: the one recorded in its folder when resuming, else a new one."""
    run_id = run_folder.read_mlflow_run(folder)
    if run_id is not None:
        mlflow_run = tracking.run(run_id)
        mlflow_run.reopen()
        return mlflow_run
    mlflow_run = tracking.start_run(cfg.mlflow.experiment, run_name, cfg.to_dict(), dump_config(cfg),
                                    tags=run_tags(cfg, folder, parent_run_id), extra_params=training_data_params(cfg))
    mlflow_run.log_datasets(training_data(cfg))
    run_folder.write_mlflow_run(folder, mlflow_run.run_id, tracking.redacted_uri)
    return mlflow_run


def run_tags(cfg: TrainConfig, folder: str, parent_run_id: Optional[str]) -> dict[str, str]:
    tags = {"maskx.run_folder": folder, "maskx.config": cfg.name, "maskx.num_classes": str(cfg.model.num_classes),
            "maskx.mask_sets": ",".join(cfg.data.mask_sets), "mlflow.source.name": "maskx train",
            "mlflow.source.type": "JOB"}
    commit = source_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return tags


def source_commit() -> Optional[str]:
    """The git commit of the maskx code running, when it runs from a checkout."""
    import subprocess

    try:
        found = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "HEAD"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found.stdout.strip() if found.returncode == 0 else None


def training_data(cfg: TrainConfig) -> list[TrainingData]:
    """Each manifest the run reads, with a digest of its shards' checksums (what changes when the data does)."""
    import hashlib

    listed = [(s.manifest, "train", s.weight) for s in cfg.data.train] + ([(cfg.data.val, "val", None)] if cfg.data.val else [])
    data = []
    for url, context, weight in listed:
        manifest = load_manifest(url)
        digest = hashlib.sha256("".join(shard.sha256 for shard in manifest.shards).encode()).hexdigest()[:16]
        data.append(TrainingData(url, manifest.source, context, manifest.num_samples, digest, weight))
    return data


def training_data_params(cfg: TrainConfig) -> dict[str, str]:
    """What each training manifest holds, from its counts: `data.train.1.images`, and for VG prepared
    with --exclude-coco `data.train.1.excluded_coco_images` (the VG images left out because they are in
    the COCO split evaluated on)."""
    params = {}
    for i, source in enumerate(cfg.data.train):
        manifest = load_manifest(source.manifest)
        params[f"data.train.{i}.source"] = manifest.source
        params.update({f"data.train.{i}.{key}": str(value) for key, value in manifest.counts[manifest.source].items()})
    return params


def _log_final(cfg: TrainConfig, checkpoint_folder: str, mlflow_run: TrackedRun, run_name: str) -> tuple[dict, Optional[str]]:
    """Eval tables, overlays of a few val images and the model (registered) from the last checkpoint."""
    from .inference import draw_overlay, load_model, predict

    unsent = run_folder.read_unsent_metrics(checkpoint_folder)
    if unsent:
        mlflow_run.log_unsent(unsent)
    loaded = load_model(checkpoint_folder)
    metrics = {}
    evaluation = run_folder.read_evaluation(checkpoint_folder)
    if evaluation:
        metrics = evaluation["metrics"]
        set_a = [loaded.vocab.name(label) for label in loaded.config.model.mask_classes or []]
        mlflow_run.log_evaluation(evaluation["per_class_ap"], set_a)
        mlflow_run.log_artifact(run_folder.eval_path(checkpoint_folder), "eval")
    example = None
    if cfg.data.val:
        sources, vocab = load_sources([(cfg.data.val, 1.0)])
        with tempfile.TemporaryDirectory() as folder:
            for i, batch in enumerate(EvalStream(sources, vocab, batch_size=1)):
                if i == 4:
                    break
                image = batch.images[0]
                example = encode_jpeg(image).numpy().tobytes() if example is None else example
                path = os.path.join(folder, f"{batch.keys[0].replace('/', '_')}.png")
                write_png(draw_overlay(image, predict(loaded.model, image), vocab), path)
                mlflow_run.log_artifact(path, "overlays")
    if example is None:
        size = loaded.config.model.min_size
        example = encode_jpeg(torch.zeros(3, size, size, dtype=torch.uint8)).numpy().tobytes()
    with tempfile.TemporaryDirectory() as folder:
        files = run_folder.model_files(checkpoint_folder, loaded.model, os.path.join(folder, run_folder.MODEL_FILES_ARTIFACT))
        version = mlflow_run.log_model(files, example, cfg.mlflow.registered_model)
    model_uri = f"models:/{cfg.mlflow.registered_model}/{version}" if version else f"runs:/{mlflow_run.run_id}/model"
    card = model_card(cfg, loaded.vocab, metrics, training_data(cfg), run_name, mlflow_run.run_id, cfg.solver.max_iter,
                      model_uri)
    mlflow_run.set_description(card)
    if version:
        mlflow_run.tracking.describe(cfg.mlflow.registered_model, version, card)
    return metrics, version
