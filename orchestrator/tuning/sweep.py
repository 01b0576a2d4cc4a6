"""`maskx tune`: Ray Tune sweeps where every trial is a full `maskx train` run (a TorchTrainer with its
own workers), an MLflow parent run per sweep with a child run per trial, and guarded promotion of
the best model to the registry's champion alias.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

from ray import tune

from maskx.datasets import storage

from .. import run_folder
from ..config import SweepConfig, TrainConfig, dump_config
from ..ray_cluster import connect
from ..reporting.report import log_report
from ..run_setup import absolute_storage_path, with_absolute_paths
from ..tracking.store import Tracking
from ..training.trainer import train
from .interrupt import interrupt_flag
from .promotion import Promotion, promote
from .search_space import PARAMS_KEY, VARIANT_KEY, search_space, trial_config, trial_overrides
from .sweep_report import log_summary, log_variant_table, variant_table, variant_table_markdown
from .trials import ERROR, FINISHED, INTERRUPTED, STOPPED, Trial

log = logging.getLogger(__name__)

SWEEP_RECORD = "maskx_sweep.json"
TRIAL_DRIVER_MEMORY = 256 * 2**20  # bytes


@dataclass
class SweepResult:
    sweep_folder: str
    parent_run_id: str
    trials: list[Trial]
    best: Optional[Trial]
    promotion: Promotion
    interrupted: bool = False
    variant_table: Optional[str] = None  # markdown, when the sweep has variants


class TrialProgress(tune.Callback):
    """The live table (one line per trial report and per trial end: trial, status, iteration, the
    sweep's metric, params); a trial the scheduler stops gets its MLflow run closed at once."""

    def __init__(self, metric: str, tracking: Tracking, write: Callable[[str], None] = print):
        self.metric, self.tracking, self.write = metric, tracking, write
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
        if run_id and self.tracking.run(run_id).status() == "FINISHED":
            self._row(trial, FINISHED)
            return
        if run_id:
            self.tracking.run(run_id).mark_stopped(STOPPED)
        self._row(trial, STOPPED)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._row(trial, ERROR)


def run_trial(params: dict, base: dict, parent_run_id: str, sweep_folder: str) -> None:
    """One Tune trial: a whole training run; Tune sees its reports through TuneReportCallback."""
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = trial_config(base, trial_overrides(base["sweep"]["variants"], params))
    cfg.mlflow.registered_model = None  # the sweep registers its best trial only
    cfg.checkpoint.storage_path = storage.join(sweep_folder, "trials")
    trial_name = f"{cfg.name}-{tune.get_context().get_trial_id()}"
    run_id = run_folder.read_mlflow_run(run_folder.run_folder(cfg.checkpoint.storage_path, trial_name))
    if run_id is None:
        train(cfg, run_name=trial_name, parent_run_id=parent_run_id, callbacks=[TuneReportCallback()])
        return
    # Tune restarts a trial when a sweep resumes or the trial errored: continue its run and MLflow run,
    # unless the run had already ended when the sweep was interrupted (Tune had not heard yet).
    mlflow_run = Tracking(cfg.mlflow.tracking_uri).run(run_id)
    if mlflow_run.status() == "FINISHED":
        tune.report({**mlflow_run.latest_metrics(), "mlflow_run_id": run_id, "iteration": cfg.solver.max_iter})
        return
    train(cfg, run_name=trial_name, parent_run_id=parent_run_id, callbacks=[TuneReportCallback()], resume=trial_name)


def sweep_folder_of(resume: str, storage_path: str) -> str:
    """What `--resume` names: a sweep by its name, as `maskx train --resume` takes a run's (the folder's
    name under `sweep.storage_path`), or its folder (local or s3://)."""
    if "/" not in resume and not os.path.isdir(resume):
        return storage.join(absolute_storage_path(storage_path), resume)
    return absolute_storage_path(resume)


def sweep(cfg: TrainConfig, resume: Optional[str] = None, write: Callable[[str], None] = log.info) -> SweepResult:
    """Run (or, with `resume` = a sweep's name or folder, continue) the sweep; `write` takes the live table's lines."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    cfg = with_absolute_paths(cfg)
    sw = cfg.sweep
    coco_metric = sw.metric.startswith(("bbox/", "segm/"))
    if coco_metric and not cfg.data.val:
        raise ValueError(f"sweep.metric: {sw.metric} needs data.val")
    # ASHA and Optuna read the metric from every report; a grid or random sweep without early stopping
    # only needs the final evaluation, which every run does. The report must carry it: an evaluation
    # scored beside training would reach MLflow after the report, and ASHA would cut or keep a trial
    # on a metric it does not have yet (docs/sweeps.md).
    metric_every_report = sw.scheduler == "asha" or sw.search == "optuna"
    if metric_every_report and coco_metric:
        cfg.eval_every, cfg.eval_mode = cfg.checkpoint.every, "inline"
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
    tracking = Tracking(cfg.mlflow.tracking_uri)
    cfg.mlflow.tracking_uri = tracking.uri
    if resume:
        sweep_folder = sweep_folder_of(resume, sw.storage_path)
        if storage.stat(storage.join(sweep_folder, SWEEP_RECORD)) is None:
            raise FileNotFoundError(f"--resume {resume}: no sweep at {sweep_folder} (a sweep's name under "
                                    f"sweep.storage_path {sw.storage_path}, or its folder)")
        record = json.loads(storage.read_bytes(storage.join(sweep_folder, SWEEP_RECORD)))
        parent = tracking.run(record["parent_run_id"])
        parent.reopen()
    else:
        name = f"{cfg.name}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
        sweep_folder = storage.join(absolute_storage_path(sw.storage_path), name)
        parent = tracking.start_run(cfg.mlflow.experiment, name, cfg.to_dict(), dump_config(cfg),
                                    tags={"maskx.sweep_folder": sweep_folder, "maskx.kind": "sweep"})
        storage.write_bytes(storage.join(sweep_folder, SWEEP_RECORD), json.dumps({"parent_run_id": parent.run_id}).encode())
    log.info("sweep %s: MLflow parent run %s", sweep_folder, parent.run_id)

    connect()
    # The trial function only waits on its TorchTrainer, whose workers hold the CPUs/GPUs; it asks for
    # a little memory instead of a CPU so that it never takes a core a trial's worker needs (Tune
    # refuses an all-zero request).
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=cfg.to_dict(), parent_run_id=parent.run_id, sweep_folder=sweep_folder),
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
                                      verbose=0, callbacks=[TrialProgress(sw.metric, tracking, write)]),
        )
    with interrupt_flag() as interrupted:
        grid = tuner.fit()

    trials = _trials(grid, sw, tracking, interrupted.is_set())
    if interrupted.is_set():
        # Tune saved its state: resuming reruns what was running and starts what had not started.
        reason = f"sweep interrupted; resume with maskx tune --resume {os.path.basename(sweep_folder)}"
        _close_children(tracking, trials, "KILLED", reason)
        parent.set_tags({"maskx.sweep_state": "interrupted"})
        parent.end("KILLED")
        return SweepResult(sweep_folder, parent.run_id, trials, None, Promotion("none: sweep interrupted"), interrupted=True)
    _close_children(tracking, trials)
    best = _best(trials, sw)
    if not best:
        promotion = Promotion("no finished trial")
    elif not sw.promote:
        promotion = Promotion("not registered: sweep.promote is false")
    else:
        promotion = promote(cfg, best, tracking, parent.run_id)
    log_summary(parent, trials, sw, promotion)
    table = None
    if sw.variants:
        rows = variant_table(trials, list(sw.variants), sw.table_metrics)
        table = variant_table_markdown(rows, sw.table_metrics)
        log_variant_table(parent, sweep_folder, rows, sw.table_metrics, table)
    log_report(parent)
    parent.end()
    return SweepResult(sweep_folder, parent.run_id, trials, best, promotion, variant_table=table)


def _trials(grid, sw: SweepConfig, tracking: Tracking, interrupted: bool) -> list[Trial]:
    """Each trial's state as its MLflow run tells it: FINISHED once `maskx train` got to the end (model
    logged); KILLED when the scheduler stopped it (possibly at its last report, before the model)."""
    trials = []
    for result in grid:
        metrics = result.metrics or {}
        run_id = metrics.get("mlflow_run_id") or None
        run_status = tracking.run(run_id).status() if run_id else None
        if result.error:
            status = ERROR
        elif run_status == "FINISHED":
            status = FINISHED
        else:
            status = INTERRUPTED if interrupted and run_status != "KILLED" else STOPPED
        config = result.config or {}
        trials.append(Trial(trial=metrics.get("trial_id") or os.path.basename(result.path), status=status,
                            params=trial_overrides(sw.variants, config), metric=metrics.get(sw.metric),
                            mlflow_run_id=run_id, iteration=metrics.get("iteration"), variant=config.get(VARIANT_KEY),
                            table_metrics={key: metrics.get(key) for key in sw.table_metrics}))
    return trials


def _best(trials: list[Trial], sw: SweepConfig) -> Optional[Trial]:
    finished = [t for t in trials if t.status == FINISHED and t.metric is not None and t.mlflow_run_id]
    if not finished:
        return None
    return (max if sw.mode == "max" else min)(finished, key=lambda t: t.metric)


def _close_children(tracking: Tracking, trials: list[Trial], status: Optional[str] = None, reason: Optional[str] = None) -> None:
    """Trials stopped by the scheduler, failed or interrupted leave their MLflow runs open: close them,
    saying why (a resumed trial reopens its run)."""
    for trial in trials:
        if trial.mlflow_run_id and trial.status != FINISHED:
            tracking.run(trial.mlflow_run_id).close_if_open(
                status or ("KILLED" if trial.status == STOPPED else "FAILED"), reason or trial.status)


def reproduce_command(config_path: str, best: Trial) -> str:
    overrides = " ".join(f"'{k}={json.dumps(v)}'" for k, v in best.params.items())
    return f"maskx train --config {config_path} {overrides}"
