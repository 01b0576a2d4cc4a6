"""OUT of `maskx predict --ray` (`ray_predictions.py`), a local folder or s3://: the one place that
names, writes and reads its files.

    OUT/plan.json            what the job is (model and its weights' digest, inputs, block size,
                             images); a rerun checks it, so a moved alias is another job
    OUT/image_ids.json       each image id and its file
    OUT/results/000042.json  block 42's detections as COCO results (the format of `results.json`)
    OUT/blocks/000042.json   block 42 is done: its images, detections, unreadable files and the nodes
                             that predicted it
    OUT/manifest.json        every block, the totals and the unreadable files, when the job ends
    OUT/categories.json

A block's results are written before its `blocks/` entry, which says they are whole.
"""
from __future__ import annotations

import hashlib
import json

import torch

from maskx.datasets import storage

PLAN_FILE = "plan.json"
MANIFEST_FILE = "manifest.json"
RESULTS_FOLDER = "results"
BLOCKS_FOLDER = "blocks"


def block_name(number: int) -> str:
    return f"{number:06d}.json"


def write_block(out: str, number: int, parts: list[dict]) -> dict:
    """The block's results, then its entry in blocks/ (which says the results are whole)."""
    results = [r for part in parts for r in json.loads(part["results"])]
    entry = {"block": number, "results": f"{RESULTS_FOLDER}/{block_name(number)}",
             "images": sum(int(part["images"]) for part in parts), "detections": len(results),
             "unreadable": [u for part in parts for u in json.loads(part["unreadable"])],
             "nodes": sorted({part["node"] for part in parts})}
    storage.write_bytes(storage.join(out, entry["results"]), json.dumps(results).encode())
    storage.write_bytes(storage.join(out, f"{BLOCKS_FOLDER}/{block_name(number)}"), json.dumps(entry).encode())
    return entry


def written_blocks(out: str) -> dict[int, dict]:
    _, names = storage.list_folder(storage.join(out, BLOCKS_FOLDER))
    return {int(name[:-5]): json.loads(storage.read_bytes(storage.join(out, f"{BLOCKS_FOLDER}/{name}")))
            for name in names if name.endswith(".json") and name[:-5].isdigit()}


def weights_digest(state_dict: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def check_plan(out: str, plan: dict) -> None:
    """The plan at `out`, written now or, from an earlier run, the same one: else a clear error."""
    url = storage.join(out, PLAN_FILE)
    if storage.stat(url) is None and storage.stat(storage.join(out, MANIFEST_FILE)) is not None:
        raise ValueError(f"--out {out} holds a manifest.json but no plan.json: a dataset's shards, or another "
                         "tool's output; name a new --out")
    if storage.stat(url) is None:
        storage.write_bytes(url, json.dumps(plan, indent=1).encode())
        return
    earlier = json.loads(storage.read_bytes(url))
    if earlier != plan:
        changed = ", ".join(f"{key} {earlier.get(key)!r} -> {value!r}" for key, value in plan.items()
                            if earlier.get(key) != value)
        raise ValueError(f"--out {out} holds another job's blocks ({changed}): name a new --out, or rerun the "
                         "same job to finish it")


def write_manifest(out: str, plan: dict, entries: list[dict]) -> None:
    manifest = dict(plan, results=[e["results"] for e in entries],
                    images_predicted=sum(e["images"] for e in entries),
                    detections=sum(e["detections"] for e in entries),
                    unreadable=[u for e in entries for u in e["unreadable"]])
    storage.write_bytes(storage.join(out, MANIFEST_FILE), json.dumps(manifest, indent=1).encode())


def read_results(out: str) -> list[dict]:
    """Every block's COCO results, in block order: one `results.json` of the whole job."""
    manifest = json.loads(storage.read_bytes(storage.join(out, MANIFEST_FILE)))
    return [r for name in manifest["results"] for r in json.loads(storage.read_bytes(storage.join(out, name)))]
