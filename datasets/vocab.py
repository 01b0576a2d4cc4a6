"""One class vocabulary over COCO and Visual Genome, with the named class sets of the paper.

Label 0 is background; class i of `Vocabulary.classes` has label i + 1. COCO categories come
first (in category-id order), then the K most frequent VG synsets that are not a COCO category.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional

# The 20 PASCAL VOC classes as COCO category ids: set A of the paper's voc -> non-voc split.
VOC_COCO_IDS = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72})

# VG synsets that mean a COCO category but whose lemma is not the COCO name (Hu et al. 2018
# match by name and map a handful by hand). Lemma matches (dog.n.01 -> dog) need no entry.
SYNSET_TO_COCO_NAME = {
    "person.n.01": "person", "man.n.01": "person", "woman.n.01": "person", "child.n.01": "person",
    "boy.n.01": "person", "girl.n.01": "person", "guy.n.01": "person", "lady.n.01": "person",
    "people.n.01": "person", "player.n.01": "person", "skier.n.01": "person",
    "bicycle.n.01": "bicycle", "bike.n.01": "bicycle",
    "car.n.01": "car", "motorcycle.n.01": "motorcycle", "airplane.n.01": "airplane", "plane.n.01": "airplane",
    "bus.n.01": "bus", "train.n.01": "train", "truck.n.01": "truck", "boat.n.01": "boat",
    "traffic_light.n.01": "traffic light", "fireplug.n.01": "fire hydrant", "stop_sign.n.01": "stop sign",
    "parking_meter.n.01": "parking meter", "bench.n.01": "bench",
    "television.n.01": "tv", "television_receiver.n.01": "tv", "tv.n.01": "tv",
    "laptop.n.01": "laptop", "mouse.n.04": "mouse", "remote_control.n.01": "remote", "remote.n.01": "remote",
    "keyboard.n.01": "keyboard", "cellular_telephone.n.01": "cell phone", "phone.n.01": "cell phone",
    "microwave.n.02": "microwave", "oven.n.01": "oven", "toaster.n.02": "toaster", "sink.n.01": "sink",
    "refrigerator.n.01": "refrigerator", "book.n.01": "book", "book.n.02": "book", "clock.n.01": "clock",
    "vase.n.01": "vase", "scissors.n.01": "scissors", "teddy.n.01": "teddy bear", "hair_dryer.n.01": "hair drier",
    "toothbrush.n.01": "toothbrush", "wineglass.n.01": "wine glass", "glass.n.02": "wine glass",
    "cup.n.01": "cup", "fork.n.01": "fork", "knife.n.01": "knife", "spoon.n.01": "spoon", "bowl.n.01": "bowl",
    "banana.n.02": "banana", "apple.n.01": "apple", "sandwich.n.01": "sandwich", "orange.n.01": "orange",
    "broccoli.n.02": "broccoli", "carrot.n.03": "carrot", "frank.n.02": "hot dog", "hotdog.n.02": "hot dog",
    "pizza.n.01": "pizza", "doughnut.n.02": "donut", "cake.n.03": "cake", "chair.n.01": "chair",
    "sofa.n.01": "couch", "couch.n.01": "couch", "pot.n.04": "potted plant", "plant.n.02": "potted plant",
    "bed.n.01": "bed", "dining_table.n.01": "dining table", "table.n.02": "dining table",
    "toilet.n.02": "toilet", "toilet.n.01": "toilet",
    "bird.n.01": "bird", "cat.n.01": "cat", "dog.n.01": "dog", "horse.n.01": "horse", "sheep.n.01": "sheep",
    "cow.n.01": "cow", "elephant.n.01": "elephant", "bear.n.01": "bear", "zebra.n.01": "zebra",
    "giraffe.n.01": "giraffe", "backpack.n.01": "backpack", "umbrella.n.01": "umbrella",
    "bag.n.04": "handbag", "handbag.n.01": "handbag", "necktie.n.01": "tie", "tie.n.01": "tie",
    "bag.n.06": "suitcase", "suitcase.n.01": "suitcase", "frisbee.n.01": "frisbee", "ski.n.01": "skis",
    "snowboard.n.01": "snowboard", "ball.n.01": "sports ball", "kite.n.03": "kite", "kite.n.01": "kite",
    "baseball_bat.n.01": "baseball bat", "baseball_glove.n.01": "baseball glove", "glove.n.02": "baseball glove",
    "skateboard.n.01": "skateboard", "surfboard.n.01": "surfboard", "tennis_racket.n.01": "tennis racket",
    "racket.n.04": "tennis racket", "bottle.n.01": "bottle",
}


@dataclass
class VocabClass:
    name: str
    coco_id: Optional[int] = None
    # VG synsets that map to this class (the class's own for VG classes, merged ones for COCO).
    vg_synsets: list[str] = field(default_factory=list)


@dataclass
class Vocabulary:
    classes: list[VocabClass]

    def __post_init__(self):
        self._label_by_name = {c.name: i + 1 for i, c in enumerate(self.classes)}
        self._label_by_synset = {s: i + 1 for i, c in enumerate(self.classes) for s in c.vg_synsets}
        if len(self._label_by_name) != len(self.classes):
            raise ValueError("vocabulary: class names must be unique")

    @property
    def num_classes(self) -> int:
        """Including background."""
        return len(self.classes) + 1

    def label(self, name: str) -> Optional[int]:
        return self._label_by_name.get(name)

    def label_of_synset(self, synset: str) -> Optional[int]:
        return self._label_by_synset.get(synset)

    def name(self, label: int) -> str:
        return "background" if label == 0 else self.classes[label - 1].name

    def class_set(self, set_name: str) -> list[int]:
        """Labels of a named set: coco, voc, nonvoc, vg (VG classes that are not COCO), all."""
        sets = {
            "all": lambda c: True,
            "coco": lambda c: c.coco_id is not None,
            "voc": lambda c: c.coco_id in VOC_COCO_IDS,
            "nonvoc": lambda c: c.coco_id is not None and c.coco_id not in VOC_COCO_IDS,
            "vg": lambda c: c.coco_id is None,
        }
        if set_name not in sets:
            raise ValueError(f"class set {set_name!r} is not one of {', '.join(sets)}")
        return [i + 1 for i, c in enumerate(self.classes) if sets[set_name](c)]

    def resolve_sets(self, set_names: Iterable[str]) -> list[int]:
        return sorted({label for s in set_names for label in self.class_set(s)})

    def to_json(self) -> dict:
        return {"classes": [asdict(c) for c in self.classes]}

    def require_same(self, other: "Vocabulary", what: str, than: str) -> None:
        """Shards, a model and a run must share one vocabulary (a label means one class everywhere):
        raise "WHAT was prepared with another vocabulary than THAN" when `other` is not this one."""
        if other.to_json() != self.to_json():
            raise ValueError(f"{what} was prepared with another vocabulary than {than}")

    @classmethod
    def from_json(cls, obj: dict) -> "Vocabulary":
        return cls([VocabClass(**c) for c in obj["classes"]])

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)

    @classmethod
    def load(cls, path: str) -> "Vocabulary":
        with open(path) as f:
            return cls.from_json(json.load(f))


def _coco_name_of_synset(synset: str, coco_names: set[str]) -> Optional[str]:
    if synset in SYNSET_TO_COCO_NAME and SYNSET_TO_COCO_NAME[synset] in coco_names:
        return SYNSET_TO_COCO_NAME[synset]
    lemma = synset.split(".")[0].replace("_", " ")
    return lemma if lemma in coco_names else None


def single_synset_counts(vg_objects: Iterable[dict]) -> Counter:
    """Object counts per synset over VG's objects.json entries, keeping objects with exactly one synset."""
    counts: Counter = Counter()
    for image in vg_objects:
        for obj in image.get("objects", []):
            synsets = obj.get("synsets") or []
            if len(synsets) == 1:
                counts[synsets[0]] += 1
    return counts


def build_vocabulary(
    coco_categories: list[dict], vg_synset_counts: Optional[Counter] = None, vg_classes: int = 3000
) -> Vocabulary:
    """COCO's categories, then the `vg_classes` most frequent VG synsets; synsets meaning a COCO
    category are merged into it instead of becoming classes of their own."""
    classes = [VocabClass(c["name"], coco_id=int(c["id"])) for c in sorted(coco_categories, key=lambda c: c["id"])]
    by_name = {c.name: c for c in classes}
    vg_only: list[VocabClass] = []
    # Ties broken by synset name so the vocabulary is deterministic.
    for synset, _ in sorted((vg_synset_counts or Counter()).items(), key=lambda kv: (-kv[1], kv[0])):
        coco_name = _coco_name_of_synset(synset, set(by_name))
        if coco_name is not None:
            by_name[coco_name].vg_synsets.append(synset)
        elif len(vg_only) < vg_classes:
            vg_only.append(VocabClass(synset, vg_synsets=[synset]))
    return Vocabulary(classes + vg_only)


# COCO 2017's 80 categories (id, name): the default COCO side when no annotation file is given.
COCO_CATEGORIES = [
    {"id": i, "name": n} for i, n in [
        (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
        (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
        (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
        (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
        (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
        (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
        (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
        (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
        (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
        (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
        (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
        (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
        (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
        (89, "hair drier"), (90, "toothbrush"),
    ]
]
