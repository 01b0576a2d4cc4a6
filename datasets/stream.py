"""Training and evaluation streams over shards, split by node (rank) and loader worker.

Train:  manifests -> the run's canonical partitions (`partitions.py`), each: its shards (shuffled by
        seed, epoch, pass) -> tar samples -> shuffle buffer -> sources mixed by weight -> decode ->
        each image's resize/flip drawn. A rank reads the partitions its layout gives it; a step takes
        the next samples of the epoch's fixed order and cuts them into micro-batches of uint8
        source-size images (the train step resizes and flips them on the device).
Eval:   shard list -> split by node -> split by worker -> tar samples -> decode -> batch; every
        sample exactly once across all ranks and workers.

Every rank runs the same number of micro-batches per step, so DDP never waits on a rank that ran
out. Everything is seeded by (seed, epoch, partition), never by rank or worker, and each step
carries its partitions' positions after it: a checkpoint that stores them resumes the epoch with no
sample lost or repeated, at any world size.
"""
from __future__ import annotations

import copy
import itertools
import logging
import random
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.filters import _shuffle
from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

from . import storage
from .partitions import EpochLayout
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
class PartitionPosition:
    """Where one canonical partition stands within an epoch."""

    raw: dict[str, int] = field(default_factory=dict)  # samples drawn per source (decoded or skipped)
    samples: int = 0  # samples it gave to steps
    skipped: int = 0


@dataclass
class StreamPosition:
    """Where an epoch stands: steps done and each partition's position; what a checkpoint stores.
    Ranks hold their own partitions' entries; the checkpoint merges them (`merged`)."""

    epoch: int = 0
    steps: int = 0
    partitions: dict[int, PartitionPosition] = field(default_factory=dict)

    def advance(self, step: "Step") -> None:
        self.steps = step.index + 1
        self.partitions.update(step.partitions)

    @property
    def skipped(self) -> int:
        return sum(p.skipped for p in self.partitions.values())

    @property
    def drawn(self) -> int:
        return sum(sum(p.raw.values()) for p in self.partitions.values())

    def only(self, partitions: list[int]) -> "StreamPosition":
        return StreamPosition(self.epoch, self.steps, {p: self.partitions[p] for p in partitions if p in self.partitions})

    @classmethod
    def merged(cls, parts: list["StreamPosition"]) -> "StreamPosition":
        if len({(p.epoch, p.steps) for p in parts}) > 1:
            raise ValueError(f"ranks disagree on the data position: {[(p.epoch, p.steps) for p in parts]}")
        partitions = {}
        for part in parts:
            partitions.update(part.partitions)
        return cls(parts[0].epoch, parts[0].steps, partitions)

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "steps": self.steps,
                "partitions": {str(k): vars(v) for k, v in sorted(self.partitions.items())}}

    @classmethod
    def from_json(cls, obj: dict) -> "StreamPosition":
        return cls(obj["epoch"], obj["steps"], {int(k): PartitionPosition(**v) for k, v in obj["partitions"].items()})


@dataclass
class Batch:
    images: list[torch.Tensor]  # (3, H, W) uint8 each, at the source size
    targets: list[dict]  # boxes in the source image's pixels
    keys: list[str]
    augmentations: Optional[list[Augmentation]] = None  # training: what the step does to each image
    indices: list[int] = field(default_factory=list)  # training: each sample's place in the epoch
    partitions: dict[int, PartitionPosition] = field(default_factory=dict)  # training: after this batch
    skipped: int = 0  # evaluation: samples skipped so far by this loader worker

    def __len__(self) -> int:
        return len(self.images)

    def pin_memory(self) -> "Batch":
        self.images = [im.pin_memory() for im in self.images]
        return self

    @classmethod
    def blank(cls, augmentation: Augmentation) -> "Batch":
        """One black image with no objects: the pass a rank with no sample in a micro-batch runs (at
        loss weight 0) so that its gradient all-reduce still meets the other ranks'."""
        side = augmentation.min_size
        target = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64),
                  "has_mask": torch.zeros(0, dtype=torch.bool)}
        return cls([torch.zeros((3, side, side), dtype=torch.uint8)], [target], [], [augmentation])


@dataclass
class Step:
    """One rank's share of one optimizer step: its micro-batches (blank ones have no keys) and the
    positions of its partitions after the step."""

    index: int
    micro_batches: list[Batch]
    partitions: dict[int, PartitionPosition]

    @property
    def keys(self) -> list[str]:
        return [key for batch in self.micro_batches for key in batch.keys]

    @property
    def images(self) -> int:
        return sum(len(batch.keys) for batch in self.micro_batches)


class SkipCounter:
    """Counts and logs every sample the stream could not use."""

    def __init__(self, count: int = 0):
        self.count = count
        self.muted = False  # while fast-forwarding over samples counted before a resume

    def skip(self, message: str, samples: int = 1) -> None:
        if self.muted:
            return
        self.count += samples
        log.warning("%s; skipped (%d skipped so far here)", message, self.count)


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


def loader_slot() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


class PartitionReader:
    """One canonical partition's samples: its shards (re-shuffled on each pass), a shuffle buffer, the
    sources mixed by weight, each sample decoded and its augmentation drawn. Seeded by (seed, epoch,
    partition) only, and started at `position` by drawing (not decoding) what was drawn before."""

    def __init__(self, stream: "TrainStream", partition: int, position: PartitionPosition):
        self.stream, self.partition = stream, partition
        self.position = copy.deepcopy(position)
        self.skips = SkipCounter(position.skipped)
        self.raw = {s.name: stream.raw_samples(s, partition, stream.plan.partitions, self.skips) for s in stream.sources}
        self.names = [s.name for s in stream.sources]
        self.weights = [s.weight for s in stream.sources]
        self.mix = seeded_rng(stream.seed, stream.epoch, partition, "mix")
        self.skips.muted = True
        for name in self.names:
            for _ in range(position.raw.get(name, 0)):
                next(self.raw[name])
        for _ in range(sum(position.raw.values())):
            self.mix.choices(self.names, self.weights)
        self.skips.muted = False

    def next_sample(self) -> tuple[torch.Tensor, dict, str, Augmentation]:
        stream = self.stream
        while True:
            name = self.mix.choices(self.names, self.weights)[0]
            sample = next(self.raw[name])
            self.position.raw[name] = self.position.raw.get(name, 0) + 1
            try:
                image, target = decode_sample(sample, stream.vocab, stream.mask_labels, train=True)
            except BadSample as exc:
                self.skips.skip(f"{exc} in shard {sample.get('__url__')}")
                continue
            self.position.skipped = self.skips.count  # bad samples and the lost ones of damaged shards
            rng = seeded_rng(stream.seed, stream.epoch, self.partition, "transform", self.position.samples)
            self.position.samples += 1
            augmentation = draw_augmentation(rng, stream.min_sizes, stream.max_size, stream.flip_prob)
            return image, target, sample["__key__"], augmentation


class TrainStream(IterableDataset):
    """One rank's share of one epoch, step by step. Each loader worker reads some of the rank's
    partitions and yields, per step, a chunk: its partitions' samples of that step. `train_steps`
    joins a step's chunks from all loader workers and cuts the micro-batches."""

    def __init__(
        self,
        sources: list[Source],
        vocab: Vocabulary,
        mask_labels: Optional[list[int]],
        layout: EpochLayout,
        steps_per_epoch: int,
        rank: int = 0,
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
        self.layout, self.plan = layout, layout.plan
        self.steps_per_epoch = steps_per_epoch
        self.rank = rank
        self.epoch, self.seed = epoch, seed
        self.min_sizes, self.max_size, self.flip_prob = list(min_sizes), max_size, flip_prob
        self.shuffle_buffer = shuffle_buffer
        self.start = start if start is not None and start.epoch == epoch else StreamPosition(epoch=epoch)
        for partition in layout.rank_partitions(rank):
            expected = self.plan.taken_before(partition, self.start.steps)
            found = self.start.partitions.get(partition, PartitionPosition()).samples
            if found != expected:
                raise ValueError(f"data position: partition {partition} gave {found} samples by step "
                                 f"{self.start.steps} of epoch {epoch}, the run's data plan says {expected}")

    def raw_samples(self, source: Source, partition: int, num_partitions: int, skips: SkipCounter) -> Iterator[dict]:
        """Endless shuffled samples of one source for one partition; each pass reshuffles the shards."""
        for pass_index in range(10**9):
            order = list(range(len(source.shard_urls)))
            seeded_rng(self.seed, self.epoch, source.name, pass_index).shuffle(order)
            produced = 0

            def samples():
                nonlocal produced
                for shard, every, offset in slot_assignment(len(order), partition, num_partitions, order):
                    for sample in shard_samples(source.shard_urls[shard], source.shard_samples[shard], skips, every, offset):
                        produced += 1
                        yield sample

            rng = seeded_rng(self.seed, self.epoch, source.name, pass_index, partition, "shuffle")
            yield from _shuffle(samples(), bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)
            if produced == 0:
                raise RuntimeError(f"source {source.name}: no readable sample for partition {partition} in any of its shards")

    def __iter__(self) -> Iterator[Batch]:
        worker, num_workers = loader_slot()
        readers = {p: PartitionReader(self, p, self.start.partitions.get(p, PartitionPosition()))
                   for p in self.layout.worker_partitions(self.rank, worker, num_workers)}
        for step in range(self.start.steps, self.steps_per_epoch):
            chunk = Batch([], [], [], augmentations=[])
            for index in self.plan.step_samples(step):
                reader = readers.get(self.plan.partition_of(index))
                if reader is None:
                    continue
                image, target, key, augmentation = reader.next_sample()
                chunk.images.append(image)
                chunk.targets.append(target)
                chunk.keys.append(key)
                chunk.augmentations.append(augmentation)
                chunk.indices.append(index)
            chunk.partitions = {p: copy.deepcopy(r.position) for p, r in readers.items()}
            yield chunk


def train_steps(loader: Iterable[Batch], stream: TrainStream, num_workers: int) -> Iterator[Step]:
    """Steps from a rank's loader: each step's chunks (one per loader worker, in the loader's
    round-robin order), joined in epoch order and cut into the layout's micro-batches."""
    chunks = iter(loader)
    for index in range(stream.start.steps, stream.steps_per_epoch):
        parts = list(itertools.islice(chunks, max(1, num_workers)))
        if not parts:
            return
        order = sorted(((i, part, j) for part in parts for j, i in enumerate(part.indices)), key=lambda t: t[0])
        micro_batches, offset = [], 0
        for size in stream.layout.micro_batch_sizes(stream.rank, index):
            if size == 0:
                micro_batches.append(Batch.blank(Augmentation(stream.min_sizes[0], stream.max_size, False)))
                continue
            picked = order[offset:offset + size]
            offset += size
            micro_batches.append(Batch([p.images[j] for _, p, j in picked], [p.targets[j] for _, p, j in picked],
                                       [p.keys[j] for _, p, j in picked], [p.augmentations[j] for _, p, j in picked],
                                       [i for i, _, _ in picked]))
        if offset != len(order):
            raise RuntimeError(f"step {index}: the loader gave {len(order)} samples, the layout expects {offset}")
        yield Step(index, micro_batches, {p: pos for part in parts for p, pos in part.partitions.items()})


class EvalStream(IterableDataset):
    """Each sample of the manifests exactly once across ranks and loader workers, at source size."""

    def __init__(self, sources: list[Source], vocab: Vocabulary, batch_size: int, rank: int = 0, world_size: int = 1):
        self.sources, self.vocab, self.batch_size = sources, vocab, batch_size
        self.rank, self.world_size = rank, world_size
        self.skips = SkipCounter()

    def __iter__(self) -> Iterator[Batch]:
        worker, num_workers = loader_slot()
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
                        yield Batch(images, targets, keys, skipped=self.skips.count)
                        images, targets, keys = [], [], []
        if images:
            yield Batch(images, targets, keys, skipped=self.skips.count)


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
