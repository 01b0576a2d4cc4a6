"""What a cluster of several hosts requires of a run, checked on the driver at start, not at the
first checkpoint an hour in: every path a worker opens is one each host sees."""
from __future__ import annotations

import os
from typing import Optional

from maskx.datasets import storage

from .. import run_folder
from ..config import TrainConfig
from ..redaction import redact


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


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 0))


def check_paths_reach_every_node(cfg: TrainConfig, tracking_uri: str) -> None:
    """Every path a worker opens must be one each host sees: `s3://`, a tracking server, or a local
    folder under `scaling.shared_paths`."""
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
        if local_only(path) and not path.startswith(run_folder.MLFLOW_SCHEMES):  # MLflow: through the server
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


def check_eval_cpus_fit(cfg: TrainConfig, cluster_cpus: float) -> None:
    """A background COCOeval that asks for CPUs the training workers hold never starts before
    training ends: refuse the run at start, naming the field. Only where the cluster already holds the
    training: one smaller is waiting for its autoscaler, whose new nodes this cannot foresee."""
    if cfg.scaling.elastic or not (cfg.data.val and cfg.eval_every and cfg.eval_mode == "background"
                                   and cfg.eval_cpus > 0):
        return
    held = cfg.scaling.num_workers * cfg.scaling.cpus_per_worker
    if held <= cluster_cpus < held + cfg.eval_cpus:
        raise ValueError(f"eval_cpus {cfg.eval_cpus:g}: the training workers hold {held:g} of the cluster's "
                         f"{cluster_cpus:g} CPUs, so a background COCOeval asking for {cfg.eval_cpus:g} would wait "
                         "until training ends; set eval_cpus 0 (a core Ray has not handed out) or add CPUs")
