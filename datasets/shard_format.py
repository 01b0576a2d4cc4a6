"""The maskx shard format, version 1: the public contract documented in docs/shard-format.md.

A shard is a tar of samples `<key>.jpg` (the source JPEG's bytes) + `<key>.json` (the sample
record below); `manifest.json` beside the shards lists them with counts and checksums.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Optional

from . import storage
from .vocab import Vocabulary

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# Beside the manifest: each image's classes, what repeat-factor sampling is computed from.
IMAGE_CLASSES_NAME = "image_classes.json"
# No manifest is written when more of the listed images than this were skipped. Real releases lose
# an image or two (VG has a few unreadable ones); a wrong --images folder loses them all.
DEFAULT_MAX_SKIPPED_FRACTION = 0.02


@dataclass
class ClassCounts:
    """One prepared source's classes (maskx labels): images with the class, its objects, those with a mask."""
    source: str
    images: dict[int, int]
    instances: dict[int, int]
    masks: dict[int, int]


@dataclass
class ImageRecord:
    """One image to convert: where its JPEG is, and its annotations in shard form."""

    key: str
    source: str  # "coco" | "vg"
    image_id: int
    width: int
    height: int
    image_path: str
    annotations: list[dict]

    def sample_json(self) -> dict:
        return {
            "format": FORMAT_VERSION,
            "source": self.source,
            "image_id": self.image_id,
            "width": self.width,
            "height": self.height,
            "annotations": self.annotations,
        }


@dataclass
class Skipped:
    input: str
    reason: str


@dataclass
class SourceRecords:
    """What a reader found in a release's files: the images to convert and what it left out."""
    records: list[ImageRecord] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)  # annotations that are wrong
    missing: list[Skipped] = field(default_factory=list)  # listed images not found (or without image data)
    filtered: Counter = field(default_factory=Counter)  # VG objects the paper's filter leaves out: no error
    excluded_coco: int = 0  # VG images whose coco_id is in the excluded COCO split
    split_counts: dict[str, int] = field(default_factory=dict)  # VG: images in each of the paper's splits


@dataclass
class ShardEntry:
    url: str
    samples: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    format: int
    source: str
    shards: list[ShardEntry]
    counts: dict
    vocabulary: dict
    skipped: list[Skipped] = field(default_factory=list)
    # Its images' classes (`IMAGE_CLASSES_NAME`, relative like shard urls); None in manifests written
    # before maskx wrote it.
    image_classes: Optional[str] = None
    # Where the manifest was read from; shard urls are relative to its folder.
    location: Optional[str] = None

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def shard_urls(self) -> list[str]:
        return [self._resolve(s.url) for s in self.shards]

    def _resolve(self, url: str) -> str:
        return storage.resolve(storage.parent(self.location) if self.location else ".", url)

    def load_image_classes(self) -> dict[str, list[int]]:
        """Sample key -> the labels of its (non-crowd) objects, as `maskx prepare` wrote them."""
        return self._read_image_classes()["labels"]

    def load_class_counts(self) -> "ClassCounts":
        """Per class: its images, its objects, and those with a mask (non-crowd, as prepared)."""
        found = self._read_image_classes()
        if "instances" not in found:
            raise FileNotFoundError(f"manifest {self.location}: its {IMAGE_CLASSES_NAME} has no object counts "
                                    "(prepared by an older maskx); run the same `maskx prepare` again")
        images = Counter(label for labels in found["labels"].values() for label in labels)
        return ClassCounts(source=self.source, images=dict(images),
                           instances={int(k): v for k, v in found["instances"].items()},
                           masks={int(k): v for k, v in found["masks"].items()})

    def _read_image_classes(self) -> dict:
        if self.image_classes is None:
            raise FileNotFoundError(f"manifest {self.location}: lists no {IMAGE_CLASSES_NAME} (prepared by an older "
                                    "maskx); run the same `maskx prepare` again: complete shards are kept")
        return json.loads(storage.read_bytes(self._resolve(self.image_classes)))

    def vocab(self) -> Vocabulary:
        return Vocabulary.from_json(self.vocabulary)

    def to_json(self) -> dict:
        obj = asdict(self)
        obj.pop("location")
        return obj


def rle_to_json(rle: dict) -> dict:
    """pycocotools' compressed RLE (`counts` bytes) -> the shard record's (`counts` an ASCII string)."""
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def rle_from_json(rle: dict) -> dict:
    """A shard record's RLE -> what pycocotools' decode, area and toBbox take."""
    return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}


def save_manifest(manifest: Manifest) -> None:
    storage.write_bytes(manifest.location, json.dumps(manifest.to_json(), indent=1).encode())


def manifest_url(url: str) -> str:
    """Accept the manifest itself or the folder that holds it."""
    return url if url.endswith(".json") else storage.join(url, MANIFEST_NAME)


def load_manifest(url) -> Manifest:
    url = manifest_url(str(url))
    try:
        obj = json.loads(storage.read_bytes(url))
    except FileNotFoundError:
        raise FileNotFoundError(f"manifest {url}: not found (run `maskx prepare` first?)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"manifest {url}: not valid JSON ({exc})") from None
    if obj.get("format") != FORMAT_VERSION:
        raise ValueError(f"manifest {url}: format {obj.get('format')!r}, this maskx reads format {FORMAT_VERSION}")
    return Manifest(
        format=obj["format"], source=obj["source"], shards=[ShardEntry(**s) for s in obj["shards"]],
        counts=obj["counts"], vocabulary=obj["vocabulary"], skipped=[Skipped(**s) for s in obj["skipped"]],
        image_classes=obj.get("image_classes"), location=url,
    )
