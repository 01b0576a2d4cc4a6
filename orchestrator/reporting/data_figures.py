"""The classes of prepared data as a picture: images and objects per class, COCO against Visual
Genome, classes with masks (set A) against boxes only (set B). `maskx prepare` writes one beside each
manifest (`classes.png`, set A meaning masks in that source); every training run logs one of all its
training manifests with set A as it trains it (`data/classes.png`)."""
from __future__ import annotations

import logging
from typing import Optional

from maskx.datasets import storage
from maskx.datasets.shard_format import ClassCounts, Manifest

from . import figures
from ..tracking.store import TrackedRun

log = logging.getLogger(__name__)

CLASSES_FIGURE = "classes.png"  # beside a manifest


def class_rows(counts: ClassCounts, set_a: set[int]) -> list[dict]:
    """One row per class of the source: its set, images and objects (what `figures.class_frequency` plots)."""
    return [{"label": label, "source": counts.source, "set": "setA" if label in set_a else "setB",
             "images": counts.images.get(label, 0), "instances": instances}
            for label, instances in sorted(counts.instances.items())]


def classes_figure(sources: list[ClassCounts], set_a: Optional[set[int]], title: str):
    """The figure of these sources' classes; `set_a` None: the classes with masks in each source."""
    rows = []
    for counts in sources:
        rows += class_rows(counts, set_a if set_a is not None else {k for k, v in counts.masks.items() if v})
    return figures.class_frequency(rows, title=title)


def write_classes_figure(manifest: Manifest) -> str:
    """`classes.png` beside the manifest (local or s3://); returns its URL."""
    url = storage.join(storage.parent(manifest.location), CLASSES_FIGURE)
    title = f"classes of {manifest.source} as prepared ({manifest.num_samples} images)"
    storage.write_bytes(url, figures.png_bytes(classes_figure([manifest.load_class_counts()], None, title)))
    return url


def log_classes(run: TrackedRun, manifests: list[Manifest], set_a: list[int]) -> None:
    """The run's training classes (set A as the run trains it) as `data/classes.png`; manifests
    prepared before maskx counted objects per class are left out with a warning."""
    counted = []
    for manifest in manifests:
        try:
            counted.append(manifest.load_class_counts())
        except FileNotFoundError as exc:
            log.warning("%s; its classes are not drawn", exc)
    if counted:
        run.log_figure(classes_figure(counted, set(set_a), title="classes of the training data, set A as this run "
                                                                 "trains it"), "data/classes.png")
