"""Guarded promotion: a sweep's best model takes the registry's champion alias only if it beats the
current champion on the sweep's metric and eval set."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from ..config import TrainConfig
from ..tracking.store import Tracking
from .trials import Trial

log = logging.getLogger(__name__)


@dataclass
class Promotion:
    """What a sweep decided about the registry (written to its parent run as sweep/promotion.json)."""
    decision: str
    model: Optional[str] = None
    new_version: Optional[str] = None
    new_value: Optional[float] = None
    champion_version: Optional[str] = None
    champion_value: Optional[float] = None
    metric: Optional[str] = None

    @property
    def promoted(self) -> bool:
        return self.decision.startswith("promoted")


def promote(cfg: TrainConfig, best: Trial, tracking: Tracking, sweep_run_id: str) -> Promotion:
    """Register the best trial's model; move the champion alias only if it beats the current champion
    on this sweep's metric and eval set (the champion is re-evaluated here; a tie keeps it)."""
    name, alias, sw = cfg.mlflow.registered_model, cfg.sweep.champion_alias, cfg.sweep
    if not name:
        return Promotion("not registered: mlflow.registered_model is empty")
    version = tracking.register(f"runs:/{best.mlflow_run_id}/model", name,
                                {"maskx.metric": sw.metric, "maskx.metric_value": str(best.metric),
                                 "maskx.eval_set": cfg.data.val or ""})
    current = tracking.alias_version(name, alias)
    champion_value = None
    if current is None:
        decision = "promoted: no champion yet"
    else:
        champion_value = _champion_value(cfg, tracking, name, current)
        if champion_value is None:
            decision = f"kept the champion: it has no {sw.metric} comparable with this sweep's"
        else:
            better = best.metric > champion_value if sw.mode == "max" else best.metric < champion_value
            decision = "promoted: beats the champion" if better else "kept the champion: the new model does not beat it"
    if decision.startswith("promoted") and not move_alias_if_unchanged(tracking, name, alias, current, version):
        decision = (f"kept the champion: {alias} moved while this sweep compared with "
                    f"{'no champion' if current is None else 'v' + current}; compare again")
    promotion = Promotion(decision, name, version, best.metric, current, champion_value, sw.metric)
    # The trial's card, and why this version is in the registry.
    tracking.describe(name, version, f"{tracking.run(best.mlflow_run_id).description()}\n"
                                     f"Registered by sweep `{cfg.name}` ({sweep_run_id}): its best trial on `{sw.metric}` "
                                     f"({best.metric:.4f}, {sw.mode}); {decision}.\n")
    log.info("promotion: %s (new v%s %s=%.4f, champion v%s %s)", decision, version, sw.metric, best.metric, current,
             champion_value)
    return promotion


def move_alias_if_unchanged(tracking: Tracking, name: str, alias: str, expected: Optional[str], version: str) -> bool:
    """Point `alias` at `version` if it still points where the comparison found it (`expected`; None:
    nowhere); False, and nothing moved, if another sweep moved it meanwhile. MLflow has no
    compare-and-set for aliases: this narrows the race between two sweeps to the two calls here."""
    if tracking.alias_version(name, alias) != expected:
        return False
    tracking.set_alias(name, alias, version)
    return True


def _champion_value(cfg: TrainConfig, tracking: Tracking, name: str, version: str) -> Optional[float]:
    """The champion's figure on this sweep's metric: COCO metrics are recomputed on this sweep's eval
    set, on the version the alias pointed at (not the alias, which may move meanwhile); a
    training-loss metric can only be taken from the champion's registration tags."""
    metric = cfg.sweep.metric
    if metric.startswith(("bbox/", "segm/")):
        return evaluated_on_ray(cfg, f"models:/{name}/{version}").get(metric)
    tags = tracking.version_tags(name, version)
    if tags.get("maskx.metric") == metric and tags.get("maskx.eval_set") == (cfg.data.val or ""):
        return float(tags["maskx.metric_value"])
    return None


def evaluated_on_ray(cfg: TrainConfig, model_uri: str) -> dict[str, float]:
    """`maskx eval`'s metrics of `model_uri` on `cfg`'s data.val, as a Ray task on the connected
    cluster: on a GPU where the cluster has one (COCO val on a CPU takes hours), else a CPU."""
    import ray

    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    return ray.get(ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_evaluate).remote(cfg, model_uri))


def _evaluate(cfg: TrainConfig, model_uri: str) -> dict[str, float]:
    from ..run_setup import set_up_run
    from ..serving.inference import evaluate_model, inference_device

    return evaluate_model(set_up_run(cfg, train=False), model_uri, inference_device("auto")).metrics
