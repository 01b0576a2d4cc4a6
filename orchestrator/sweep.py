"""`maskx tune`: Ray Tune sweeps where every trial is a full `maskx train` run (a TorchTrainer with its
own workers), an MLflow parent run per sweep with a child run per trial, and guarded promotion of
the best model to the registry's champion alias.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from ray import tune

from maskx.datasets import storage

from . import tracking
from .config import SweepConfig, TrainConfig, apply_override, dump_config, validate
from .trainer import MLFLOW_RUN_FILE, absolute_storage_path, run_folder_of, train, with_absolute_paths

log = logging.getLogger(__name__)

SWEEP_RECORD = "maskx_sweep.json"
PARAMS_KEY = "overrides"
VARIANT_KEY = "variant"
TRIAL_DRIVER_MEMORY = 256 * 2**20  # bytes
STOPPED = "stopped early"


@dataclass
class SweepResult:
    sweep_folder: str
    parent_run_id: str
    trials: list[dict]  # one row per trial: params, metric, status, MLflow run id
    best: Optional[dict]
    promotion: dict
    interrupted: bool = False
    variant_table: Optional[str] = None  # markdown, when the sweep has variants


class TrialProgress(tune.Callback):
    """The live table (one line per trial report and per trial end: trial, status, iteration, the
    sweep's metric, params); a trial the scheduler stops gets its MLflow run closed at once."""

    def __init__(self, metric: str, tracking_uri: str, write: Callable[[str], None] = print):
        self.metric, self.tracking_uri, self.write = metric, tracking_uri, write
        self.last: dict[str, dict] = {}

    def setup(self, **info):
        self.write(f"{'trial':14} {'status':14} {'iter':>6} {self.metric:>14}  params")

    def _row(self, trial, status: str) -> None:
        result = self.last.get(trial.trial_id, {})
        value = result.get(self.metric)
        overrides = trial.config.get(PARAMS_KEY, {})
        variant = trial.config.get(VARIANT_KEY)
        self.write(f"{trial.trial_id:14} {status:14} {result.get('iteration', '-')!s:>6} "
                   f"{'-' if value is None else format(value, '.4f'):>14}  "
                   + " ".join(([f"[{variant}]"] if variant else []) + [f"{k}={json.dumps(v)}" for k, v in overrides.items()]))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = result
        self._row(trial, "running")

    def on_trial_complete(self, iteration, trials, trial, **info):
        # Tune calls this both when the trial's run returns and when the scheduler stops it; only a
        # run that got to the end (model logged) has closed its MLflow run.
        run_id = self.last.get(trial.trial_id, {}).get("mlflow_run_id")
        if run_id and tracking.run_status(self.tracking_uri, run_id) == "FINISHED":
            self._row(trial, "finished")
            return
        if run_id:
            tracking.mark_stopped(self.tracking_uri, run_id, STOPPED)
        self._row(trial, STOPPED)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._row(trial, "error")


@contextlib.contextmanager
def interrupt_flag():
    """Ctrl-C stops the sweep as Tune's own handler would (state saved, running trials stopped; SIGUSR1
    is Tune's graceful stop) and sets the flag: `fit()` returns the same either way."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def stop(signum, frame):
        interrupted.set()
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C aborts at once
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGINT, stop)
    saved = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)
        if saved is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = saved


def search_space(sweep: SweepConfig):
    """Tune's param space from the config's `sweep.space`, under one key so dotted names stay intact;
    the variants' names are one more grid dimension."""
    from ray import tune

    samplers = {"grid": tune.grid_search, "choice": tune.choice,
                "uniform": lambda bounds: tune.uniform(*bounds), "loguniform": lambda bounds: tune.loguniform(*bounds)}
    space = {}
    for key, spec in sweep.space.items():
        if len(spec) != 1 or next(iter(spec)) not in samplers:
            raise ValueError(f"sweep.space.{key}: expected one of {{{', '.join(samplers)}: ...}}, got {spec}")
        kind, values = next(iter(spec.items()))
        if kind in ("uniform", "loguniform") and len(values) != 2:
            raise ValueError(f"sweep.space.{key}: {kind} takes [low, high], got {values}")
        if kind != "grid" and sweep.search == "grid":
            raise ValueError(f"sweep.space.{key}: search=grid takes only grid entries; use search=random or optuna")
        space[key] = samplers[kind](values)
    if sweep.variants:
        if sweep.search != "grid":
            raise ValueError(f"sweep.variants: runs every variant at every point of a grid; set sweep.search: grid, got {sweep.search}")
        if sweep.scheduler != "fifo":
            raise ValueError("sweep.variants: an ablation compares its variants at the same budget, so no trial may be "
                             f"stopped early; set sweep.scheduler: fifo, got {sweep.scheduler}")
        return {PARAMS_KEY: space, VARIANT_KEY: tune.grid_search(list(sweep.variants))}
    if not space:
        raise ValueError("sweep.space: empty; name at least one dotted config key to search over")
    return {PARAMS_KEY: space}


def trial_overrides(variants: dict[str, dict], params: dict) -> dict:
    """A trial's dotted overrides: its variant's (`sweep.variants`), then its point of the search space."""
    return {**variants.get(params.get(VARIANT_KEY), {}), **params.get(PARAMS_KEY, {})}


def trial_config(base: dict, overrides: dict) -> TrainConfig:
    tree = copy.deepcopy(base)
    for key, value in overrides.items():
        apply_override(tree, f"{key}={json.dumps(value)}")
    return validate(tree)


def run_trial(params: dict, base: dict, parent_run_id: str, sweep_folder: str) -> None:
    """One Tune trial: a whole training run; Tune sees its reports through TuneReportCallback."""
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = trial_config(base, trial_overrides(base["sweep"]["variants"], params))
    cfg.mlflow.registered_model = None  # the sweep registers its best trial only
    cfg.checkpoint.storage_path = storage.join(sweep_folder, "trials")
    trial_name = f"{cfg.name}-{tune.get_context().get_trial_id()}"
    record = storage.join(run_folder_of(cfg, trial_name), MLFLOW_RUN_FILE)
    if storage.stat(record) is None:
        train(cfg, run_name=trial_name, parent_run_id=parent_run_id, callbacks=[TuneReportCallback()])
        return
    # Tune restarts a trial when a sweep resumes or the trial errored: continue its run and MLflow run,
    # unless the run had already ended when the sweep was interrupted (Tune had not heard yet).
    run_id = json.loads(storage.read_bytes(record))["run_id"]
    if tracking.run_status(cfg.mlflow.tracking_uri, run_id) == "FINISHED":
        tune.report({**tracking.latest_metrics(cfg.mlflow.tracking_uri, run_id), "mlflow_run_id": run_id,
                     "iteration": cfg.solver.max_iter})
        return
    train(cfg, run_name=trial_name, parent_run_id=parent_run_id, callbacks=[TuneReportCallback()], resume=trial_name)


def sweep(cfg: TrainConfig, resume: Optional[str] = None, write: Callable[[str], None] = log.info) -> SweepResult:
    """Run (or, with `resume` = a sweep folder, continue) the sweep; `write` takes the live table's lines."""
    import ray
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    cfg = with_absolute_paths(cfg)
    sw = cfg.sweep
    coco_metric = sw.metric.startswith(("bbox/", "segm/"))
    if coco_metric and not cfg.data.val:
        raise ValueError(f"sweep.metric: {sw.metric} needs data.val")
    # ASHA and Optuna read the metric from every report; a grid or random sweep without early stopping
    # only needs the final evaluation, which every run does.
    metric_every_report = sw.scheduler == "asha" or sw.search == "optuna"
    if metric_every_report and coco_metric:
        cfg.eval_every = cfg.checkpoint.every
    if sw.storage_path is None:
        sw.storage_path = storage.join(cfg.checkpoint.storage_path, "sweeps")
    param_space = search_space(sw)
    base = cfg.to_dict()
    for name, overrides in sw.variants.items():
        try:
            trial_config(base, overrides)
        except ValueError as exc:  # named here, before any trial starts
            raise ValueError(f"sweep.variants.{name}: {exc}") from None
    # Resolved here, on the driver: trials run in other folders (the default sqlite path is relative).
    tracking_uri = cfg.mlflow.tracking_uri = tracking.resolve_tracking_uri(cfg.mlflow.tracking_uri)
    if resume:
        sweep_folder = absolute_storage_path(resume)
        record = json.loads(storage.read_bytes(storage.join(sweep_folder, SWEEP_RECORD)))
        parent_run_id = record["parent_run_id"]
        tracking.reopen_run(tracking_uri, parent_run_id)
    else:
        name = f"{cfg.name}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
        sweep_folder = storage.join(absolute_storage_path(sw.storage_path), name)
        parent_run_id = tracking.start_run(tracking_uri, cfg.mlflow.experiment, name, cfg.to_dict(), dump_config(cfg),
                                           tags={"maskx.sweep_folder": sweep_folder, "maskx.kind": "sweep"})
        storage.write_bytes(storage.join(sweep_folder, SWEEP_RECORD), json.dumps({"parent_run_id": parent_run_id}).encode())
    log.info("sweep %s: MLflow parent run %s", sweep_folder, parent_run_id)

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"))
    # The trial function only waits on its TorchTrainer, whose workers hold the CPUs/GPUs; it asks for
    # a little memory instead of a CPU so that it never takes a core a trial's worker needs (Tune
    # refuses an all-zero request).
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=cfg.to_dict(), parent_run_id=parent_run_id, sweep_folder=sweep_folder),
        {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY})
    if resume:
        tuner = tune.Tuner.restore(sweep_folder, trainable, resume_errored=True)
    else:
        # max_t one past the last report: ASHA stops any trial reaching max_t, which would cut a
        # finished run off before it logs its model.
        scheduler = (ASHAScheduler(time_attr="training_iteration", grace_period=sw.grace_period,
                                   reduction_factor=sw.reduction_factor,
                                   max_t=max(1, cfg.solver.max_iter // cfg.checkpoint.every + 1))
                     if sw.scheduler == "asha" else FIFOScheduler())
        search_alg = None
        if sw.search == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch(seed=cfg.seed)
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(metric=sw.metric if metric_every_report else None,
                                        mode=sw.mode if metric_every_report else None, scheduler=scheduler, search_alg=search_alg,
                                        num_samples=sw.num_samples, max_concurrent_trials=sw.max_concurrent_trials),
            # Tune's own tables print every metric of every trial; the live table prints what a sweep needs.
            run_config=tune.RunConfig(name=os.path.basename(sweep_folder), storage_path=os.path.dirname(sweep_folder),
                                      verbose=0, callbacks=[TrialProgress(sw.metric, tracking_uri, write)]),
        )
    with interrupt_flag() as interrupted:
        grid = tuner.fit()

    trials = _trial_rows(grid, sw, tracking_uri, interrupted.is_set())
    if interrupted.is_set():
        # Tune saved its state: resuming reruns what was running and starts what had not started.
        reason = f"sweep interrupted; resume with maskx tune --resume {sweep_folder}"
        _close_children(tracking_uri, trials, "KILLED", reason)
        tracking.set_tags(tracking_uri, parent_run_id, {"maskx.sweep_state": "interrupted"})
        tracking.end_run(tracking_uri, parent_run_id, "KILLED")
        return SweepResult(sweep_folder, parent_run_id, trials, None, {"decision": "none: sweep interrupted"}, interrupted=True)
    _close_children(tracking_uri, trials)
    best = _best(trials, sw)
    if not best:
        promotion = {"decision": "no finished trial"}
    elif not sw.promote:
        promotion = {"decision": "not registered: sweep.promote is false"}
    else:
        promotion = promote(cfg, best, tracking_uri, parent_run_id)
    _log_summary(tracking_uri, parent_run_id, trials, sw, promotion)
    table = None
    if sw.variants:
        rows = variant_table(trials, list(sw.variants), sw.table_metrics)
        table = variant_table_markdown(rows, sw.table_metrics)
        _log_variant_table(tracking_uri, parent_run_id, sweep_folder, rows, sw.table_metrics, table)
    tracking.end_run(tracking_uri, parent_run_id)
    return SweepResult(sweep_folder, parent_run_id, trials, best, promotion, variant_table=table)


def _trial_rows(grid, sw: SweepConfig, tracking_uri: str, interrupted: bool) -> list[dict]:
    """Each trial's state as its MLflow run tells it: FINISHED once `maskx train` got to the end (model
    logged); KILLED when the scheduler stopped it (possibly at its last report, before the model)."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        run_id = metrics.get("mlflow_run_id") or None
        run_status = tracking.run_status(tracking_uri, run_id) if run_id else None
        if result.error:
            status = "error"
        elif run_status == "FINISHED":
            status = "finished"
        else:
            status = "interrupted" if interrupted and run_status != "KILLED" else STOPPED
        config = result.config or {}
        rows.append({"trial": metrics.get("trial_id") or os.path.basename(result.path), "variant": config.get(VARIANT_KEY),
                     "params": trial_overrides(sw.variants, config), "metric": metrics.get(sw.metric),
                     "table_metrics": {key: metrics.get(key) for key in sw.table_metrics},
                     "iteration": metrics.get("iteration"), "mlflow_run_id": run_id, "status": status})
    return rows


def _best(trials: list[dict], sw: SweepConfig) -> Optional[dict]:
    finished = [t for t in trials if t["status"] == "finished" and t["metric"] is not None and t["mlflow_run_id"]]
    if not finished:
        return None
    return (max if sw.mode == "max" else min)(finished, key=lambda t: t["metric"])


def _close_children(tracking_uri: str, trials: list[dict], status: Optional[str] = None, reason: Optional[str] = None) -> None:
    """Trials stopped by the scheduler, failed or interrupted leave their MLflow runs open: close them,
    saying why (a resumed trial reopens its run)."""
    for trial in trials:
        if trial["mlflow_run_id"] and trial["status"] != "finished":
            tracking.close_run_if_open(tracking_uri, trial["mlflow_run_id"],
                                       status or ("KILLED" if trial["status"] == STOPPED else "FAILED"),
                                       reason or trial["status"])


def promote(cfg: TrainConfig, best: dict, tracking_uri: str, parent_run_id: str) -> dict:
    """Register the best trial's model; move the champion alias only if it beats the current champion
    on this sweep's metric and eval set (the champion is re-evaluated here; a tie keeps it)."""
    name, alias, sw = cfg.mlflow.registered_model, cfg.sweep.champion_alias, cfg.sweep
    if not name:
        return {"decision": "not registered: mlflow.registered_model is empty"}
    version = tracking.register(tracking_uri, f"runs:/{best['mlflow_run_id']}/model", name,
                                {"maskx.metric": sw.metric, "maskx.metric_value": str(best["metric"]), "maskx.eval_set": cfg.data.val or ""})
    current = tracking.alias_version(tracking_uri, name, alias)
    champion_value = None
    if current is None:
        decision = "promoted: no champion yet"
    else:
        champion_value = _champion_value(cfg, tracking_uri, name, alias, current)
        if champion_value is None:
            decision = f"kept the champion: it has no {sw.metric} comparable with this sweep's"
        else:
            better = best["metric"] > champion_value if sw.mode == "max" else best["metric"] < champion_value
            decision = "promoted: beats the champion" if better else "kept the champion: the new model does not beat it"
    if decision.startswith("promoted"):
        tracking.set_alias(tracking_uri, name, alias, version)
    promotion = {"decision": decision, "model": name, "new_version": version, "new_value": best["metric"],
                 "champion_version": current, "champion_value": champion_value, "metric": sw.metric}
    log.info("promotion: %s (new v%s %s=%.4f, champion v%s %s)", decision, version, sw.metric, best["metric"], current,
             champion_value)
    return promotion


def _champion_value(cfg: TrainConfig, tracking_uri: str, name: str, alias: str, version: str) -> Optional[float]:
    """The champion's figure on this sweep's metric: COCO metrics are recomputed on this sweep's eval
    set; a training-loss metric can only be taken from the champion's registration tags."""
    from .inference import evaluate_model

    metric = cfg.sweep.metric
    if metric.startswith(("bbox/", "segm/")):
        champion_metrics, _ = evaluate_model(cfg, f"models:/{name}@{alias}")
        return champion_metrics.get(metric)
    tags = tracking.version_tags(tracking_uri, name, version)
    if tags.get("maskx.metric") == metric and tags.get("maskx.eval_set") == (cfg.data.val or ""):
        return float(tags["maskx.metric_value"])
    return None


def _log_summary(tracking_uri: str, parent_run_id: str, trials: list[dict], sw: SweepConfig, promotion: dict) -> None:
    metrics = {"promotion/new_value": promotion.get("new_value"), "promotion/champion_value": promotion.get("champion_value")}
    tracking.log_metrics(tracking_uri, parent_run_id, {k: v for k, v in metrics.items() if v is not None}, 0)
    tracking.set_tags(tracking_uri, parent_run_id, {"promotion.decision": promotion["decision"],
                                                     "promotion.new_version": str(promotion.get("new_version")),
                                                     "promotion.champion_version": str(promotion.get("champion_version"))})
    keys = sorted({k for t in trials for k in t["params"]})
    table = {"trial": [t["trial"] for t in trials], "status": [t["status"] for t in trials],
             sw.metric: [t["metric"] for t in trials], "mlflow_run_id": [t["mlflow_run_id"] for t in trials]}
    if sw.variants:
        table["variant"] = [t["variant"] for t in trials]
    for key in keys:
        table[key] = [json.dumps(t["params"].get(key)) for t in trials]
    tracking.log_table(tracking_uri, parent_run_id, table, "sweep/trials.json")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "metric_by_param.png")
        plot_metric_by_param(trials, keys, sw.metric, path)
        tracking.log_artifact(tracking_uri, parent_run_id, path, "sweep")
        summary = os.path.join(folder, "promotion.json")
        with open(summary, "w") as f:
            json.dump(promotion, f, indent=1)
        tracking.log_artifact(tracking_uri, parent_run_id, summary, "sweep")


def variant_table(trials: list[dict], variants: list[str], metrics: list[str]) -> list[dict]:
    """One row per variant, in the config's order: each metric's mean and sample standard deviation
    over the variant's finished trials (its seeds), and the values they came from."""
    import statistics

    rows = []
    for variant in variants:
        runs = [t for t in trials if t["variant"] == variant]
        finished = [t for t in runs if t["status"] == "finished"]
        row = {"variant": variant, "finished": len(finished), "trials": len(runs), "metrics": {}}
        for metric in metrics:
            values = [t["table_metrics"][metric] for t in finished if t["table_metrics"].get(metric) is not None]
            row["metrics"][metric] = {"mean": statistics.fmean(values) if values else None,
                                      "std": statistics.stdev(values) if len(values) > 1 else None, "values": values}
        rows.append(row)
    return rows


def column_title(metric: str) -> str:
    """`segm/setB/AP50` -> `set-B mask AP50`, the paper's column names."""
    parts = metric.split("/")
    if len(parts) != 3 or parts[0] not in ("bbox", "segm"):
        return metric
    subset = {"setA": "set-A", "setB": "set-B", "all": "all"}.get(parts[1], parts[1])
    return f"{subset} {'mask' if parts[0] == 'segm' else 'box'} {parts[2]}"


def variant_table_markdown(rows: list[dict], metrics: list[str]) -> str:
    """The table in the paper's layout: AP in points (x100), mean ± sample std over seeds."""
    def cell(summary: dict) -> str:
        if summary["mean"] is None:
            return "-"
        mean = f"{100 * summary['mean']:.1f}"
        return mean if summary["std"] is None else f"{mean} ± {100 * summary['std']:.1f}"

    lines = ["| method | " + " | ".join(column_title(m) for m in metrics) + " | seeds |",
             "|---|" + "---:|" * len(metrics) + "---:|"]
    for row in rows:
        seeds = f"{row['finished']}" if row["finished"] == row["trials"] else f"{row['finished']} of {row['trials']}"
        lines.append(f"| {row['variant']} | " + " | ".join(cell(row["metrics"][m]) for m in metrics) + f" | {seeds} |")
    return "\n".join(lines) + "\n"


def _log_variant_table(tracking_uri: str, parent_run_id: str, sweep_folder: str, rows: list[dict], metrics: list[str],
                       markdown: str) -> None:
    """On the sweep's parent run (a table the MLflow UI shows, and the markdown) and in its folder."""
    columns = {"method": [row["variant"] for row in rows], "seeds": [row["finished"] for row in rows]}
    for metric in metrics:
        columns[f"{metric} mean"] = [row["metrics"][metric]["mean"] for row in rows]
        columns[f"{metric} std"] = [row["metrics"][metric]["std"] for row in rows]
    tracking.log_table(tracking_uri, parent_run_id, columns, "sweep/variants.json")
    tracking.log_text(tracking_uri, parent_run_id, markdown, "sweep/variants.md")
    storage.write_bytes(storage.join(sweep_folder, "variants.md"), markdown.encode())
    storage.write_bytes(storage.join(sweep_folder, "variants.json"), json.dumps(rows, indent=1).encode())


def plot_metric_by_param(trials: list[dict], keys: list[str], metric: str, path: str) -> None:
    """One panel per searched key (focal gamma/alpha, transfer settings, ...): the metric of each trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = keys or ["(none)"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for status, marker in (("finished", "o"), (STOPPED, "x"), ("error", "s")):
            points = [(str(t["params"].get(key)), t["metric"]) for t in trials if t["status"] == status and t["metric"] is not None]
            if points:
                ax.scatter([p[0] for p in points], [p[1] for p in points], marker=marker, label=status)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reproduce_command(config_path: str, best: dict) -> str:
    overrides = " ".join(f"'{k}={json.dumps(v)}'" for k, v in best["params"].items())
    return f"maskx train --config {config_path} {overrides}"
