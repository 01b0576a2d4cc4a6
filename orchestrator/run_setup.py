"""A run, set up once: what it is made of, derived in one place from its config and its shards.

`set_up_run(cfg)` resolves the config's paths, reads the manifests once, binds the model to their
vocabulary (class count and set A), fixes the data plan and the steps per epoch, and refuses what
cannot work, naming the key, before any worker starts. The driver calls it and hands the
`RunSetup` to every worker; `maskx eval`, the sweep's trials and the tests call the same function.
A resumed run keeps the plan it started with (`RunSetup.continuing`).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
from dataclasses import dataclass
from typing import Optional

from maskx.datasets import storage
from maskx.datasets.partitions import DataPlan, EpochLayout, StreamPosition
from maskx.datasets.repeat_factors import RepeatFactors, SourceImages, class_frequency, repeat_factors
from maskx.datasets.shard_format import Manifest, load_manifest
from maskx.datasets.stream import Source, sources_of
from maskx.datasets.train_stream import TrainStream
from maskx.datasets.vocab import Vocabulary

from . import run_folder
from .config import TrainConfig, resolve_tracking_uri

LINEAGE_DIGEST_CHARS = 16  # of the sha256 over a manifest's shard checksums: enough to tell data apart


@dataclass(frozen=True)
class TrainingData:
    """One manifest a run reads, as its lineage records it (MLflow inputs, the model card)."""
    url: str
    source: str  # coco | vg
    context: str  # train | val
    samples: int
    digest: str  # of its shards' checksums: what changes when the data does
    weight: Optional[float] = None


@dataclass(frozen=True)
class ManifestUse:
    """A manifest as a run uses it: the URL its config names, what it holds, train or val, its weight."""
    url: str
    manifest: Manifest
    context: str  # train | val
    weight: Optional[float] = None

    @property
    def lineage(self) -> TrainingData:
        shards = "".join(shard.sha256 for shard in self.manifest.shards)
        return TrainingData(self.url, self.manifest.source, self.context, self.manifest.num_samples,
                            hashlib.sha256(shards.encode()).hexdigest()[:LINEAGE_DIGEST_CHARS], self.weight)


@dataclass(frozen=True)
class ClassFrequency:
    """label -> the fraction of the images a run reads that contain the class, without and with its
    repeat factors (the run's `data/class_frequency.png`)."""
    before: dict[int, float]
    after: dict[int, float]


@dataclass(frozen=True)
class RunSetup:
    config: TrainConfig  # paths absolute, the model bound to the vocabulary
    vocab: Vocabulary
    sources: list[Source]  # training; none for an evaluation alone
    val_sources: Optional[list[Source]]
    plan: Optional[DataPlan]  # the run's global batch and partitions; None for an evaluation alone
    steps_per_epoch: int
    manifests: list[ManifestUse]
    repeat_factors: Optional[RepeatFactors] = None  # `data.repeat_threshold`
    class_frequency: Optional[ClassFrequency] = None  # with repeat factors: what they change

    @property
    def set_a(self) -> list[int]:
        """The labels whose masks train the mask head (`data.mask_sets`)."""
        return self.config.model.mask_classes or []

    def continuing(self, saved: Optional[DataPlan]) -> "RunSetup":
        """This set-up for a run that started with data plan `saved` (from its checkpoint): the plan
        fixes the run's sample order, so it is kept, and the steps per epoch follow it. A config that
        asks for another global batch or partition count is an error."""
        if saved is None or saved == self.plan:
            return self
        data = self.config.data
        for key, asked, kept in (("data.global_batch_size", data.global_batch_size, saved.global_batch),
                                 ("data.partitions", data.partitions, saved.partitions)):
            if asked is not None and asked != kept:
                raise ValueError(f"{key}={asked}, but this run started with {kept}, which fixes its sample order; "
                                 f"leave {key} unset to continue it")
        return dataclasses.replace(self, plan=saved, steps_per_epoch=steps_per_epoch(self.config, self.sources, saved,
                                                                                      self.repeat_factors))

    def layout(self, world_size: int) -> EpochLayout:
        return EpochLayout(self.plan, world_size, self.config.data.batch_size)

    def train_stream(self, *, world_size: int, rank: int, epoch: int,
                     start: Optional[StreamPosition] = None) -> TrainStream:
        """Rank `rank`'s share of epoch `epoch` at world size `world_size`, from `start`."""
        data = self.config.data
        return TrainStream(sources=self.sources, vocab=self.vocab, mask_labels=self.config.model.mask_classes,
                           layout=self.layout(world_size), steps_per_epoch=self.steps_per_epoch, rank=rank,
                           epoch=epoch, seed=self.config.seed, min_sizes=tuple(data.min_sizes),
                           max_size=data.max_size, flip_prob=data.flip_prob, shuffle_buffer=data.shuffle_buffer,
                           start=start, repeat_factors=self.repeat_factors)

    def lineage(self) -> list[TrainingData]:
        """Each manifest the run reads, with a digest of its shards' checksums."""
        return [use.lineage for use in self.manifests]

    def manifest_params(self) -> dict[str, str]:
        """What each training manifest holds, from its counts: `data.train.1.images`, and for VG prepared
        with --exclude-coco `data.train.1.excluded_coco_images` (the VG images left out because they are
        in the COCO split evaluated on)."""
        params = {}
        train = [use.manifest for use in self.manifests if use.context == "train"]
        for i, manifest in enumerate(train):
            params[f"data.train.{i}.source"] = manifest.source
            params.update({f"data.train.{i}.{key}": str(value) for key, value in manifest.counts[manifest.source].items()})
        if self.repeat_factors is not None:
            params["data.repeat.images_above_one"] = str(len(self.repeat_factors.above_one))
            params["data.repeat.extra_samples_per_pass"] = f"{self.repeat_factors.extra_samples:.1f}"
        return params


def set_up_run(cfg: TrainConfig, train: bool = True) -> RunSetup:
    """The run `cfg` describes (a resolved copy of it inside); `train=False`: an evaluation of
    `data.val` alone, whose training manifests are not read."""
    cfg = with_absolute_paths(copy.deepcopy(cfg))
    data = cfg.data
    if train and not data.train:
        raise ValueError("data.train: no training manifests configured")
    if not train and not data.val:
        raise ValueError("data.val: no val manifest to evaluate on")
    manifests = [ManifestUse(s.manifest, load_manifest(s.manifest), "train", s.weight) for s in data.train] if train else []
    if train and data.require_vg_coco_exclusion:
        check_vg_coco_exclusion([use.manifest for use in manifests])
    sources, vocab = sources_of([(use.manifest, use.weight) for use in manifests]) if train else ([], None)
    val_sources = None
    if data.val:
        val_manifest = load_manifest(data.val)
        val_sources, val_vocab = sources_of([(val_manifest, 1.0)])
        if vocab is None:
            vocab = val_vocab
        vocab.require_same(val_vocab, f"data.val: {data.val}", "data.train")
        manifests.append(ManifestUse(data.val, val_manifest, "val"))
    for source in sources + (val_sources or []):
        source.cache = data.cache_settings()
    bind_to_vocabulary(cfg, vocab)
    if train:
        check_init_from_parts(cfg, vocab)
    plan, factors, frequency = None, None, None
    if train:
        plan = DataPlan(global_batch=data.global_batch_size or data.batch_size * cfg.scaling.max_workers,
                        partitions=data.partitions or cfg.scaling.max_workers * max(1, data.loader_workers))
        EpochLayout(plan, cfg.scaling.max_workers, data.batch_size)  # the most workers fit the plan
        if data.repeat_threshold is not None:
            factors, frequency = plan_repeats([use for use in manifests if use.context == "train"], data.repeat_threshold)
    return RunSetup(config=cfg, vocab=vocab, sources=sources, val_sources=val_sources, plan=plan,
                    steps_per_epoch=steps_per_epoch(cfg, sources, plan, factors) if train else 0, manifests=manifests,
                    repeat_factors=factors, class_frequency=frequency)


def plan_repeats(train: list[ManifestUse], threshold: float) -> tuple[RepeatFactors, ClassFrequency]:
    """The training images' repeat factors from their manifests' classes, and what they change."""
    images = []
    for i, use in enumerate(train):
        try:
            images.append(SourceImages(use.manifest.load_image_classes(), use.weight))
        except FileNotFoundError as exc:
            raise ValueError(f"data.repeat_threshold needs each image's classes; data.train.{i}: {exc}") from None
    before = class_frequency(images)
    factors = repeat_factors(images, threshold, before)
    return factors, ClassFrequency(before, class_frequency(images, factors))


def steps_per_epoch(cfg: TrainConfig, sources: list[Source], plan: DataPlan,
                    factors: Optional[RepeatFactors] = None) -> int:
    """`data.steps_per_epoch`, else one pass over the sources that take part in the mix, each image as
    many times as its repeat factor says."""
    samples = sum(s.num_samples for s in sources if s.weight > 0) + (factors.extra_samples if factors else 0)
    return cfg.data.steps_per_epoch or max(1, int(samples) // plan.global_batch)


def bind_to_vocabulary(cfg: TrainConfig, vocab: Vocabulary) -> TrainConfig:
    """Fill the model's class count and set A from the shards' vocabulary; refuse a mismatch."""
    if cfg.model.num_classes is None:
        cfg.model.num_classes = vocab.num_classes
    if cfg.model.num_classes != vocab.num_classes:
        raise ValueError(f"model.num_classes: {cfg.model.num_classes}, but the shards' vocabulary has {vocab.num_classes} "
                         f"(background + {vocab.num_classes - 1} classes); set model.num_classes={vocab.num_classes}")
    try:
        cfg.model.mask_classes = sorted(vocab.resolve_sets(cfg.data.mask_sets))
    except (KeyError, ValueError) as exc:
        raise ValueError(f"data.mask_sets: {exc}") from None
    return cfg


def check_init_from_parts(cfg: TrainConfig, vocab: Vocabulary) -> None:
    """A run with a set B must not start its mask head from weights that may have seen set B's masks
    (a COCO-trained Mask R-CNN has them for all 80): `model.init_from` there takes only the parts
    `model.init_from_parts` names."""
    model = cfg.model
    if model.init_from and model.init_from_parts is None and len(model.mask_classes or []) < vocab.num_classes - 1:
        raise ValueError(
            f"model.init_from_parts: required with model.init_from ({model.init_from}) in a run whose set A is not "
            f"every class (data.mask_sets={cfg.data.mask_sets}: {len(model.mask_classes or [])} of "
            f"{vocab.num_classes - 1} classes have masks). Taking every tensor would copy a mask head that may have "
            "seen set B's masks and void the experiment: name the parts, e.g. model.init_from_parts=[backbone, rpn, "
            "box_head] (add mask_head only when its source trained no set-B mask)")


def check_vg_coco_exclusion(train_manifests: list[Manifest]) -> None:
    """Every VG training manifest left out the COCO evaluation split's images: prepared with
    --exclude-coco (its counts say how many it left out) or as the paper's train split."""
    for i, manifest in enumerate(train_manifests):
        if manifest.source != "vg":
            continue
        counts = manifest.counts["vg"]
        if "excluded_coco_images" not in counts and counts.get("split") != "train":
            raise ValueError(
                f"data.train.{i}: {manifest.location} was prepared without --exclude-coco or --split train, and "
                "data.require_vg_coco_exclusion is true: VG images that are COCO images of the evaluation split "
                "would be trained on. Prepare it again with `maskx prepare vg ... --split train --coco-val "
                "instances_val2017.json`, or set data.require_vg_coco_exclusion=false")


def absolute_storage_path(path: str, root: Optional[str] = None) -> str:
    return path if storage.is_s3(path) else os.path.abspath(os.path.join(root or os.getcwd(), path))


def absolute_model_source(source: str, root: Optional[str] = None) -> str:
    """A weights file or model to start from, a relative local path made absolute; s3:// and MLflow
    URIs (models:/, runs:/) as they are."""
    return source if source.startswith(run_folder.MLFLOW_SCHEMES) else absolute_storage_path(source, root)


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Relative local paths resolved against `root` (default: the driver's working folder), since Ray
    workers run elsewhere; a sqlite tracking store too."""
    for source in cfg.data.train:
        source.manifest = absolute_storage_path(source.manifest, cfg.root)
    if cfg.data.val:
        cfg.data.val = absolute_storage_path(cfg.data.val, cfg.root)
    cfg.checkpoint.storage_path = absolute_storage_path(cfg.checkpoint.storage_path, cfg.root)
    if cfg.data.cache_dir:
        cfg.data.cache_dir = absolute_storage_path(cfg.data.cache_dir, cfg.root)
    if cfg.sweep.storage_path:
        cfg.sweep.storage_path = absolute_storage_path(cfg.sweep.storage_path, cfg.root)
    if cfg.model.backbone.weights:
        cfg.model.backbone.weights = absolute_model_source(cfg.model.backbone.weights, cfg.root)
    if cfg.model.init_from:
        cfg.model.init_from = absolute_model_source(cfg.model.init_from, cfg.root)
    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri, cfg.root)
    if uri.startswith("sqlite:"):
        cfg.mlflow.tracking_uri = uri
    return cfg
