"""Image records -> WebDataset tar shards + manifest.json, in a folder or an S3 prefix.

Deterministic: records are sorted by key and cut into shards of `shard_size`; tar members carry
a fixed mtime and owner. Re-running skips every shard whose file is there with the checksum and
the input digest recorded when it was written.
"""
from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
import logging
import os
import sys
import tempfile
from dataclasses import asdict
from multiprocessing import get_context
from typing import Callable, Iterable, Iterator, Optional

from PIL import Image
from tqdm import tqdm
from webdataset import TarWriter

from . import storage
from .image_files import read_image_file
from .shard_format import FORMAT_VERSION, IMAGE_CLASSES_NAME, MANIFEST_NAME, ImageRecord, Manifest, ShardEntry, Skipped
from .vocab import Vocabulary

log = logging.getLogger(__name__)
RECORDS_DIR = "_records"
FIXED_MTIME = 0.0
# Some encoders pad a JPEG after its end-of-image marker; the marker must lie within this many final bytes.
JPEG_TRAILER_SLACK = 1024


class _LogLines:
    """A file for tqdm that logs each state of the bar as a line: a job log keeps only lines, so
    tqdm's carriage-return updates would show as the first state alone ("0/12") and never 100%."""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            log.info("%s", line)

    def flush(self) -> None:
        pass


def check_jpeg(payload: bytes, width: int, height: int) -> Optional[str]:
    """Why these bytes are not a usable JPEG of the annotated size, or None.

    The header and the end-of-image marker, not a decode: decoding every image made conversion ~20x
    slower than copying the bytes (bench/prepare_scale.py). A truncated file (the usual damage: a
    broken download or copy) has no end marker; damage inside the compressed data is caught when
    the training stream decodes the image, which skips and counts it."""
    if payload[:2] != b"\xff\xd8":
        return "not a JPEG"
    if b"\xff\xd9" not in payload[-JPEG_TRAILER_SLACK:]:
        return "corrupt JPEG (truncated: no end-of-image marker)"
    try:
        with Image.open(io.BytesIO(payload)) as image:  # reads the header only
            size = image.size
    except Exception as exc:
        return f"corrupt JPEG ({exc})"
    if size != (width, height):
        return f"image is {size[0]}x{size[1]}, annotations say {width}x{height}"
    return None


def plan_digest(records: list[ImageRecord]) -> str:
    digest = hashlib.sha256()
    for r in records:
        digest.update(json.dumps([r.key, r.image_path, r.sample_json()], sort_keys=True).encode())
    return digest.hexdigest()


def write_one_shard(out: str, name: str, records: list[ImageRecord]) -> tuple[ShardEntry, list[Skipped]]:
    """Write one shard and its record; returns its manifest entry and the images it skipped."""
    skipped: list[Skipped] = []
    staging = out if not storage.is_s3(out) else tempfile.gettempdir()
    os.makedirs(staging, exist_ok=True)
    local = os.path.join(staging, f".{name}.{os.getpid()}.partial")
    samples = 0
    with open(local, "wb") as stream:
        with TarWriter(stream, mtime=FIXED_MTIME, user="maskx", group="maskx") as tar:
            for record in records:
                try:
                    payload = read_image_file(record.image_path)
                except OSError as exc:  # gone since it was found, or an archive member that will not read
                    skipped.append(Skipped(record.image_path, f"unreadable image ({exc.strerror or exc})"))
                    continue
                problem = check_jpeg(payload, record.width, record.height)
                if problem:
                    skipped.append(Skipped(record.image_path, problem))
                    continue
                tar.write({"__key__": record.key, "jpg": payload,
                           "json": json.dumps(record.sample_json(), sort_keys=True).encode()})
                samples += 1
    sha256 = storage.file_sha256(local)
    entry = ShardEntry(url=name, samples=samples, bytes=os.path.getsize(local), sha256=sha256)
    storage.put_file(local, storage.join(out, name), metadata={"sha256": sha256})
    shard_record = {"entry": asdict(entry), "skipped": [asdict(s) for s in skipped], "plan": plan_digest(records)}
    storage.write_bytes(storage.join(out, f"{RECORDS_DIR}/{name}.json"), json.dumps(shard_record).encode())
    return entry, skipped


def _write_task(args) -> tuple[ShardEntry, list[Skipped]]:
    return write_one_shard(*args)


def completed_shard(out: str, name: str, records: list[ImageRecord]) -> Optional[tuple[ShardEntry, list[Skipped]]]:
    """The record of a shard already written from these same inputs, checksum verified; else None."""
    try:
        shard_record = json.loads(storage.read_bytes(storage.join(out, f"{RECORDS_DIR}/{name}.json")))
    except (FileNotFoundError, ValueError):
        return None
    entry = ShardEntry(**shard_record["entry"])
    if shard_record.get("plan") != plan_digest(records):
        return None
    url = storage.join(out, name)
    found = storage.stat(url)
    if found is None or found[0] != entry.bytes:
        return None
    sha256 = found[1].get("sha256") if storage.is_s3(url) else storage.file_sha256(url)
    if sha256 != entry.sha256:
        return None
    return entry, [Skipped(**s) for s in shard_record["skipped"]]


def pool_map(workers: Optional[int]) -> Callable[[Callable, list], Iterator]:
    def run(fn, tasks):
        if workers == 1 or len(tasks) <= 1:
            yield from map(fn, tasks)
            return
        with get_context("spawn").Pool(workers or os.cpu_count()) as pool:
            yield from pool.imap(fn, tasks)
    return run


def write_shards(
    records: list[ImageRecord],
    reader_skipped: Iterable[Skipped],
    out: str,
    source: str,
    vocab: Vocabulary,
    shard_size: int = 1000,
    workers: Optional[int] = None,
    map_tasks: Optional[Callable[[Callable, list], Iterator]] = None,
    progress: bool = True,
) -> Manifest:
    """Write `records` as shards under `out`; returns their manifest, for the caller to check and save.

    map_tasks(fn, tasks) runs fn over tasks and yields results in order; the default is a
    process pool over `workers` cores (the orchestrator passes Ray tasks for cluster scale).
    """
    if shard_size < 1:
        raise ValueError(f"shard_size: must be >= 1, got {shard_size}")
    records = sorted(records, key=lambda r: r.key)
    plan = [(f"{source}-{i // shard_size:06d}.tar", records[i:i + shard_size]) for i in range(0, len(records), shard_size)]
    results: dict[str, tuple[ShardEntry, list[Skipped]]] = {}
    todo = []
    for name, shard_records in plan:
        done = completed_shard(out, name, shard_records)
        if done is not None:
            results[name] = done
        else:
            todo.append((out, name, shard_records))
    if results:
        log.info("%s: %d of %d shards already complete (checksum verified); writing %d", out, len(results), len(plan), len(todo))
    run = map_tasks or pool_map(workers)
    # In a terminal a live bar; in a job log (CI, `ray job logs`) one line per update with real counts.
    bar_file = None if sys.stderr.isatty() else _LogLines()
    with tqdm(total=len(todo), desc=f"shards {source}", unit="shard", disable=not progress, file=bar_file,
              mininterval=0.1 if bar_file is None else 10.0) as bar:
        for (_, name, _), result in zip(todo, run(_write_task, todo)):
            results[name] = result
            bar.update()
    entries = [results[name][0] for name, _ in plan]
    skipped = list(reader_skipped) + [s for name, _ in plan for s in results[name][1]]
    skipped_images = {s.input for s in skipped}
    written = [r for r in records if r.image_path not in skipped_images]
    write_image_classes(written, vocab, storage.join(out, IMAGE_CLASSES_NAME))
    manifest = Manifest(
        format=FORMAT_VERSION, source=source, shards=entries,
        counts={source: {"images": sum(e.samples for e in entries),
                         "instances": sum(len(r.annotations) for r in written),
                         "skipped": len(skipped)}},
        vocabulary=vocab.to_json(), skipped=skipped, image_classes=IMAGE_CLASSES_NAME,
        location=storage.join(out, MANIFEST_NAME),
    )
    return manifest


def write_image_classes(records: list[ImageRecord], vocab: Vocabulary, url: str) -> None:
    """Each written image's classes (labels of its non-crowd objects, as training sees them): the
    class frequencies of repeat-factor sampling, known without reading a shard; and each class's
    objects, and those of them with a mask (`shard_format.ClassCounts`)."""
    labels = {r.key: sorted({vocab.label(a["category"]) for a in r.annotations if not a.get("iscrowd", 0)})
              for r in records}
    objects = [a for r in records for a in r.annotations if not a.get("iscrowd", 0)]
    instances = Counter(vocab.label(a["category"]) for a in objects)
    masks = Counter(vocab.label(a["category"]) for a in objects if a.get("segmentation") is not None)
    storage.write_bytes(url, json.dumps({"format": FORMAT_VERSION, "labels": labels, "instances": instances,
                                         "masks": masks}, separators=(",", ":")).encode())
