"""`maskx prepare`: COCO or Visual Genome files -> shards + manifest, with one shared vocabulary.

A conversion that skipped more than `max_skipped_fraction` of the images its annotations list
(missing or unreadable JPEGs: a wrong `--images`, a half-copied release) fails and writes no
manifest, so no training run can mistake it for data.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Iterator, Optional, Sequence, Union

from .coco import coco_image_ids, read_coco
from .image_files import ImageFiles
from .json_files import iter_json_array
from .shard_format import DEFAULT_MAX_SKIPPED_FRACTION, Manifest, Skipped, SourceRecords, save_manifest
from .visual_genome import PAPER_TEST_IMAGES, SPLITS, PaperSplit, read_visual_genome
from .vocab import COCO_CATEGORIES, Vocabulary, build_vocabulary, synset_counts
from .writer import write_shards

MapTasks = Callable[[Callable, list], Iterator]


class TooManySkipped(ValueError):
    """A conversion that found (almost) nothing: no manifest was written."""


def prepare_vocabulary(coco_annotations: Optional[str] = None, vg_objects: Optional[str] = None, vg_classes: int = 3000) -> Vocabulary:
    """COCO's categories (from the annotation file, else COCO 2017's 80) and the `vg_classes` most
    frequent VG synsets, joined as the paper does (`vocab.build_vocabulary`)."""
    categories = list(iter_json_array(coco_annotations, "categories.item")) if coco_annotations else COCO_CATEGORIES
    counts = synset_counts(iter_json_array(vg_objects)) if vg_objects else None
    return build_vocabulary(categories, counts, vg_classes)


def _vocabulary(vocab_path: Optional[str], **build_args) -> Vocabulary:
    return Vocabulary.load(vocab_path) if vocab_path else prepare_vocabulary(**build_args)


def _image_files(images: Union[str, Sequence[str]]) -> ImageFiles:
    return ImageFiles([images] if isinstance(images, str) else list(images))


def prepare_coco(annotations: str, images: Union[str, Sequence[str]], out: str, vocab_path: Optional[str] = None,
                 shard_size: int = 1000, workers: Optional[int] = None, map_tasks: Optional[MapTasks] = None,
                 progress: bool = True, max_skipped_fraction: float = DEFAULT_MAX_SKIPPED_FRACTION) -> Manifest:
    """`images`: the folder(s) or zip archive(s) of the split (`val2017/`, `val2017.zip`), local or s3://."""
    vocab = _vocabulary(vocab_path, coco_annotations=annotations)
    found = read_coco(annotations, _image_files(images), vocab)
    return _convert(found, annotations, out, "coco", vocab, shard_size=shard_size, workers=workers,
                    map_tasks=map_tasks, progress=progress, max_skipped_fraction=max_skipped_fraction)


def prepare_vg(image_data: str, objects: str, images: Union[str, Sequence[str]], out: str, vocab_path: Optional[str] = None,
               vg_classes: int = 3000, shard_size: int = 1000, workers: Optional[int] = None,
               map_tasks: Optional[MapTasks] = None, progress: bool = True,
               max_skipped_fraction: float = DEFAULT_MAX_SKIPPED_FRACTION, exclude_coco: Sequence[str] = (),
               split: Optional[str] = None, coco_val: Optional[str] = None,
               test_images: int = PAPER_TEST_IMAGES) -> Manifest:
    """`images`: VG's `images.zip` + `images2.zip`, or the folder holding `VG_100K/` and `VG_100K_2/`
    (or all images flat). `exclude_coco`: COCO annotation files whose images are left out (the
    split you evaluate on). `split`: one of the paper's splits (`visual_genome.PaperSplit`), its val
    being the VG images of the COCO annotations `coco_val`."""
    if split is not None and (split not in SPLITS or not coco_val):
        raise ValueError(f"prepare vg: split must be one of {', '.join(SPLITS)} and needs coco_val (the COCO "
                         f"annotations whose images form VG val, e.g. instances_val2017.json); got split={split!r}, "
                         f"coco_val={coco_val!r}")
    vocab = _vocabulary(vocab_path, vg_objects=objects, vg_classes=vg_classes)
    excluded_ids = frozenset().union(*(coco_image_ids(path) for path in exclude_coco))
    paper_split = PaperSplit(split, coco_image_ids(coco_val), test_images) if split else None
    found = read_visual_genome(image_data, objects, _image_files(images), vocab, excluded_ids, paper_split)
    if paper_split and not found.split_counts[f"{split}_split_images"]:
        why = (f"no VG image in {image_data} has a coco_id among the images of {coco_val}" if split == "val" else
               "--test-images is 0" if split == "test" and not test_images else "every image is in val or test")
        raise TooManySkipped(f"prepare vg: split {split} has no images ({why}); no manifest written")
    found.skipped += [Skipped(objects, f"{n} objects left out: {why}") for why, n in sorted(found.filtered.items())]
    extra_counts: dict = {"excluded_coco_images": found.excluded_coco} if exclude_coco else {}
    if paper_split:
        extra_counts.update(split=split, **found.split_counts)
    if vocab.coco_targets_not_kept:
        extra_counts["coco_classes_without_vg_class"] = len(vocab.coco_targets_not_kept)
    manifest = _convert(found, objects, out, "vg", vocab, shard_size=shard_size, workers=workers, map_tasks=map_tasks,
                        progress=progress, max_skipped_fraction=max_skipped_fraction, extra_counts=extra_counts)
    return manifest


def _convert(found: SourceRecords, listed_in: str, out: str, source: str, vocab: Vocabulary, *, shard_size: int,
             workers: Optional[int], map_tasks: Optional[MapTasks], progress: bool, max_skipped_fraction: float,
             extra_counts: Optional[dict] = None) -> Manifest:
    """Write the shards, then the manifest only if few enough images were skipped; missing images
    fail before any shard is written."""
    listed = len(found.records) + len(found.missing)
    check_skipped(source, listed_in, found.missing, listed, max_skipped_fraction)
    reader_skipped = found.skipped + found.missing
    manifest = write_shards(found.records, reader_skipped, out, source, vocab, shard_size, workers, map_tasks, progress)
    unreadable = manifest.skipped[len(reader_skipped):]  # the writer's: corrupt or unreadable JPEGs
    check_skipped(source, listed_in, found.missing + unreadable, listed, max_skipped_fraction)
    manifest.counts[source].update(extra_counts or {})
    save_manifest(manifest)
    return manifest


def check_skipped(source: str, listed_in: str, skipped_images: list[Skipped], listed: int, max_fraction: float) -> None:
    if listed == 0:
        raise TooManySkipped(f"prepare {source}: {listed_in} lists no images to convert; no manifest written")
    if len(skipped_images) / listed <= max_fraction:
        return
    kinds = Counter(skip.reason.split(":")[0].split(" (")[0] for skip in skipped_images).most_common(3)
    example = skipped_images[0]
    raise TooManySkipped(
        f"prepare {source}: {len(skipped_images)} of {listed} images in {listed_in} skipped "
        f"({len(skipped_images) / listed:.0%} > --max-skipped-fraction {max_fraction}): "
        + ", ".join(f"{kind} ({n})" for kind, n in kinds)
        + f"; e.g. {example.input}: {example.reason}. No manifest written: check --images, or raise "
        "--max-skipped-fraction if the losses are expected")
