"""The training config: typed dataclasses loaded from YAML with dotted command-line overrides.

`load_config("configs/tiny-cpu.yaml", ["solver.lr=0.01"])` reads the file, applies each
`dotted.key=value` (values parsed as YAML), and validates the whole tree with pydantic: an
unknown key or a wrong type is an error that names the key. Builders downstream read only this.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Optional, Union

import pydantic
import yaml

from maskx.datasets.shard_cache import CacheSettings
from maskx.models.config import ModelConfig

_STRICT = {"extra": "forbid"}


@dataclass
class TrainSource:
    __pydantic_config__ = _STRICT
    manifest: str  # a shards folder's manifest (local or s3://, written by `maskx prepare`)
    weight: float = 1.0  # its share of the samples drawn, relative to the other sources' weights


@dataclass
class DataConfig:
    __pydantic_config__ = _STRICT
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
    __pydantic_config__ = _STRICT
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
    amp: bool = True  # bf16 autocast, on GPU only


@dataclass
class ScalingConfig:
    __pydantic_config__ = _STRICT
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
    __pydantic_config__ = _STRICT
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
    __pydantic_config__ = _STRICT
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
    __pydantic_config__ = _STRICT
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


@dataclass
class TrainConfig:
    __pydantic_config__ = _STRICT
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


class ConfigError(ValueError):
    pass


def apply_override(tree: dict, override: str) -> None:
    """`a.b.c=value` into a nested dict; the value is parsed as YAML (numbers, lists, null...). A number
    indexes a list: `data.train.1.weight=0.5` is the second training source's weight."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected dotted.key=value")
    *parents, leaf = key.strip().split(".")
    node = tree
    for i, part in enumerate(parents + [leaf]):
        where = ".".join((parents + [leaf])[:i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {override!r}: {where}: no item {part} in a list of {len(node)}")
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {where.rpartition('.')[0]} is not a section")
        if i == len(parents):
            node[part] = yaml.safe_load(raw)
        else:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]


def validate(tree: dict) -> TrainConfig:
    try:
        cfg = pydantic.TypeAdapter(TrainConfig).validate_python(tree)
    except pydantic.ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(top level)"
            if error["type"] == "unexpected_keyword_argument":
                problems.append(f"{where}: unknown key")
            else:
                problems.append(f"{where}: {error['msg']} (got {error.get('input')!r})")
        raise ConfigError("config: " + "; ".join(problems)) from None
    try:
        cfg.model.validate(require_num_classes=False)
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None
    check_frozen_backbone_has_weights(cfg.model)
    return cfg


def check_frozen_backbone_has_weights(model: ModelConfig) -> None:
    """A backbone that keeps its starting values (frozen BN, frozen stages, `model.freeze`) must start
    from trained ones: from random ones its frozen layers stay random, with no normalization anywhere."""
    backbone = model.backbone
    if not (backbone.frozen or "backbone" in model.freeze) or backbone.weights or model.init_from:
        return
    raise ConfigError(
        f"model.backbone.weights: not set, but the backbone is frozen (norm {backbone.norm}, trainable_layers "
        f"{backbone.trainable_layers}{', model.freeze names it' if 'backbone' in model.freeze else ''}): its frozen "
        "layers would keep their random values. Write torchvision's ImageNet weights once, on a machine with "
        f"internet: python -c \"import torch, torchvision; torch.save(torchvision.models.{backbone.name}(weights="
        f"'IMAGENET1K_V1').state_dict(), '{backbone.name}-imagenet.pth')\" and set model.backbone.weights to that "
        "file; or start from model.init_from; or train the whole backbone from scratch (norm gn, trainable_layers 5)")


def _read_yaml(path: str) -> dict:
    try:
        with open(path) as f:
            tree = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config {path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path}: not valid YAML ({exc})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config {path}: the top level must be a mapping")
    return tree


def load_config(path: Optional[str], overrides: list[str] = (), sweep_path: Optional[str] = None) -> TrainConfig:
    """`sweep_path`: a YAML whose `sweep:` section replaces the config's, so that one sweep (an
    ablation) runs unchanged on any training config; overrides apply after it."""
    tree: dict[str, Any] = _read_yaml(path) if path else {}
    if sweep_path:
        sweep_tree = _read_yaml(sweep_path)
        if set(sweep_tree) != {"sweep"}:
            raise ConfigError(f"config {sweep_path}: a sweep file holds only a top-level `sweep:` section, "
                              f"got {', '.join(sorted(sweep_tree)) or 'nothing'}")
        tree["sweep"] = sweep_tree["sweep"]
    for override in overrides:
        apply_override(tree, override)
    return validate(tree)


def packaged_config(name: str) -> str:
    """The path of a config that ships with maskx (`configs/NAME`, installed as `maskx.configs`)."""
    import maskx.configs

    # A namespace package: importlib.resources cannot read one through setuptools' editable finder,
    # whose path hook sits in __path__ beside the real folder.
    for folder in maskx.configs.__path__:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise ConfigError(f"config {name}: not among the configs installed with maskx")


def dump_config(cfg: TrainConfig) -> str:
    """The config as YAML, as checkpoints, registered models and MLflow keep it: credentials in a URL
    (`mlflow.tracking_uri: http://user:password@host`) and secret-named keys' values redacted."""
    from .redaction import redact_text

    return redact_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
