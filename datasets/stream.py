"""Training and evaluation streams over shards, split by node (rank) and loader worker.

Train:  manifests -> shard list per pass (shuffled by seed, epoch, pass) -> split by node ->
        split by worker -> tar samples -> shuffle buffer -> mix sources by weight -> decode ->
        draw each image's resize/flip -> batch of uint8 source-size images (the train step resizes
        and flips them on the device).
Eval:   shard list -> split by node -> split by worker -> tar samples -> decode -> batch; every
        sample exactly once across all ranks and workers.

Every rank yields the same number of batches per epoch (each worker cycles its shards until its
quota is met), so DDP never waits on a rank that ran out. Everything is seeded by
(seed, epoch, rank, worker), and each batch carries the stream position after it: a checkpoint
that stores the last position resumes the epoch with no sample lost or repeated.
"""
from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.filters import _shuffle
from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

from . import storage
from .shard_format import Manifest, load_manifest
from .transforms import Augmentation, BadSample, decode_sample, draw_augmentation
from .vocab import Vocabulary

log = logging.getLogger(__name__)


@dataclass
class Source:
    """One manifest's shards and its share of the training mix."""

    name: str
    shard_urls: list[str]
    shard_samples: list[int]
    weight: float = 1.0

    @classmethod
    def from_manifest(cls, manifest: Manifest, weight: float = 1.0, name: Optional[str] = None) -> "Source":
        return cls(name or manifest.source, manifest.shard_urls(), [s.samples for s in manifest.shards], weight)

    @property
    def num_samples(self) -> int:
        return sum(self.shard_samples)


@dataclass
class WorkerPosition:
    raw: dict[str, int] = field(default_factory=dict)  # samples drawn per source (decoded or skipped)
    batches: int = 0
    skipped: int = 0


@dataclass
class StreamPosition:
    """Where a rank's stream stands within an epoch; what a checkpoint stores."""

    epoch: int = 0
    batches: int = 0
    workers: dict[int, WorkerPosition] = field(default_factory=dict)

    def advance(self, batch: "Batch") -> None:
        self.batches += 1
        self.workers[batch.worker] = batch.position

    @property
    def skipped(self) -> int:
        return sum(w.skipped for w in self.workers.values())

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "batches": self.batches,
                "workers": {str(k): vars(v) for k, v in self.workers.items()}}

    @classmethod
    def from_json(cls, obj: dict) -> "StreamPosition":
        return cls(obj["epoch"], obj["batches"], {int(k): WorkerPosition(**v) for k, v in obj["workers"].items()})


@dataclass
class Batch:
    images: list[torch.Tensor]  # (3, H, W) uint8 each, at the source size
    targets: list[dict]  # boxes in the source image's pixels
    keys: list[str]
    worker: int = 0
    position: WorkerPosition = field(default_factory=WorkerPosition)
    augmentations: Optional[list[Augmentation]] = None  # training: what the step does to each image

    def pin_memory(self) -> "Batch":
        self.images = [im.pin_memory() for im in self.images]
        return self


class SkipCounter:
    """Counts and logs every sample the stream could not use."""

    def __init__(self, count: int = 0):
        self.count = count
        self.muted = False  # while fast-forwarding over samples counted before a resume

    def skip(self, message: str, samples: int = 1) -> None:
        if self.muted:
            return
        self.count += samples
        log.warning("%s; skipped (%d skipped so far by this loader worker)", message, self.count)


def seeded_rng(*parts) -> random.Random:
    return random.Random("/".join(map(str, parts)))


def slot_assignment(num_shards: int, slot: int, num_slots: int, order: list[int]) -> list[tuple[int, int, int]]:
    """(shard index, keep-every, offset) triples for one slot (rank x worker).

    With at least as many shards as slots, a slot takes whole shards; with fewer, slots that share a
    shard take every k-th sample of it, so the split stays exact.
    """
    if num_shards >= num_slots:
        return [(order[i], 1, 0) for i in range(slot, num_shards, num_slots)]
    shard = slot % num_shards
    sharing = len(range(shard, num_slots, num_shards))
    return [(order[shard], sharing, slot // num_shards)]


def shard_samples(url: str, expected: int, skips: SkipCounter, every: int = 1, offset: int = 0) -> Iterator[dict]:
    """Samples of one shard. A truncated or non-tar shard ends early, its missing samples counted;
    a shard that cannot be reached at all (403/404) raises at once."""
    seen = 0
    errors: list[Exception] = []

    def keep_going(exc: Exception) -> bool:
        errors.append(exc)
        return False

    def reraise_permanent(exc: Exception) -> bool:
        raise exc

    stream = group_by_keys(tar_file_expander(url_opener([{"url": url}], handler=reraise_permanent), handler=keep_going),
                           handler=keep_going)
    try:
        for index, sample in enumerate(stream):
            seen += 1
            if index % every == offset:
                yield sample
    except (FileNotFoundError, PermissionError, storage.StorageError):
        raise
    except Exception as exc:  # anything else from tar parsing: the shard is damaged
        errors.append(exc)
    if errors or seen < expected:
        missing = len(range(offset, expected, every)) - len(range(offset, seen, every))
        reason = f"{type(errors[0]).__name__}: {errors[0]}" if errors else "fewer samples than the manifest lists"
        skips.skip(f"shard {url}: damaged after {seen} of {expected} samples ({reason})", max(missing, 1 if errors else 0))


def eval_slot() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


class TrainStream(IterableDataset):
    def __init__(
        self,
        sources: list[Source],
        vocab: Vocabulary,
        mask_labels: Optional[list[int]],
        batch_size: int,
        batches_per_epoch: int,
        rank: int = 0,
        world_size: int = 1,
        epoch: int = 0,
        seed: int = 0,
        min_sizes: tuple[int, ...] = (800,),
        max_size: int = 1333,
        flip_prob: float = 0.5,
        shuffle_buffer: int = 256,
        start: Optional[StreamPosition] = None,
    ):
        if not sources:
            raise ValueError("data.train: no sources")
        self.sources = sources
        self.vocab = vocab
        self.mask_labels = set(mask_labels) if mask_labels is not None else None
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.rank, self.world_size = rank, world_size
        self.epoch, self.seed = epoch, seed
        self.min_sizes, self.max_size, self.flip_prob = list(min_sizes), max_size, flip_prob
        self.shuffle_buffer = shuffle_buffer
        self.start = start if start is not None and start.epoch == epoch else StreamPosition(epoch=epoch)

    def quota(self, worker: int, num_workers: int) -> int:
        """Batches of this epoch that loader worker `worker` of this rank produces."""
        return self.batches_per_epoch // num_workers + (1 if worker < self.batches_per_epoch % num_workers else 0)

    def raw_samples(self, source: Source, slot: int, num_slots: int, skips: SkipCounter) -> Iterator[dict]:
        """Endless shuffled samples of one source for one slot; each pass reshuffles the shards."""
        for pass_index in range(10**9):
            order = list(range(len(source.shard_urls)))
            seeded_rng(self.seed, self.epoch, source.name, pass_index).shuffle(order)
            produced = 0

            def samples():
                nonlocal produced
                for shard, every, offset in slot_assignment(len(order), slot, num_slots, order):
                    for sample in shard_samples(source.shard_urls[shard], source.shard_samples[shard], skips, every, offset):
                        produced += 1
                        yield sample

            rng = seeded_rng(self.seed, self.epoch, source.name, pass_index, slot, "shuffle")
            yield from _shuffle(samples(), bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)
            if produced == 0:
                raise RuntimeError(f"source {source.name}: no readable sample for rank {self.rank} in any of its shards")

    def __iter__(self) -> Iterator[Batch]:
        physical, num_workers = eval_slot()
        # After a resume, worker ids rotate so batches come in the unbroken run's order.
        worker = (physical + self.start.batches) % num_workers
        position = copy.deepcopy(self.start.workers.get(worker, WorkerPosition()))
        slot, num_slots = self.rank * num_workers + worker, self.world_size * num_workers
        skips = SkipCounter(position.skipped)
        raw = {s.name: self.raw_samples(s, slot, num_slots, skips) for s in self.sources}
        mix = seeded_rng(self.seed, self.epoch, slot, "mix")
        names = [s.name for s in self.sources]
        weights = [s.weight for s in self.sources]
        transform_rng = seeded_rng(self.seed, self.epoch, slot, "transform", position.batches)

        # Fast-forward over what was drawn before the checkpoint without decoding it.
        skips.muted = True
        for name in names:
            for _ in range(position.raw.get(name, 0)):
                next(raw[name])
        for _ in range(sum(position.raw.values())):
            mix.choices(names, weights)
        skips.muted = False

        quota = self.quota(worker, num_workers)
        images, targets, keys, augmentations = [], [], [], []
        while position.batches < quota:
            name = mix.choices(names, weights)[0]
            sample = next(raw[name])
            position.raw[name] = position.raw.get(name, 0) + 1
            try:
                image, target = decode_sample(sample, self.vocab, self.mask_labels, train=True)
            except BadSample as exc:
                skips.skip(f"{exc} in shard {sample.get('__url__')}")
                continue
            augmentations.append(draw_augmentation(transform_rng, self.min_sizes, self.max_size, self.flip_prob))
            images.append(image)
            targets.append(target)
            keys.append(sample["__key__"])
            if len(images) == self.batch_size:
                position.batches += 1
                position.skipped = skips.count
                yield Batch(images, targets, keys, worker, copy.deepcopy(position), augmentations)
                images, targets, keys, augmentations = [], [], [], []


class EvalStream(IterableDataset):
    """Each sample of the manifests exactly once across ranks and loader workers, at source size."""

    def __init__(self, sources: list[Source], vocab: Vocabulary, batch_size: int, rank: int = 0, world_size: int = 1):
        self.sources, self.vocab, self.batch_size = sources, vocab, batch_size
        self.rank, self.world_size = rank, world_size
        self.skips = SkipCounter()

    def __iter__(self) -> Iterator[Batch]:
        worker, num_workers = eval_slot()
        slot, num_slots = self.rank * num_workers + worker, self.world_size * num_workers
        images, targets, keys = [], [], []
        for source in self.sources:
            order = list(range(len(source.shard_urls)))
            for shard, every, offset in slot_assignment(len(order), slot, num_slots, order):
                for sample in shard_samples(source.shard_urls[shard], source.shard_samples[shard], self.skips, every, offset):
                    try:
                        image, target = decode_sample(sample, self.vocab, None, train=False)
                    except BadSample as exc:
                        self.skips.skip(f"{exc} in shard {sample.get('__url__')}")
                        continue
                    images.append(image)
                    targets.append(target)
                    keys.append(sample["__key__"])
                    if len(images) == self.batch_size:
                        yield Batch(images, targets, keys, worker, WorkerPosition(skipped=self.skips.count))
                        images, targets, keys = [], [], []
        if images:
            yield Batch(images, targets, keys, worker, WorkerPosition(skipped=self.skips.count))


def load_sources(manifests: list[tuple[str, float]]) -> tuple[list[Source], Vocabulary]:
    """Sources from (manifest url, weight) pairs; all manifests must share one vocabulary."""
    storage.register_webdataset_s3()
    loaded = [(load_manifest(url), weight) for url, weight in manifests]
    vocab_json = loaded[0][0].vocabulary
    for manifest, _ in loaded[1:]:
        if manifest.vocabulary != vocab_json:
            raise ValueError(f"manifest {manifest.location}: its vocabulary differs from {loaded[0][0].location}'s; "
                             "prepare every source with the same --vocab")
    names = [m.source for m, _ in loaded]
    sources = [Source.from_manifest(m, w, name=f"{m.source}{i}" if names.count(m.source) > 1 else None)
               for i, (m, w) in enumerate(loaded)]
    return sources, Vocabulary.from_json(vocab_json)


def make_loader(stream: IterableDataset, num_workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=2 if num_workers else None,
                      worker_init_fn=_init_loader_worker)


def _init_loader_worker(_: int) -> None:
    storage.register_webdataset_s3()
