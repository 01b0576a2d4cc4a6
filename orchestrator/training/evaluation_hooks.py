"""The hooks of evaluation: `PeriodicEvaluation` (every `eval_every` iterations and at the end: each
rank predicts on its share of data.val, COCOeval in rank 0 or beside training) and `KeepBest` (the
model of the best evaluation by `checkpoint.keep_best`)."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import torch

from .. import run_folder
from ..config import dump_config
from ..evaluation.shards import Evaluation, predict_on_shards, score_shares
from ..reporting.evaluation_figures import ExampleImages, FigureLogger, evaluation_figures, title_of
from .background_evaluation import BackgroundScoring, log_line
from .hooks import Hook
from .worker import Worker

log = logging.getLogger(__name__)


class PeriodicEvaluation(Hook):
    """Every `eval_every` iterations and at the last, with `data.val`: every rank predicts its share
    of the val shards and rank 0 gathers them. COCOeval over them runs beside training
    (`eval_mode: background`, `background_evaluation.py`) or in rank 0 while the others wait
    (`inline`, and always at the last iteration, whose evaluation travels with the last checkpoint).
    Rank 0 logs each evaluation's metrics at the iteration it evaluated."""

    def __init__(self):
        self.background: Optional[BackgroundScoring] = None
        self.figures: Optional[FigureLogger] = None
        self.examples: Optional[ExampleImages] = None
        self.set_a_names: set[str] = set()

    def before_train(self, worker: Worker) -> None:
        cfg, setup = worker.config, worker.setup
        if worker.rank != 0 or not cfg.data.val:
            return
        if cfg.eval_every and cfg.eval_mode == "background":
            self.background = BackgroundScoring(vocab=setup.vocab, set_a=setup.set_a, backend=cfg.eval_backend,
                                                cpus=cfg.eval_cpus, error_analysis=cfg.eval_error_analysis,
                                                wait_s=cfg.eval_wait_s)
        if worker.mlflow_run and (cfg.mlflow.eval_figures or cfg.mlflow.eval_images):
            self.figures = FigureLogger(worker.mlflow_run)
            self.examples = ExampleImages(setup.val_sources, setup.vocab, setup.set_a, cfg.mlflow.eval_images)
            self.set_a_names = {setup.vocab.name(label) for label in setup.set_a}

    def after_step(self, worker: Worker) -> None:
        worker.evaluation, worker.evaluated, worker.scored = None, False, []
        cfg = worker.config
        if self.background:
            worker.scored = self.background.finished(wait=worker.last)
            for iteration, evaluation in worker.scored:
                if evaluation is not None:
                    self.log(worker, evaluation, iteration, log_line(evaluation.metrics, iteration))
        if not (cfg.data.val and worker.due(cfg.eval_every)):
            return
        # Whether rank 0 scores this one alone while the others wait (every rank reads it from the config).
        background = bool(cfg.eval_every) and cfg.eval_mode == "background"
        inline = worker.last or not background
        if worker.last and background:
            worker.wait_for_rank0()  # rank 0 waited up to eval_wait_s for the background tasks above
        worker.evaluated = True
        share = predict_on_shards(worker.model, worker.setup.val_sources, worker.setup.vocab,
                                  batch_size=cfg.eval_batch_size, device=worker.device, rank=worker.rank,
                                  world_size=worker.world_size)
        shares = worker.gather_to_rank0(share)
        if shares is None:  # not rank 0
            if inline:
                worker.wait_for_rank0()
            return
        if self.examples and self.examples.samples and not self.logged_before(worker, worker.iteration):
            detections, title = self.examples.predictions(worker.model, worker.device), title_of(worker.iteration)
            self.figures.submit(lambda: self.examples.figures(detections, title), worker.iteration)
        if self.background and not worker.last:
            self.background.submit(shares, worker.iteration)
            return
        worker.evaluation = score_shares(shares, worker.setup.vocab, worker.setup.set_a, cfg.eval_backend,
                                         cfg.eval_error_analysis)
        worker.scored.append((worker.iteration, worker.evaluation))
        self.log(worker, worker.evaluation, worker.iteration, log_line(worker.evaluation.metrics))
        worker.wait_for_rank0()

    def after_train(self, worker: Worker) -> None:
        if self.figures is not None:
            self.figures.close()

    def log(self, worker: Worker, evaluation: Evaluation, iteration: int, line: str) -> None:
        log.info("%s", line)
        if self.figures and worker.config.mlflow.eval_figures and not self.logged_before(worker, iteration):
            summary = evaluation.summary()
            self.figures.submit(lambda: evaluation_figures(summary, self.set_a_names, title_of(iteration)), iteration)
        if worker.metric_logger:
            worker.metric_logger.log(evaluation.metrics, iteration)

    @staticmethod
    def logged_before(worker: Worker, iteration: int) -> bool:
        """An evaluation an interrupted pass logged already (its metrics, and with them its figures)."""
        return bool(worker.metric_logger) and iteration in worker.metric_logger.already_logged.get("segm/all/AP", ())


class KeepBest(Hook):
    """`checkpoint.keep_best: METRIC`: rank 0 keeps the model of the best evaluation so far in the run
    folder (`run_folder.write_best`), beside the newest checkpoints Ray Train keeps. At each evaluation
    it copies the weights to host memory and holds them until that evaluation's score arrives (at once
    when inline, later from the background); a new best is written by a thread while training goes on,
    and the run ends after the last write."""

    def __init__(self):
        self.metric: Optional[str] = None
        self.best: Optional[run_folder.BestModel] = None
        self.candidates: dict[int, dict[str, torch.Tensor]] = {}  # iteration -> weights awaiting its score
        self.writer: Optional[ThreadPoolExecutor] = None

    def before_train(self, worker: Worker) -> None:
        if worker.rank != 0 or not worker.config.checkpoint.keep_best:
            return
        self.metric = worker.config.checkpoint.keep_best
        kept = run_folder.read_best(worker.job.run_folder)  # a resumed run goes on from its best so far
        self.best = kept if kept is not None and kept.metric == self.metric else None
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maskx-keep-best")

    def after_step(self, worker: Worker) -> None:
        if self.metric is None:
            return
        if worker.evaluated:
            self.candidates[worker.iteration] = {name: value.detach().to("cpu", copy=True)
                                                 for name, value in worker.model.state_dict().items()}
        for iteration, evaluation in worker.scored:
            weights = self.candidates.pop(iteration, None)
            if evaluation is None or weights is None:
                continue
            value = evaluation.metrics[self.metric]
            if self.best is not None and value <= self.best.value:
                continue
            self.best = run_folder.BestModel(iteration=iteration, metric=self.metric, value=value)
            log.info("best so far by %s: iteration %d (%.4f); writing %s", self.metric, iteration, value,
                     self.best.folder_name)
            self.writer.submit(_write_best, worker.job.run_folder, self.best, weights=weights,
                               config_yaml=dump_config(worker.config), vocab=worker.setup.vocab,
                               evaluation=evaluation.summary())

    def after_train(self, worker: Worker) -> None:
        if self.writer is not None:
            self.writer.shutdown(wait=True)


def _write_best(folder: str, best: run_folder.BestModel, **contents) -> None:
    try:
        run_folder.write_best(folder, best, **contents)
    except Exception as exc:  # training goes on; a later, better evaluation is written again
        log.error("best model of iteration %d not written to %s (%s: %s); best.json still names the one before",
                  best.iteration, folder, type(exc).__name__, exc)
