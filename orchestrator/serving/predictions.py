"""Predictions at scale: a model over a folder or glob of images, or over shards, written as COCO
results (what COCO test-dev takes and what analysis tools read), with overlays on request.

`results.json` is a COCO results list: `image_id`, `category_id`, `bbox` (xywh), `score`,
`segmentation` (RLE). A class that came from COCO keeps its COCO category id, so the file scores
against COCO's own annotation files; a class from elsewhere (a VG synset) gets id 1000 + its maskx
label. Every entry also carries `category_name`, and `categories.json` lists every id and name.
An image's id is the number in its file name (COCO's `000000123456.jpg` is 123456) where no other
file's name gives the same number; any other file gets the next id past the largest of those
(`image_ids.json` maps each id to its file). Over shards, the id its record holds. Overlays go to
`overlays/<file name>.png`, never over an input.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torchvision.io import write_png
from tqdm import tqdm

from maskx.datasets import storage
from maskx.datasets.stream import load_sources
from maskx.datasets.vocab import Vocabulary

from ..evaluation.records import detection_records
from ..evaluation.shards import predict_on_shards
from .drawing import draw_predictions, model_set_a
from .inference import LoadedModel, model_device, read_image

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
CATEGORIES_FILE = "categories.json"
IMAGE_IDS_FILE = "image_ids.json"
OVERLAYS_FOLDER = "overlays"
NON_COCO_CATEGORY_OFFSET = 1000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class PredictionSummary:
    results: str
    images: int = 0
    detections: int = 0
    unreadable: list[str] = field(default_factory=list)


def category_id(vocab: Vocabulary, label: int) -> int:
    coco_id = vocab.classes[label - 1].coco_id
    return coco_id if coco_id is not None else NON_COCO_CATEGORY_OFFSET + label


def coco_results(records: list[dict], vocab: Vocabulary) -> list[dict]:
    """maskx's evaluation records (category ids = maskx labels) as COCO results in the source's ids."""
    return [dict(r, category_id=category_id(vocab, r["category_id"]), category_name=vocab.name(r["category_id"]))
            for r in records]


def image_files(images: str) -> list[str]:
    paths = [os.path.join(images, n) for n in os.listdir(images)] if os.path.isdir(images) else glob.glob(images)
    paths = sorted(p for p in paths if p.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        raise FileNotFoundError(f"--images {images}: no .jpg, .jpeg or .png files")
    return paths


def image_ids(paths: list[str]) -> list[int]:
    """One id per path, all different: the number in the file name (COCO's `000000123456.jpg` is
    123456) where no other file's name gives the same number; every other file (no number, or one
    another file shares: `a1.jpg` and `b1.jpg`) gets the next id past the largest of those."""
    numbers = [re.fullmatch(r"\D*(\d+)", os.path.splitext(os.path.basename(path))[0]) for path in paths]
    numbers = [int(n.group(1)) if n else None for n in numbers]
    unique = {n for n in numbers if n is not None and numbers.count(n) == 1}
    next_id = max(unique, default=0) + 1
    ids = []
    for number in numbers:
        if number in unique:
            ids.append(number)
        else:
            ids.append(next_id)
            next_id += 1
    return ids


def write_image_ids(folder: str, ids: list[int], paths: list[str]) -> None:
    """`image_ids.json`: each image id of the results and the file it is."""
    storage.write_bytes(storage.join(folder, IMAGE_IDS_FILE),
                        json.dumps({str(i): path for i, path in zip(ids, paths)}, indent=1).encode())


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()
def predict_images(loaded: LoadedModel, images: str, out: str, batch_size: int = 4, overlays: bool = False,
                   score_threshold: float = 0.5, progress: bool = True) -> PredictionSummary:
    """The model over every image file in a folder or glob; an unreadable file is skipped and listed."""
    paths = image_files(images)
    ids = dict(zip(paths, image_ids(paths)))
    os.makedirs(out, exist_ok=True)
    if overlays:
        os.makedirs(os.path.join(out, OVERLAYS_FOLDER), exist_ok=True)
    summary = PredictionSummary(os.path.join(out, RESULTS_FILE))
    records = []
    loaded.model.eval()
    with tqdm(total=len(paths), unit="img", disable=not progress, desc="predict") as bar:
        for chunk in _batches(paths, batch_size):
            decoded = []
            for path in chunk:
                try:
                    decoded.append((path, read_image(path)))
                except ValueError as exc:
                    log.warning("%s; skipped", exc)
                    summary.unreadable.append(path)
            device = model_device(loaded.model)
            outputs = loaded.model([image.to(device).float().div_(255) for _, image in decoded]) if decoded else []
            outputs = [{key: value.cpu() for key, value in output.items()} for output in outputs]
            for (path, image), output in zip(decoded, outputs):
                records += detection_records(ids[path], output, tuple(image.shape[-2:]))
                if overlays:
                    write_png(draw_predictions(image, output, loaded.vocab, model_set_a(loaded), score_threshold),
                              os.path.join(out, OVERLAYS_FOLDER, os.path.basename(path) + ".png"))
            summary.images += len(decoded)
            bar.update(len(chunk))
    write_image_ids(out, list(ids.values()), list(ids))
    return _write(summary, coco_results(records, loaded.vocab), loaded.vocab)


def predict_shards(loaded: LoadedModel, manifest: str, out: str, batch_size: int = 4,
                   progress: bool = True) -> PredictionSummary:
    """The model over every sample of prepared shards (local or s3://), ids from their records."""
    sources, vocab = load_sources([(manifest, 1.0)])
    loaded.vocab.require_same(vocab, f"--shards {manifest}", "the model was trained on")
    os.makedirs(out, exist_ok=True)
    (images, _, detections), _ = predict_on_shards(loaded.model, sources, vocab, batch_size=batch_size,
                                                   device=model_device(loaded.model), progress=progress)
    summary = PredictionSummary(os.path.join(out, RESULTS_FILE), images=len(images))
    return _write(summary, coco_results(detections, vocab), vocab)


def _write(summary: PredictionSummary, results: list[dict], vocab: Vocabulary) -> PredictionSummary:
    write_results(summary.results, results, vocab)
    summary.detections = len(results)
    return summary


def write_results(path: str, results: list[dict], vocab: Vocabulary) -> None:
    """The results list at `path` and `categories.json` beside it."""
    with open(path, "w") as f:
        json.dump(results, f)
    write_categories(os.path.dirname(path) or ".", vocab)


def write_categories(folder: str, vocab: Vocabulary) -> None:
    """`categories.json` in a folder (local or s3://): every category id of the results and its name."""
    categories = [{"id": category_id(vocab, label), "name": vocab.name(label)} for label in range(1, vocab.num_classes)]
    storage.write_bytes(storage.join(folder, CATEGORIES_FILE), json.dumps(categories, indent=1).encode())
