"""The sections of the training config below its top level: data, solver, scaling, checkpoint,
mlflow, sweep (the model's is `maskx.models.config.ModelConfig`)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from maskx.datasets.shard_cache import CacheSettings

STRICT = {"extra": "forbid"}  # pydantic: an unknown key is an error that names it


@dataclass
class TrainSource:
    __pydantic_config__ = STRICT
    manifest: str  # a shards folder's manifest (local or s3://, written by `maskx prepare`)
    weight: float = 1.0  # its share of the samples drawn, relative to the other sources' weights


@dataclass
class DataConfig:
    __pydantic_config__ = STRICT
    train: list[TrainSource] = field(default_factory=list)  # the training sources, mixed by weight: [{manifest: ..., weight: 1.0}, ...]
    val: Optional[str] = None  # the evaluation split's manifest; null: no evaluation
    # Set A, the classes whose masks train the mask head: named class sets (coco, voc, nonvoc, vg, all),
    # class names or labels, in any mix (`[voc]`; `[person, car, 7]`).
    mask_sets: list[Union[str, int]] = field(default_factory=lambda: ["coco"])
    batch_size: int = 2  # images per worker per micro-batch (what fits one GPU)
    loader_workers: int = 2  # DataLoader processes per worker (each decodes JPEGs and masks)
    min_sizes: list[int] = field(default_factory=lambda: [800])  # training: each image's shorter side drawn from these (multi-scale training with several)
    max_size: int = 1333  # training: the longer side's limit
    flip_prob: float = 0.5  # training: horizontal flip probability
    shuffle_buffer: int = 256  # samples each partition's reader shuffles among (seeded)
    # Samples per optimizer step, kept when the world size changes (more micro-batches per step on
    # fewer workers). Default: batch_size x the most workers (scaling.num_workers). Fixed at the run's
    # start; a resumed run keeps its own.
    global_batch_size: Optional[int] = None
    # Canonical partitions of each epoch: the sample order depends on this, never on the world size.
    # At most this many workers can train the run. Default: the most workers x max(1, loader_workers).
    # Fixed at the run's start like global_batch_size.
    partitions: Optional[int] = None
    # Default: one pass over the training samples (their count // the global batch).
    steps_per_epoch: Optional[int] = None
    # Repeat-factor sampling (LVIS; detectron2's RepeatFactorTrainingSampler, whose LVIS configs use
    # 0.001): an image whose rarest class is in fewer than this fraction of the images read is read
    # sqrt(threshold / frequency) times a pass. Off (null) by default; docs/training.md says when to use it.
    repeat_threshold: Optional[float] = None
    # Fail the run when more than this fraction of drawn samples was unusable.
    max_skipped_fraction: float = 0.01
    # Refuse VG training manifests prepared without `--exclude-coco` (VG images that are COCO images
    # of the evaluation split would be trained on). On in the configs that evaluate on COCO val.
    require_vg_coco_exclusion: bool = False
    # A folder on each node's local disk where the s3:// shards read are kept (checked against their
    # manifest's sha256), so each crosses the network once per node rather than once per epoch; the
    # least recently used go past cache_limit_gb, and each reader fetches its next shards ahead. Every
    # process of a node shares it. Off (null) by default; local shards are always read in place.
    cache_dir: Optional[str] = None
    cache_limit_gb: float = 100.0  # the most disk the shard cache takes on a node (GB)

    def __post_init__(self):
        if self.repeat_threshold is not None and not 0 < self.repeat_threshold <= 1:
            raise ValueError(f"data.repeat_threshold: a fraction of images in (0, 1] (0.001 in detectron2's LVIS "
                             f"configs), or null for off; got {self.repeat_threshold}")
        if self.cache_limit_gb <= 0:
            raise ValueError(f"data.cache_limit_gb: the most disk the shard cache takes on a node, in GB, above 0; "
                             f"got {self.cache_limit_gb}")

    def cache_settings(self) -> Optional[CacheSettings]:
        return CacheSettings(self.cache_dir, int(self.cache_limit_gb * 1e9)) if self.cache_dir else None


@dataclass
class SolverConfig:
    __pydantic_config__ = STRICT
    lr: float = 0.02  # base learning rate for the global batch (0.02 for 16 images, Detectron's)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # not on biases and norm parameters (Detectron's and detectron2's practice)
    # Biases learn at this multiple of lr: 2, Detectron's (lib/modeling/optimizer.py: their gradient
    # scaled by 2 before the momentum update); 1, detectron2's and torchvision's.
    bias_lr_factor: float = 2.0
    max_iter: int = 90000  # optimizer steps in the run
    # Detectron's (SOLVER.WARM_UP_*): linear from a third of lr over 500 iterations.
    warmup_iters: int = 500
    warmup_factor: float = 1 / 3  # the warm-up's first lr, as a fraction of lr
    steps: list[int] = field(default_factory=lambda: [60000, 80000])  # iterations where lr is multiplied by gamma
    gamma: float = 0.1  # lr's factor at each of steps
    clip_grad_norm: Optional[float] = None  # clip the gradients' global norm to this; null: no clipping (the official code does not clip)
    # A step whose loss is NaN or infinite on any rank: `raise` (detectron2's FloatingPointError; the run
    # fails at once, on every rank, naming the samples: a retry would replay them into the same NaN) or
    # `skip_step` (no weight update; the run goes on and counts them as train/skipped_steps).
    on_nonfinite: Literal["raise", "skip_step"] = "raise"
    # Mixed precision on GPU (CPU runs float32 whatever this says): `bf16` autocast (Ampere or newer:
    # A100, H100, L4; refused at the run's start on an older GPU), `fp16` autocast with a gradient
    # scaler whose state travels in checkpoints (V100, T4), or `off`. Box geometry stays float32 in
    # either (docs/training.md). `true`/`false` of older configs mean bf16/off.
    amp: Union[Literal["bf16", "fp16", "off"], bool] = "bf16"

    def __post_init__(self):
        if isinstance(self.amp, bool):
            self.amp = "bf16" if self.amp else "off"


@dataclass
class ScalingConfig:
    __pydantic_config__ = STRICT
    # An int, or [min, max] for elastic training: the run goes on with the workers the cluster can
    # place (at least min) when a node is lost, and grows back to max when capacity returns.
    num_workers: Union[int, list[int]] = 1
    # While training, how often Ray looks for capacity to grow an elastic run (seconds).
    elastic_resize_monitor_interval_s: float = 60.0
    use_gpu: bool = False  # one GPU per worker (NCCL); false: CPU workers (gloo)
    cpus_per_worker: float = 1.0  # CPUs Ray reserves per worker (its loader workers run on them)
    gpus_per_worker: float = 1.0  # GPUs per worker with use_gpu: a whole number (1)
    # Ray's placement group strategies: SPREAD puts each worker on its own node where it can.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    # Local folders every node sees at the same path (NFS, EFS, Lustre). On a cluster of several
    # nodes, any other local path (checkpoints, shards, a sqlite tracking store) is refused at start.
    shared_paths: list[str] = field(default_factory=list)
    # A collective (gradient all-reduce, the eval gather) waiting longer than this fails the step, and
    # Ray Train restarts from the checkpoint: a hung rank costs minutes, not torch's default 30. Keep it
    # above the longest evaluation (ranks wait at the gather while rank 0 runs COCOeval).
    collective_timeout_s: int = 900

    def __post_init__(self):
        bounds = self.num_workers if isinstance(self.num_workers, list) else [self.num_workers] * 2
        if len(bounds) != 2 or not 1 <= bounds[0] <= bounds[1]:
            raise ValueError(f"scaling.num_workers: an int >= 1 or [min, max] with 1 <= min <= max, got {self.num_workers}")
        # NCCL cannot put two ranks of one group on one GPU: a fraction would place two workers on one.
        if self.use_gpu and (self.gpus_per_worker < 1 or self.gpus_per_worker != int(self.gpus_per_worker)):
            raise ValueError(f"scaling.gpus_per_worker: a whole number >= 1 with use_gpu (each worker is one rank "
                             f"on its own GPU), got {self.gpus_per_worker}")

    @property
    def elastic(self) -> bool:
        return isinstance(self.num_workers, list)

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if self.elastic else self.num_workers

    @property
    def max_workers(self) -> int:
        return self.num_workers[1] if self.elastic else self.num_workers

    def ray_num_workers(self):
        """What Ray's ScalingConfig takes: an int, or a (min, max) tuple for an elastic run."""
        return tuple(self.num_workers) if self.elastic else self.num_workers


@dataclass
class CheckpointConfig:
    __pydantic_config__ = STRICT
    every: int = 1000  # iterations between checkpoints
    num_to_keep: int = 3  # newest checkpoints kept in the run folder (>= 2: a damaged newest falls back to the one before)
    storage_path: str = "./ray_results"  # local folder or s3://
    max_failures: int = 3  # restarts Ray Train makes after a worker fails before the run fails
    # `async`: rank 0 writes the checkpoint to local disk, hands its upload to storage to a thread and
    # trains on (Ray Train's CheckpointUploadMode.ASYNC); `sync`: it waits for the upload. The last
    # checkpoint is uploaded before the run ends either way.
    upload: Literal["async", "sync"] = "async"
    # A node's preemption notice (a spot reclaim, seen by Ray as a drain): the ranks commit a checkpoint
    # at once, so the restart redoes at most the iterations since the notice. Every rank asks Ray every
    # `preemption_check_every` iterations (the question is a barrier: cheap, not free); 0 turns it off.
    # Restarts after a preemption are not counted against max_failures.
    preemption_check_every: int = 5
    # A COCO metric (`segm/setB/AP`, ...; higher is better): the model of the best evaluation by it is
    # kept in the run folder beside the newest `num_to_keep` checkpoints (`best_<iteration>/`), and is
    # the one registered at the end; the model card says which iteration it is. Needs `data.val`.
    keep_best: Optional[str] = None


DEFAULT_TRACKING_STORE = "mlflow.db"  # sqlite, in the config's root


def resolve_tracking_uri(configured: Optional[str] = None, root: Optional[str] = None) -> str:
    """What `mlflow.tracking_uri` means: the store given, else $MLFLOW_TRACKING_URI, else the sqlite
    default; a relative sqlite path resolves against `root` (default: the working folder)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_TRACKING_STORE}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + os.path.abspath(os.path.join(root or os.getcwd(), uri[len("sqlite:///"):]))
    return uri


@dataclass
class MlflowConfig:
    __pydantic_config__ = STRICT
    tracking_uri: Optional[str] = None  # see resolve_tracking_uri
    experiment: str = "maskx"  # the MLflow experiment runs log to
    registered_model: Optional[str] = "maskx"  # the registered model a finished run's model is registered under; null: not registered
    # Every node's CPU, memory, disk, network and GPU use, as system/NODE_ADDRESS/... metrics; 0: off.
    system_metrics_every_s: float = 10.0
    # At each evaluation: its figures (PR curves, where it fails, per-class AP, AP by size) and this
    # many val images drawn with ground truth beside predictions, as MLflow images at the step
    # (orchestrator/reporting/evaluation_figures.py).
    eval_figures: bool = True
    eval_images: int = 4  # (see eval_figures)

    def __post_init__(self):
        if self.eval_images < 0:
            raise ValueError(f"mlflow.eval_images: val images drawn at each evaluation, 0 or more; got {self.eval_images}")


PAPER_TABLE_METRICS = ["segm/setA/AP", "segm/setB/AP", "segm/setB/AP50", "segm/setB/AP75"]


@dataclass
class SweepConfig:
    """`maskx tune`: the search space over dotted config keys and how trials are searched and stopped.

    `space` maps a dotted key to one of {grid: [...]}, {choice: [...]}, {uniform: [lo, hi]},
    {loguniform: [lo, hi]}, e.g. `model.box_loss.gamma: {grid: [0.0, 1.0, 2.0]}`.

    `variants` names the arms of an ablation, each a set of dotted overrides
    (`transfer cls: {model.mask_head.mode: transfer, model.mask_head.transfer_input: cls}`); every
    variant runs once per point of `space` (e.g. `seed: {grid: [0, 1, 2]}`), and the sweep writes a
    table of `table_metrics` per variant, mean and spread over those points."""
    __pydantic_config__ = STRICT
    space: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # dotted key: {grid|choice: [...]} or {uniform|loguniform: [lo, hi]} (see the section's text)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # named arms of an ablation, each a set of dotted overrides (see the section's text)
    table_metrics: list[str] = field(default_factory=lambda: list(PAPER_TABLE_METRICS))  # the metrics of the variants' table
    search: Literal["grid", "random", "optuna"] = "grid"  # how points of space are drawn
    num_samples: int = 1  # grid: repeats of the whole grid; random/optuna: trials
    metric: str = "segm/setB/AP"  # what the sweep ranks trials and the champion by
    mode: Literal["max", "min"] = "max"  # whether higher metric is better
    scheduler: Literal["asha", "fifo"] = "asha"  # asha stops weak trials early; fifo runs every trial to the end
    grace_period: int = 1  # ASHA: reports (checkpoints) before a trial may be stopped
    reduction_factor: float = 2.0  # ASHA: the fraction 1/reduction_factor of trials that go on at each rung
    max_concurrent_trials: int = 2  # trials training at once
    storage_path: Optional[str] = None  # default: <checkpoint.storage_path>/sweeps
    promote: bool = True  # register the best trial's model and move the champion alias if it wins
    champion_alias: str = "champion"  # the registered model's alias promotion moves
