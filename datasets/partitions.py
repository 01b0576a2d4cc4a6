"""Canonical partitions: an epoch's sample order that does not depend on how many ranks read it.

A run fixes two numbers at its start, its `DataPlan`: the global batch G (samples per optimizer
step) and the number of canonical partitions P. Each partition is a deterministic stream of samples
(its shards, shuffle buffer, source mix and augmentations are seeded by (seed, epoch, partition)).
Sample g of an epoch (g = 0, 1, ...) is the next sample of partition g mod P, and step s trains on
samples sG .. sG+G-1. So the samples of every step, and where each partition stands after it, are
the same whatever the world size W.

The `EpochLayout` is the part that does depend on W: rank r reads partitions r, r+W, r+2W, ...
(its loader workers split those again), and splits its share of each step into as many
micro-batches as the busiest rank needs, so every rank runs the same number of forward/backward
passes and none waits at an all-reduce. Gradients are accumulated over the micro-batches, each
weighted by its share of G, so a step is one step on G samples at any W. A checkpoint stores each
partition's position; any layout continues any other.

MosaicML streaming's "canonical nodes" are the model for this; there, as here, a run's sample order
is fixed by its canonical partitioning, not by its hardware. Where each partition stands (its
`PartitionPosition`) is what a checkpoint stores (`StreamPosition`).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DataPlan:
    """Fixed for the life of a run (stored in its checkpoints)."""

    global_batch: int
    partitions: int

    def __post_init__(self):
        if self.global_batch < 1 or self.partitions < 1:
            raise ValueError(f"data: global batch {self.global_batch} and partitions {self.partitions} must be >= 1")

    def partition_of(self, sample: int) -> int:
        return sample % self.partitions

    def step_samples(self, step: int) -> range:
        return range(step * self.global_batch, (step + 1) * self.global_batch)

    def taken_before(self, partition: int, step: int) -> int:
        """Samples partition `partition` has given to the steps before `step` of an epoch."""
        return len(range(partition, step * self.global_batch, self.partitions))


@dataclass(frozen=True)
class EpochLayout:
    """A `DataPlan` laid out on `world_size` ranks, at most `batch_size` images per micro-batch."""

    plan: DataPlan
    world_size: int
    batch_size: int

    def __post_init__(self):
        if self.world_size > self.plan.partitions:
            raise ValueError(f"{self.world_size} workers but the run's data has {self.plan.partitions} partitions "
                             "(data.partitions): each worker needs one at least. Resume with at most that many "
                             "workers; start runs that will grow with data.partitions >= the most workers")

    def rank_of(self, partition: int) -> int:
        return partition % self.world_size

    def rank_partitions(self, rank: int) -> list[int]:
        return list(range(rank, self.plan.partitions, self.world_size))

    def worker_partitions(self, rank: int, worker: int, num_workers: int) -> list[int]:
        return self.rank_partitions(rank)[worker::num_workers]

    def rank_sample_counts(self, step: int) -> list[int]:
        counts = Counter(self.rank_of(self.plan.partition_of(g)) for g in self.plan.step_samples(step))
        return [counts[rank] for rank in range(self.world_size)]

    def micro_batch_sizes(self, rank: int, step: int) -> list[int]:
        """Rank `rank`'s share of step `step` in micro-batches; the same count on every rank (a rank
        with fewer samples gets smaller ones, 0 where it has none: a blank pass with no weight)."""
        counts = self.rank_sample_counts(step)
        passes = max(1, max(math.ceil(c / self.batch_size) for c in counts))
        n = counts[rank]
        return [n // passes + (1 if i < n % passes else 0) for i in range(passes)]

    def loss_weight(self, images: int) -> float:
        """A micro-batch's loss weight: its share of the global batch, times W since DDP averages over
        ranks. Summed over every rank's micro-batches and averaged, the gradient is the step's mean."""
        return images * self.world_size / self.plan.global_batch


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

    def advance(self, step_index: int, partitions: dict[int, PartitionPosition]) -> None:
        """After step `step_index` of the epoch, with the positions of the partitions it read."""
        self.steps = step_index + 1
        self.partitions.update(partitions)

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
