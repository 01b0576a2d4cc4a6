"""`TrainConfig`: the whole config of a run, its top-level keys and its sections."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Optional

from maskx.models.config import ModelConfig

from .sections import (STRICT, CheckpointConfig, DataConfig, MlflowConfig, ScalingConfig, SolverConfig,
                       SweepConfig)


@dataclass
class TrainConfig:
    __pydantic_config__ = STRICT
    name: str = "maskx"  # the run's name: generated run names start with it (MLflow's run name, the run folder's)
    # The folder relative paths (shards, checkpoints, weights, a sqlite tracking store) resolve
    # against; default: the working folder. A job from `ray job submit` runs in a copy of the working
    # dir, so pass `root=$PWD` to mean the submitting folder.
    root: Optional[str] = None
    seed: int = 0  # the run's seed: sample order, augmentations, sampling, initialization
    log_every: int = 20  # iterations between logged training metrics (and the console line)
    eval_every: Optional[int] = None  # iterations between evaluations on data.val; null: only at the end
    # Where COCOeval of the evaluations every `eval_every` iterations runs: `background`, in a Ray task
    # beside training (the ranks predict, then train on: orchestrator/training/background_evaluation.py),
    # or `inline`, in rank 0 while the others wait. The last iteration's is inline either way: a run
    # ends evaluated. A sweep whose scheduler decides on a COCO metric at each report runs inline.
    eval_mode: Literal["background", "inline"] = "background"
    # CPUs a background COCOeval reserves: 0, a core Ray has not handed out (it runs one thread); where
    # training holds every CPU of the cluster, a task asking for one waits until training ends.
    eval_cpus: float = 0.0
    # How long the run's last step waits for background COCOeval tasks still running; one not done by
    # then is cancelled and scored in rank 0 (a task that never got its CPUs would otherwise hold the
    # run's end forever).
    eval_wait_s: float = 600.0
    # How long the other ranks wait while rank 0 alone scores an evaluation (inline, and the last one,
    # after its eval_wait_s). They wait in a gloo barrier of their own, outside NCCL's
    # scaling.collective_timeout_s, whose watchdog would otherwise end the run while rank 0 is still
    # in COCOeval (minutes at COCO val's size with the error analysis). A rank 0 that dies is found by Ray.
    eval_timeout_s: float = 14400.0
    # COCOeval's implementation: faster-coco-eval's C++ (pycocotools' numbers, faster: the times in
    # docs/benchmarks.md) or pycocotools' own.
    eval_backend: Literal["faster-coco-eval", "pycocotools"] = "faster-coco-eval"
    # COCO analyze()'s breakdown of each evaluation (the `eval/where_it_fails` figure: localization,
    # class confusion, background, misses): two more COCOeval passes per IoU type, each detection
    # against every object of another class it meets; ~4x COCOeval's time (docs/benchmarks.md).
    eval_error_analysis: bool = True
    # Images per forward pass when evaluating: 1, as detectron2's and torchvision's reference test
    # loaders. A batch pads its images to the largest, and detections depend slightly on which images
    # share one: with more, the metrics of the same model move with the world size and the shards'
    # split over ranks (0.293 vs 0.311 box AP measured on 10 images), and `maskx eval` would not give
    # the run's own figures.
    eval_batch_size: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def __post_init__(self):
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size: images per forward pass when evaluating, 1 or more; got {self.eval_batch_size}")
        if self.eval_cpus < 0:
            raise ValueError(f"eval_cpus: CPUs a background COCOeval reserves, 0 or more; got {self.eval_cpus}")
        if self.eval_wait_s <= 0:
            raise ValueError(f"eval_wait_s: seconds the last step waits for background COCOeval, > 0; got {self.eval_wait_s}")
        if self.eval_timeout_s <= self.eval_wait_s:
            raise ValueError(f"eval_timeout_s: seconds the other ranks wait for rank 0's scoring, more than eval_wait_s "
                             f"({self.eval_wait_s}); got {self.eval_timeout_s}")

    def to_dict(self) -> dict:
        return asdict(self)
