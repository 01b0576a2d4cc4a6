"""Streams over shards: what training and evaluation share (sources, reading one shard with its
damage counted, the loader) and the evaluation stream. The training stream, which reads through
the run's canonical partitions, is `train_stream.py`; the batches both ship are `batch.py`.

Eval:   shard list -> split by node -> split by worker -> tar samples -> decode -> batch; every
        sample exactly once across all ranks and workers.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import IO, Callable, Iterator, Optional

from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from . import storage
from .batch import Batch
from .s3_objects import StorageError
from .shard_cache import CachedShard, CacheSettings, cache_for
from .shard_format import Manifest, load_manifest
from .transforms import BadSample, decode_sample
from .vocab import Vocabulary

log = logging.getLogger(__name__)


@dataclass
class Source:
    """One manifest's shards and its share of the training mix."""

    name: str
    shard_urls: list[str]
    shard_samples: list[int]
    weight: float = 1.0
    shard_checksums: list[tuple[int, str]] = field(default_factory=list)  # (bytes, sha256) per shard
    cache: Optional[CacheSettings] = None  # where this node keeps the S3 shards it read (`shard_cache.py`)

    @classmethod
    def from_manifest(cls, manifest: Manifest, weight: float = 1.0, name: Optional[str] = None) -> "Source":
        return cls(name or manifest.source, manifest.shard_urls(), [s.samples for s in manifest.shards], weight,
                   [(s.bytes, s.sha256) for s in manifest.shards])

    @property
    def num_samples(self) -> int:
        return sum(self.shard_samples)


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


def open_shard(source: Source, index: int, upcoming: list[int] = ()) -> IO[bytes]:
    """Shard `index` of a source: from the node's cache where it has one and the shard is on S3 (the
    `upcoming` shards, the next this reader takes, fetched ahead), else straight from storage."""
    url = source.shard_urls[index]
    if source.cache is None or not storage.is_s3(url) or not source.shard_checksums:
        return storage.open_read(url)

    def cached(i: int) -> CachedShard:
        return CachedShard(source.shard_urls[i], *source.shard_checksums[i])

    return cache_for(source.cache).open(cached(index), [cached(i) for i in upcoming])


def source_shards(source: Source, assignment: list[tuple[int, int, int]], skips: SkipCounter) -> Iterator[dict]:
    """The samples of a reader's shards of one source, in its order: (shard index, keep-every, offset)."""
    for position, (shard, every, offset) in enumerate(assignment):
        upcoming = [following for following, _, _ in assignment[position + 1:]]
        yield from shard_samples(source.shard_urls[shard], source.shard_samples[shard], skips, every, offset,
                                 opened=lambda shard=shard, upcoming=upcoming: open_shard(source, shard, upcoming))


def shard_samples(url: str, expected: int, skips: SkipCounter, every: int = 1, offset: int = 0,
                  opened: Optional[Callable[[], IO[bytes]]] = None) -> Iterator[dict]:
    """Samples of one shard (`opened` opens it: default, straight from storage). A truncated or
    non-tar shard ends early, its missing samples counted; a shard that cannot be reached at all
    (403/404) raises at once."""
    seen = 0
    errors: list[Exception] = []

    def keep_going(exc: Exception) -> bool:
        errors.append(exc)
        return False

    with (opened or (lambda: storage.open_read(url)))() as shard:  # one that cannot be opened raises here
        samples = group_by_keys(tar_file_expander([{"url": url, "stream": shard}], handler=keep_going),
                                handler=keep_going)
        try:
            for index, sample in enumerate(samples):
                seen += 1
                if index % every == offset:
                    yield sample
        except (FileNotFoundError, PermissionError, StorageError):
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
            for sample in source_shards(source, slot_assignment(len(order), slot, num_slots, order), self.skips):
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
    return sources_of([(load_manifest(url), weight) for url, weight in manifests])


def sources_of(manifests: list[tuple[Manifest, float]]) -> tuple[list[Source], Vocabulary]:
    """Sources from loaded (manifest, weight) pairs, and their one vocabulary."""
    first = manifests[0][0]
    vocab = Vocabulary.from_json(first.vocabulary)
    for manifest, _ in manifests[1:]:
        vocab.require_same(Vocabulary.from_json(manifest.vocabulary), f"manifest {manifest.location}",
                           f"{first.location}; prepare every source with the same --vocab")
    names = [m.source for m, _ in manifests]
    sources = [Source.from_manifest(m, w, name=f"{m.source}{i}" if names.count(m.source) > 1 else None)
               for i, (m, w) in enumerate(manifests)]
    return sources, vocab


PREFETCH_BATCHES = 2  # per loader worker


def make_loader(stream: IterableDataset, num_workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=PREFETCH_BATCHES if num_workers else None)
