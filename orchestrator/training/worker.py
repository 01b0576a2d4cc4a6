"""One Ray Train worker's share of a run: what the driver hands it (`WorkerJob`), and what it holds
while it trains (`Worker`): its model and solver, where training and the data stand, what the last
step did. The train loop runs its steps; the hooks (`hooks.py`) read and add to it.
"""
from __future__ import annotations

import datetime
import logging
import tempfile
from dataclasses import dataclass
from typing import Iterator, Optional

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from maskx.datasets.partitions import StreamPosition
from maskx.datasets.stream import make_loader
from maskx.datasets.train_stream import Step
from maskx.models import build_model

from .. import run_folder
from ..config import TrainConfig
from ..evaluation.shards import Evaluation
from ..run_folder import TrainState
from ..run_setup import RunSetup
from ..tracking.store import TrackedRun, Tracking
from .init_from import initialize_from, local_backbone_weights
from .metric_logger import MetricLogger
from .parallel import ddp_options, sync_batch_norm
from .step import NonFiniteLoss, autocast_dtype, build_lr_scheduler, build_optimizer, train_step

log = logging.getLogger(__name__)

INIT_FROM_TAG = "maskx.init_from"  # what a new run took from model.init_from


@dataclass(frozen=True)
class WorkerJob:
    """What the driver hands every worker: the run as set up once, and where it records itself."""
    setup: RunSetup
    run_folder: str
    mlflow_run_id: Optional[str]
    tracking_uri: str
    record_keys_to: Optional[str] = None  # a folder for each rank's keys log
    verbose: bool = False


class Worker:
    """One rank's training state. `Worker(job)` builds the model and solver, takes up the newest
    complete checkpoint (the same one on every rank) or `model.init_from`, and wraps the model for DDP."""

    def __init__(self, job: WorkerJob):
        context = ray.train.get_context()
        self.job = job
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.local_rank = context.get_local_rank()
        self.device = ray.train.torch.get_device()
        cfg = job.setup.config
        torch.manual_seed(cfg.seed + self.rank)
        # bare: what checkpoints and evaluation take
        with tempfile.TemporaryDirectory(prefix="maskx-weights-") as scratch:
            model = build_model(local_backbone_weights(cfg.model, scratch, job.tracking_uri))
        self.model = sync_batch_norm(model, self.device.type, self.world_size).to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.solver)
        self.scheduler = build_lr_scheduler(self.optimizer, cfg.solver)
        self.amp = autocast_dtype(cfg.solver.amp, self.device)
        # float16's gradient scaler (its scale travels in checkpoints); bfloat16 needs none.
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp is torch.float16 else None
        self.state = TrainState()
        self.mlflow_run: Optional[TrackedRun] = Tracking(job.tracking_uri).run(job.mlflow_run_id) if job.mlflow_run_id else None
        self.resumed = self._take_up_checkpoint()
        self.setup = job.setup.continuing(self.state.plan if self.resumed else None)
        self.previous_world_size = self.state.world_size if self.resumed else None
        self.state.plan, self.state.world_size = self.setup.plan, self.world_size
        self.layout = self.setup.layout(self.world_size)
        self.trained = ray.train.torch.prepare_model(self.model, parallel_strategy_kwargs=ddp_options(self.model))
        # Only a run that evaluates has ranks waiting for rank 0's scoring (the group is made collectively).
        self.rank0_wait_group = rank0_wait_group(self.world_size, cfg.eval_timeout_s) if cfg.data.val else None
        self.metric_logger = MetricLogger(self.mlflow_run, in_training_process=True) if self.rank == 0 else None
        # What the current step did, for the hooks: the step, its losses, the latest logged training
        # metrics; whether the model was evaluated after it, the evaluation when scored at once (it
        # travels with the checkpoint), and on rank 0 the evaluations whose scores arrived after it
        # (iteration, evaluation; None where scoring failed).
        self.step: Optional[Step] = None
        self.losses: dict[str, float] = {}
        self.latest_metrics: dict[str, float] = {}
        self.evaluated = False
        self.evaluation: Optional[Evaluation] = None
        self.scored: list[tuple[int, Optional[Evaluation]]] = []

    @property
    def config(self) -> TrainConfig:
        return self.setup.config

    @property
    def iteration(self) -> int:
        return self.state.iteration

    @property
    def max_iter(self) -> int:
        return self.config.solver.max_iter

    @property
    def last(self) -> bool:
        return self.state.iteration == self.max_iter

    def due(self, every: Optional[int]) -> bool:
        """At the last iteration, and every `every` iterations when it is set."""
        return self.last or bool(every and self.state.iteration % every == 0)

    def steps(self) -> Iterator[Step]:
        """This rank's steps until `solver.max_iter`, epoch after epoch, from where the data stands."""
        cfg = self.config
        while self.state.iteration < self.max_iter:
            epoch = self.state.iteration // self.setup.steps_per_epoch
            if self.state.position.epoch != epoch:
                self.state.position = StreamPosition(epoch=epoch)
            stream = self.setup.train_stream(world_size=self.world_size, rank=self.rank, epoch=epoch,
                                             start=self.state.position)
            loader = make_loader(stream, cfg.data.loader_workers, pin_memory=self.device.type == "cuda")
            for step in stream.steps(loader):
                yield step
                if self.last:
                    return

    def run_step(self, step: Step) -> None:
        """One optimizer step on the global batch (this rank's micro-batches, gradients accumulated)."""
        solver = self.config.solver
        try:
            self.losses = train_step(self.trained, self.optimizer, self.scheduler, step.micro_batches, self.device,
                                     self.amp, solver.clip_grad_norm, layout=self.layout,
                                     loss_normalization=self.config.model.loss_normalization,
                                     on_nonfinite=solver.on_nonfinite, scaler=self.scaler)
        except NonFiniteLoss as exc:
            raise NonFiniteLoss(f"iteration {self.state.iteration + 1}: {exc}") from None
        self.state.iteration += 1
        self.state.position.advance(step.index, step.partitions)
        self.step = step

    def own_position(self) -> StreamPosition:
        """The data position of this rank's partitions."""
        return self.state.position.only(self.layout.rank_partitions(self.rank))

    @property
    def collective_device(self) -> torch.device:
        return self.device if dist.is_initialized() and dist.get_backend() == "nccl" else torch.device("cpu")

    def wait_for_rank0(self) -> None:
        """Every rank meets here after rank 0 alone did what may outlast the collective timeout (scoring
        an evaluation): see `rank0_wait_group`. Every rank must call it, rank 0 when it is done."""
        if self.rank0_wait_group is not None:
            dist.barrier(group=self.rank0_wait_group)

    def gather_to_rank0(self, obj) -> Optional[list]:
        """Every rank's `obj` on rank 0 (in rank order), None on the others."""
        if self.world_size == 1 or not dist.is_initialized():
            return [obj]
        gathered = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(obj, gathered, dst=0)
        return gathered

    def _take_up_checkpoint(self) -> bool:
        """Restore the newest complete checkpoint, the same on every rank; else `model.init_from`.
        Returns whether the run continues from a checkpoint."""
        resumed = agreed_resume_state(self.job.run_folder, ray.train.get_checkpoint(), self.rank)
        if resumed is not None:
            self.state = run_folder.restore(resumed, self.model, self.optimizer, self.scheduler, self.scaler)
            log.info("rank %d: resumed at iteration %d (epoch %d, step %d), written by %d workers, now %d", self.rank,
                     self.state.iteration, self.state.position.epoch, self.state.position.steps, self.state.world_size,
                     self.world_size)
            return True
        model_cfg = self.job.setup.config.model
        if model_cfg.init_from:
            taken = initialize_from(self.model, model_cfg.init_from, self.job.setup.vocab, model_cfg.init_from_parts,
                                    self.job.tracking_uri)
            if self.rank == 0:
                log.info(taken)
                self._tag_init_from(taken)
        return False

    def _tag_init_from(self, taken: str) -> None:
        if self.mlflow_run is None:
            return
        try:
            self.mlflow_run.set_tags({INIT_FROM_TAG: taken})
        except Exception as exc:  # the server is down: the log line above says it too
            log.warning("MLflow unreachable (%s): %s is not tagged", type(exc).__name__, INIT_FROM_TAG)


def rank0_wait_group(world_size: int, timeout_s: float) -> Optional[dist.ProcessGroup]:
    """A gloo group for the ranks to wait in while rank 0 works alone: with NCCL, a rank waiting in a
    collective past `scaling.collective_timeout_s` is ended by NCCL's watchdog; a gloo barrier with its
    own timeout (`eval_timeout_s`) holds no NCCL operation. Made by every rank at once (new_group is collective)."""
    if world_size == 1 or not dist.is_initialized():
        return None
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))


def agreed_resume_state(folder: str, offered: Optional[ray.train.Checkpoint], rank: int) -> Optional[dict]:
    """The state to continue from, the same on every rank: rank 0 finds the newest complete checkpoint
    in the run folder (not only what Ray offers: its record can lag the folder) and the others load
    that one. An error on rank 0 is every rank's, so none waits on a collective that never comes."""
    found = None
    choice: list = [None]
    if rank == 0:
        try:
            found = run_folder.resume_state(folder, offered.path if offered else None)
            choice = [("checkpoint", found[0]) if found else None]
        except Exception as exc:  # not only ValueError: storage down or credentials gone must not strand the others
            choice = [("error", str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}")]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(choice, src=0)
    if choice[0] is None:
        return None
    kind, value = choice[0]
    if kind == "error":
        raise ValueError(value)
    return found[1] if rank == 0 else run_folder.load_complete_state(value)
