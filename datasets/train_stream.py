"""The training stream: one rank's share of each step, read through the run's canonical partitions
(`partitions.py`), with each partition's position after every step for the checkpoint.

Each partition: its shards (shuffled by seed, epoch, pass) -> tar samples -> each read as many
times as its repeat factor says (`repeat_factors.py`; once without repeat-factor sampling) -> shuffle buffer ->
sources mixed by weight -> decode -> each image's resize/flip drawn, all seeded by (seed, epoch,
partition), never by rank or loader worker. A rank's loader workers read its partitions and yield a
chunk per step; `TrainStream.steps` joins a step's chunks in epoch order and cuts the micro-batches,
the same number on every rank, so DDP never waits on a rank that ran out. A checkpoint that stores
the partitions' positions resumes the epoch with no sample lost or repeated, at any world size.
"""
from __future__ import annotations

import copy
import functools
import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, IterableDataset
from webdataset.filters import shuffle

from .batch import Batch
from .partitions import EpochLayout, PartitionPosition, StreamPosition
from .repeat_factors import RepeatFactors
from .stream import SkipCounter, Source, loader_slot, seeded_rng, slot_assignment, source_shards
from .transforms import Augmentation, BadSample, decode_masks, decode_sample, draw_augmentation
from .vocab import Vocabulary

SEED_BITS = 63  # a sample's sampling seed: a non-negative int64
# Passes over a source's shards within one epoch: a partition draws until its steps are done, so
# a small source mixed with a large one is read again and again.
ENDLESS_PASSES = 10**9


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


class PartitionReader:
    """One canonical partition's samples: endless raw samples per source, mixed by weight, each
    decoded and its augmentation drawn. Seeded by (seed, epoch, partition) only, and started at
    `position` by drawing (not decoding) what was drawn before."""

    def __init__(self, *, partition: int, raw: dict[str, Iterator[dict]], weights: list[float],
                 position: PartitionPosition, skips: SkipCounter, seed: int, epoch: int,
                 decode: Callable[[dict], tuple[torch.Tensor, dict]],
                 draw: Callable[..., Augmentation]):
        self.partition, self.raw, self.names, self.weights = partition, raw, list(raw), weights
        self.position, self.skips = copy.deepcopy(position), skips
        self.seed, self.epoch = seed, epoch
        self.decode, self.draw = decode, draw
        self.mix = seeded_rng(seed, epoch, partition, "mix")
        self.skips.muted = True
        for name in self.names:
            for _ in range(position.raw.get(name, 0)):
                next(self.raw[name])
        for _ in range(sum(position.raw.values())):
            self.mix.choices(self.names, self.weights)
        self.skips.muted = False

    def next_sample(self) -> tuple[torch.Tensor, dict, str, Augmentation]:
        while True:
            name = self.mix.choices(self.names, self.weights)[0]
            sample = next(self.raw[name])
            self.position.raw[name] = self.position.raw.get(name, 0) + 1
            try:
                image, target = self.decode(sample)
            except BadSample as exc:
                self.skips.skip(f"{exc} in shard {sample.get('__url__')}")
                continue
            self.position.skipped = self.skips.count  # bad samples and the lost ones of damaged shards
            rng = seeded_rng(self.seed, self.epoch, self.partition, "transform", self.position.samples)
            self.position.samples += 1
            return image, target, sample["__key__"], self.draw(rng)


class TrainStream(IterableDataset):
    """One rank's share of one epoch, step by step. Each loader worker reads some of the rank's
    partitions and yields, per step, a chunk: its partitions' samples of that step. `steps` joins a
    step's chunks from all loader workers and cuts the micro-batches."""

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
        repeat_factors: Optional[RepeatFactors] = None,
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
        self.repeat_factors = repeat_factors
        self.start = start if start is not None and start.epoch == epoch else StreamPosition(epoch=epoch)
        for partition in layout.rank_partitions(rank):
            expected = self.plan.taken_before(partition, self.start.steps)
            found = self.start.partitions.get(partition, PartitionPosition()).samples
            if found != expected:
                raise ValueError(f"data position: partition {partition} gave {found} samples by step "
                                 f"{self.start.steps} of epoch {epoch}, the run's data plan says {expected}")

    def raw_samples(self, source: Source, partition: int, skips: SkipCounter) -> Iterator[dict]:
        """Endless shuffled samples of one source for one partition; each pass reshuffles the shards
        and draws each sample's repeats. A resume replays this to where the partition stood."""
        for pass_index in range(ENDLESS_PASSES):
            order = list(range(len(source.shard_urls)))
            seeded_rng(self.seed, self.epoch, source.name, pass_index).shuffle(order)
            produced = 0

            def samples():
                nonlocal produced
                for sample in source_shards(source, slot_assignment(len(order), partition, self.plan.partitions, order), skips):
                    produced += 1
                    # The copies go through the shuffle buffer: each is its own sample, with its own augmentation.
                    yield from itertools.repeat(sample, self.copies(sample, pass_index))

            rng = seeded_rng(self.seed, self.epoch, source.name, pass_index, partition, "shuffle")
            yield from shuffle(bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(samples())
            if produced == 0:
                raise RuntimeError(f"source {source.name}: no readable sample for partition {partition} in any of its shards")

    def copies(self, sample: dict, pass_index: int) -> int:
        if self.repeat_factors is None:
            return 1
        return self.repeat_factors.copies(sample["__key__"], seed=self.seed, epoch=self.epoch, pass_index=pass_index)

    def reader(self, partition: int) -> PartitionReader:
        position = self.start.partitions.get(partition, PartitionPosition())
        skips = SkipCounter(position.skipped)
        return PartitionReader(
            partition=partition, raw={s.name: self.raw_samples(s, partition, skips) for s in self.sources},
            weights=[s.weight for s in self.sources], position=position, skips=skips, seed=self.seed, epoch=self.epoch,
            decode=functools.partial(decode_sample, vocab=self.vocab, mask_labels=self.mask_labels, train=True),
            draw=functools.partial(draw_augmentation, min_sizes=self.min_sizes, max_size=self.max_size,
                                   flip_prob=self.flip_prob))

    def __iter__(self) -> Iterator[Batch]:
        worker, num_workers = loader_slot()
        readers = {p: self.reader(p) for p in self.layout.worker_partitions(self.rank, worker, num_workers)}
        for step in range(self.start.steps, self.steps_per_epoch):
            chunk = Batch([], [], [], augmentations=[])
            for index in self.plan.step_samples(step):
                reader = readers.get(self.plan.partition_of(index))
                if reader is None:
                    continue
                image, target, key, augmentation = reader.next_sample()
                target = decode_masks(target, key)  # here, in the loader worker: not on the training thread
                # The image's anchors and RoIs are drawn from this: the same wherever the sample trains.
                target["sampling_seed"] = seeded_rng(self.seed, self.epoch, index, "sampling").getrandbits(SEED_BITS)
                chunk.images.append(image)
                chunk.targets.append(target)
                chunk.keys.append(key)
                chunk.augmentations.append(augmentation)
                chunk.indices.append(index)
            chunk.partitions = {p: copy.deepcopy(r.position) for p, r in readers.items()}
            yield chunk

    def steps(self, loader: Optional[DataLoader] = None) -> Iterator[Step]:
        """The epoch's steps from the rest of it, read through `loader` (a DataLoader over this
        stream; default: in this process): each step's chunks (one per loader worker, in the
        loader's round-robin order), joined in epoch order and cut into the layout's micro-batches."""
        chunks: Iterable[Batch] = self if loader is None else loader
        chunks_per_step = max(1, loader.num_workers if loader is not None else 0)
        chunks = iter(chunks)
        for index in range(self.start.steps, self.steps_per_epoch):
            parts = list(itertools.islice(chunks, chunks_per_step))
            if not parts:
                return
            yield self._step(index, parts)

    def _step(self, index: int, parts: list[Batch]) -> Step:
        order = sorted(((i, part, j) for part in parts for j, i in enumerate(part.indices)), key=lambda t: t[0])
        micro_batches, offset = [], 0
        for size in self.layout.micro_batch_sizes(self.rank, index):
            if size == 0:
                micro_batches.append(Batch.blank(Augmentation(self.min_sizes[0], self.max_size, False)))
                continue
            picked = order[offset:offset + size]
            offset += size
            micro_batches.append(Batch([p.images[j] for _, p, j in picked], [p.targets[j] for _, p, j in picked],
                                       [p.keys[j] for _, p, j in picked], [p.augmentations[j] for _, p, j in picked],
                                       [i for i, _, _ in picked]))
        if offset != len(order):
            raise RuntimeError(f"step {index}: the loader gave {len(order)} samples, the layout expects {offset}")
        return Step(index, micro_batches, {p: pos for part in parts for p, pos in part.partitions.items()})
