"""`maskx prepare`: COCO or Visual Genome files -> shards + manifest, with one shared vocabulary."""
from __future__ import annotations

import json
from typing import Callable, Iterator, Optional

from .coco import read_coco
from .shard_format import Manifest, Skipped
from .visual_genome import read_visual_genome
from .vocab import COCO_CATEGORIES, Vocabulary, build_vocabulary, single_synset_counts
from .writer import write_shards


def prepare_vocabulary(coco_annotations: Optional[str] = None, vg_objects: Optional[str] = None, vg_classes: int = 3000) -> Vocabulary:
    """COCO's categories (from the annotation file, else COCO 2017's 80) plus the top VG synsets."""
    categories = COCO_CATEGORIES
    if coco_annotations:
        with open(coco_annotations) as f:
            categories = json.load(f)["categories"]
    counts = None
    if vg_objects:
        with open(vg_objects) as f:
            counts = single_synset_counts(json.load(f))
    return build_vocabulary(categories, counts, vg_classes)


def _vocabulary(vocab_path: Optional[str], **build_args) -> Vocabulary:
    return Vocabulary.load(vocab_path) if vocab_path else prepare_vocabulary(**build_args)


def prepare_coco(annotations: str, images: str, out: str, vocab_path: Optional[str] = None, shard_size: int = 1000,
                 workers: Optional[int] = None, map_tasks: Optional[Callable[[Callable, list], Iterator]] = None,
                 progress: bool = True) -> Manifest:
    vocab = _vocabulary(vocab_path, coco_annotations=annotations)
    records, skipped = read_coco(annotations, images, vocab)
    return write_shards(records, skipped, out, "coco", vocab, shard_size, workers, map_tasks, progress)


def prepare_vg(image_data: str, objects: str, images: str, out: str, vocab_path: Optional[str] = None,
               vg_classes: int = 3000, shard_size: int = 1000, workers: Optional[int] = None,
               map_tasks: Optional[Callable[[Callable, list], Iterator]] = None, progress: bool = True) -> Manifest:
    vocab = _vocabulary(vocab_path, vg_objects=objects, vg_classes=vg_classes)
    records, skipped, filtered = read_visual_genome(image_data, objects, images, vocab)
    skipped = list(skipped) + [Skipped(objects, f"{n} objects left out: {why}") for why, n in sorted(filtered.items())]
    return write_shards(records, skipped, out, "vg", vocab, shard_size, workers, map_tasks, progress)
