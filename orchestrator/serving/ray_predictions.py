"""`maskx predict --ray`: a model over a collection of images (a folder, a glob, an S3 prefix) or over
prepared shards, on Ray Data, written block by block.

The job is cut into blocks: `block_size` images in sorted order, or one shard. Ray Data reads,
decodes, normalizes and resizes a block's images in a CPU task (`PreResizedTransform.prepare`), the
model runs in a pool of actors (`actors=(MIN, MAX)`, `gpus_per_actor`) on the prepared images, and
the driver writes each block as it comes, into OUT (`block_folder.py` names its files).

A rerun of the same plan skips the blocks whose `blocks/` entry exists: a job that died resumes
where it stopped, and no block is written twice. Within a block the model sees the batches that
`maskx predict` gives it (consecutive images, unreadable ones dropped; a block is a whole number of
batches), so both write the same detections. OUT and the inputs are read by every node: on a
cluster, s3:// or a shared filesystem.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import pickle
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
from torchvision.models.detection.transform import resize_boxes

from maskx.datasets import storage
from maskx.datasets.s3_objects import StorageError
from maskx.datasets.shard_format import load_manifest
from maskx.datasets.stream import SkipCounter, shard_samples
from maskx.datasets.transforms import BadSample, decode_sample
from maskx.datasets.vocab import Vocabulary
from maskx.models import build_transform

from ..config import TrainConfig
from ..evaluation.records import detection_records
from ..ray_cluster import connect
from .block_folder import MANIFEST_FILE, check_plan, weights_digest, write_block, write_manifest, written_blocks
from .inference import decode_image_bytes, loaded_from
from .predictions import IMAGE_SUFFIXES, coco_results, image_files, image_ids, write_categories, write_image_ids

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 64
# A Ray worker with torch imported, decoding: Ray Data measured ~490 MiB and warns under 1.25x that.
DECODE_WORKER_BYTES = 768 * 2**20


@dataclass
class RaySummary:
    out: str
    images: int = 0  # predicted on, this run
    detections: int = 0
    blocks: int = 0  # written this run
    blocks_done_before: int = 0  # by an earlier run of the same plan, skipped
    seconds: float = 0.0
    unreadable: list[dict] = field(default_factory=list)  # {"image": ..., "reason": ...}

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def list_images(images: str) -> list[str]:
    """The image files of a folder, a glob or an S3 prefix, sorted (the order `maskx predict` uses)."""
    if not storage.is_s3(images):
        return [os.path.abspath(path) for path in image_files(images)]  # tasks run in other folders
    keys = sorted(k for k in storage.list_keys(images) if k.lower().endswith(IMAGE_SUFFIXES))
    if not keys:
        raise FileNotFoundError(f"--images {images}: no .jpg, .jpeg or .png objects under that prefix")
    return [storage.join(images, key) for key in keys]


def image_blocks(images: str, block_size: int) -> list[dict]:
    """One row per block of `block_size` images: their references and image ids."""
    refs = list_images(images)
    ids = image_ids(refs)
    return [{"block": number, "refs": refs[start:start + block_size], "ids": ids[start:start + block_size],
             "samples": 0} for number, start in enumerate(range(0, len(refs), block_size))]


def shard_blocks(manifest_url: str) -> tuple[list[dict], Vocabulary]:
    """One row per shard of prepared shards, and their vocabulary."""
    manifest = load_manifest(manifest_url)
    return ([{"block": number, "refs": [url], "ids": [], "samples": entry.samples}
             for number, (url, entry) in enumerate(zip(manifest.shard_urls(), manifest.shards))],
            manifest.vocab())


def prepare_block(row: dict, cfg: TrainConfig, vocab: Vocabulary, batch_size: int, block_size: int) -> Iterator[dict]:
    """A CPU task: the block's images read, decoded, normalized and resized, each with its image id,
    source size and batch number, in parts of at most `block_size` images (a shard can hold more);
    what could not be read, listed with why in the last part."""
    transform = build_transform(cfg.model).eval()
    batches_per_part = block_size // batch_size
    prepared, unreadable, part = [], [], 0
    for batch, image_id, image in _block_images(row, vocab, batch_size, unreadable):
        if prepared and batch // batches_per_part != prepared[0][0] // batches_per_part:
            yield _part(row, part, prepared, [], last=False)
            prepared, part = [], part + 1
        prepared.append((batch, image_id, tuple(image.shape[-2:]), transform.prepare(image.float().div_(255)).numpy()))
    yield _part(row, part, prepared, unreadable, last=True)


def _part(row: dict, part: int, prepared: list[tuple], unreadable: list[dict], last: bool) -> dict:
    # Pickled: the images have different shapes, which Ray Data's columns would have to convert.
    return {"block": row["block"], "part": part, "last": last, "prepared": pickle.dumps(prepared),
            "unreadable": json.dumps(unreadable)}


def _block_images(row: dict, vocab: Vocabulary, batch_size: int,
                  unreadable: list[dict]) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(batch number, image id, uint8 image) for a block's readable images, batched as `maskx
    predict` batches them: image files by position (an unreadable one leaves its batch short),
    shard samples by readable sample."""
    if row["samples"]:
        url, skips, readable = row["refs"][0], SkipCounter(), 0
        for sample in shard_samples(url, int(row["samples"]), skips):
            try:
                image, target = decode_sample(sample, vocab, None, train=False)
            except BadSample as exc:
                unreadable.append({"image": f"{url}#{sample.get('__key__')}", "reason": str(exc)})
                continue
            yield readable // batch_size, target["image_id"], image
            readable += 1
        if skips.count:
            unreadable.append({"image": url, "reason": f"{skips.count} samples unreadable (damaged shard)"})
        return
    for position, (ref, image_id) in enumerate(zip(row["refs"], row["ids"])):
        try:
            image = decode_image_bytes(storage.read_bytes(ref), f"image {ref}")
        except (ValueError, OSError, StorageError) as exc:
            log.warning("%s; skipped", exc)
            unreadable.append({"image": ref, "reason": str(exc)})
            continue
        yield position // batch_size, int(image_id), image


def prepared_block_bytes(cfg: TrainConfig, block_size: int) -> int:
    """A decode task's worker and the most a block's prepared images take (float32, resized within
    min_size x max_size): what it asks Ray for, so that a node runs no more of them than its memory holds."""
    return DECODE_WORKER_BYTES + block_size * 3 * cfg.model.min_size * cfg.model.max_size * 4


class BlockPredictor:
    """An actor: the model (weights from the object store, once) over prepared blocks."""

    def __init__(self, model: list, gpus: float):
        import ray

        # The reference comes in a list so that Ray passes the reference, not the weights, in every
        # (re)start's arguments; the actor fetches them here.
        cfg, vocab, state_dict = ray.get(model[0])
        self.node = ray.get_runtime_context().get_node_id()
        self.loaded = loaded_from(cfg, vocab, state_dict)
        self.device = torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")
        self.loaded.model.transform.prepared_inputs = True
        self.loaded.model.to(self.device)

    @torch.no_grad()
    def __call__(self, row: dict) -> dict:
        prepared = pickle.loads(row["prepared"])
        records = []
        for _, batch in itertools.groupby(prepared, key=lambda item: item[0]):
            batch = list(batch)
            outputs = self.loaded.model([torch.from_numpy(image).to(self.device) for *_, image in batch])
            for (_, image_id, size, image), output in zip(batch, outputs):
                # On the actor's device: a GPU pastes the kept masks too; only their RLEs come back.
                output["boxes"] = resize_boxes(output["boxes"], list(image.shape[-2:]), list(size))
                records += detection_records(int(image_id), output, size)
        return {"block": row["block"], "part": row["part"], "last": row["last"], "images": len(prepared),
                "results": json.dumps(coco_results(records, self.loaded.vocab)), "unreadable": row["unreadable"],
                "node": self.node}


def predict_on_ray(model_uri: str, weights: tuple[TrainConfig, Vocabulary, dict], out: str, *,
                   images: Optional[str] = None, shards: Optional[str] = None, batch_size: int = 4,
                   block_size: int = DEFAULT_BLOCK_SIZE, actors: tuple[int, int] = (1, 1),
                   gpus_per_actor: float = 0.0, cpus_per_actor: float = 1.0) -> RaySummary:
    """The model (`weights`: `inference.model_weights(model_uri)`) over `images` or `shards` on the
    connected Ray cluster (or a local one), written under `out` block by block."""
    import ray

    if block_size % batch_size:
        raise ValueError(f"--block-size {block_size}: a whole number of batches of --batch-size {batch_size}")
    cfg, vocab, state_dict = weights
    if shards and not storage.is_s3(shards):
        shards = os.path.abspath(shards)  # its shards' paths are read by tasks that run in other folders
    if shards:
        blocks, shard_vocab = shard_blocks(shards)
        vocab.require_same(shard_vocab, f"--shards {shards}", "the model was trained on")
    else:
        blocks = image_blocks(images, block_size)
    # The weights' digest, not the URI alone: models:/NAME@ALIAS may name other weights by the rerun.
    plan = {"model": model_uri, "weights_sha256": weights_digest(state_dict), "inputs": shards or images,
            "block_size": None if shards else block_size, "blocks": len(blocks),
            "images": sum(len(b["refs"]) for b in blocks) if images else None}
    check_plan(out, plan)
    if images:
        write_image_ids(out, [i for b in blocks for i in b["ids"]], [r for b in blocks for r in b["refs"]])
    done = written_blocks(out)
    pending = [b for b in blocks if b["block"] not in done]
    summary = RaySummary(out, blocks_done_before=len(blocks) - len(pending))
    write_categories(out, vocab)

    started = time.monotonic()
    if pending:
        connect()
        _check_cpus(actors[0], cpus_per_actor)
        model = ray.put((cfg, vocab, state_dict))
        dataset = ray.data.from_items(pending, override_num_blocks=len(pending))
        # A memory request unlike the actors' also keeps Ray Data from fusing these CPU tasks into the
        # model actors (decoding would hold the actors' CPUs and GPUs).
        dataset = dataset.flat_map(prepare_block, fn_kwargs={"cfg": cfg, "vocab": vocab, "batch_size": batch_size,
                                                             "block_size": block_size},
                                   num_cpus=1, memory=prepared_block_bytes(cfg, block_size))
        dataset = dataset.map(BlockPredictor, fn_constructor_kwargs={"model": [model], "gpus": gpus_per_actor},
                              compute=ray.data.ActorPoolStrategy(min_size=actors[0], max_size=actors[1]),
                              num_gpus=gpus_per_actor, num_cpus=cpus_per_actor)
        parts: dict[int, dict[int, dict]] = {}  # block -> part -> predictions, until the block is whole
        for row in dataset.iter_rows():
            number = int(row["block"])
            if number in done:  # a part Ray Data gave twice after a failure: its block is written
                continue
            received = parts.setdefault(number, {})
            received[int(row["part"])] = row
            last = next((part for part, r in received.items() if r["last"]), None)
            if last is None or len(received) <= last:
                continue
            entry = write_block(out, number, [received.pop(part) for part in range(last + 1)])
            del parts[number]
            done[number] = entry
            summary.blocks += 1
            summary.images += entry["images"]
            summary.detections += entry["detections"]
            summary.unreadable += entry["unreadable"]
    summary.seconds = time.monotonic() - started
    write_manifest(out, plan, [done[b["block"]] for b in blocks])
    return summary


def _check_cpus(min_actors: int, cpus_per_actor: float) -> None:
    """Actors that hold every CPU leave none to decode with, and the job would wait forever."""
    import ray

    cpus, needed = ray.cluster_resources().get("CPU", 0), min_actors * cpus_per_actor + 1
    if needed > cpus:
        raise ValueError(f"--actors {min_actors} (at least) x --cpus-per-actor {cpus_per_actor:g}, and 1 CPU to decode "
                         f"images with, need {needed:g} CPUs; the cluster has {cpus:g}: start fewer actors or give each "
                         "fewer CPUs")


def summary_line(summary: RaySummary) -> str:
    skipped = f", {summary.blocks_done_before} blocks written by an earlier run skipped" if summary.blocks_done_before else ""
    return (f"{summary.out}: {summary.detections} detections on {summary.images} images in {summary.blocks} blocks, "
            f"{summary.images_per_second:.1f} img/s{skipped}; {len(summary.unreadable)} unreadable "
            f"(listed in {MANIFEST_FILE})")

