"""One class vocabulary over COCO and Visual Genome, with the named class sets of the paper.

Label 0 is background; class i of `Vocabulary.classes` has label i + 1. The paper's joint list:
COCO categories first (in category-id order), each aligned to one VG synset, then the rest of the K
most frequent VG synsets, sorted by name (`build_vocabulary`).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional, Union

# The 20 PASCAL VOC classes as COCO category ids: set A of the paper's voc -> non-voc split.
VOC_COCO_IDS = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72})
# The named class sets `data.mask_sets` takes besides class names and labels.
CLASS_SETS = {
    "all": lambda c: True,
    "coco": lambda c: c.coco_id is not None,
    "voc": lambda c: c.coco_id in VOC_COCO_IDS,
    "nonvoc": lambda c: c.coco_id is not None and c.coco_id not in VOC_COCO_IDS,
    "vg": lambda c: c.coco_id is None,
}

# COCO classes whose VG synset the paper names by hand (`step_2_build_vg3k_cocoaligned_json.py` of
# ronghanghu/seg_every_thing); each other COCO class takes the most frequent kept synset whose
# cleaned name ("traffic_light.n.01" -> "traffic light") is the class's name.
COCO_TO_VG_SYNSET_BY_HAND = {
    "cell phone": "cellular_telephone.n.01", "couch": "sofa.n.01", "dining table": "dinner_table.n.01",
    "donut": "doughnut.n.02", "fire hydrant": "water_faucet.n.01", "hair drier": "hand_blower.n.01",
    "handbag": "bag.n.04", "hot dog": "hotdog.n.01", "orange": "orange.n.01", "potted plant": "plant.n.01",
    "remote": "remote_control.n.01", "skis": "ski.n.01", "sports ball": "ball.n.01", "stop sign": "sign.n.02",
    "suitcase": "bag.n.06", "teddy bear": "teddy.n.01", "tv": "television.n.01", "wine glass": "wineglass.n.01",
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
    # COCO class -> the VG synset the paper aligns it to, for those whose synset was not among the kept
    # VG classes (None: no VG synset has its name): their VG objects are left out, as in the paper.
    coco_targets_not_kept: dict[str, Optional[str]] = field(default_factory=dict)

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
        if set_name not in CLASS_SETS:
            raise ValueError(f"class set {set_name!r} is not one of {', '.join(CLASS_SETS)}")
        return [i + 1 for i, c in enumerate(self.classes) if CLASS_SETS[set_name](c)]

    def resolve_sets(self, entries: Iterable[Union[str, int]]) -> list[int]:
        """The labels of `entries`, each a named set (`class_set`), a class name or a label: a split can
        name whole sets (voc) or exactly the classes it holds out (a disjoint split of families)."""
        labels = set()
        for entry in entries:
            if isinstance(entry, int):
                if not 1 <= entry < self.num_classes:
                    raise ValueError(f"label {entry} is not a class of this vocabulary (1..{self.num_classes - 1})")
                labels.add(entry)
            elif entry in CLASS_SETS:
                labels.update(self.class_set(entry))
            elif self.label(entry) is not None:
                labels.add(self.label(entry))
            else:
                raise ValueError(f"{entry!r} is neither a class set ({', '.join(CLASS_SETS)}), a class name of this "
                                 "vocabulary nor a label")
        return sorted(labels)

    def to_json(self) -> dict:
        saved: dict = {"classes": [asdict(c) for c in self.classes]}
        if self.coco_targets_not_kept:  # absent from files written before the paper's rule
            saved["coco_targets_not_kept"] = self.coco_targets_not_kept
        return saved

    def require_same(self, other: "Vocabulary", what: str, than: str) -> None:
        """Shards, a model and a run must share one vocabulary (a label means one class everywhere):
        raise "WHAT was prepared with another vocabulary than THAN" when `other` is not this one."""
        if other.to_json()["classes"] != self.to_json()["classes"]:
            raise ValueError(f"{what} was prepared with another vocabulary than {than}")

    @classmethod
    def from_json(cls, obj: dict) -> "Vocabulary":
        return cls([VocabClass(**c) for c in obj["classes"]], dict(obj.get("coco_targets_not_kept", {})))

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)

    @classmethod
    def load(cls, path: str) -> "Vocabulary":
        with open(path) as f:
            return cls.from_json(json.load(f))


def synset_counts(vg_objects: Iterable[dict]) -> Counter:
    """Object counts per synset over VG's objects.json entries: every synset of every object, as
    the paper counts (an object with two synsets counts for both, though no class will keep it)."""
    counts: Counter = Counter()
    for image in vg_objects:
        for obj in image.get("objects", []):
            counts.update(obj.get("synsets") or [])
    return counts


def cleaned_name(synset: str) -> str:
    """"traffic_light.n.01" -> "traffic light": a synset's lemma as COCO would name it."""
    return synset.rsplit(".", 2)[0].replace("_", " ")


def build_vocabulary(
    coco_categories: list[dict], vg_synset_counts: Optional[Counter] = None, vg_classes: int = 3000
) -> Vocabulary:
    """The paper's joint vocabulary (`step_1`/`step_2` of the official VG-3k scripts): the
    `vg_classes` most frequent VG synsets are kept; each COCO class is aligned to one synset (by
    hand, else the most frequent kept synset with its name); the classes are COCO's, in category-id
    order, then the other kept synsets sorted by name. With every COCO class aligned to a kept
    synset that is `vg_classes` classes. Ties in frequency go to the synset name that sorts first
    (the paper's Counter kept first-seen order), so the vocabulary does not depend on file order."""
    coco = sorted(coco_categories, key=lambda c: c["id"])
    ranked = [synset for synset, _ in sorted((vg_synset_counts or Counter()).items(), key=lambda kv: (-kv[1], kv[0]))]
    kept = ranked[:vg_classes]
    most_frequent_by_name: dict[str, str] = {}
    for synset in ranked:  # most frequent first: the first synset of a name is the one it means
        most_frequent_by_name.setdefault(cleaned_name(synset), synset)
    kept_set = set(kept)
    classes, not_kept = [], {}
    for category in coco:
        name = category["name"]
        # The most frequent synset of a name is kept whenever any synset of that name is: the
        # paper's match among the kept ones, and for the others the synset a larger K would keep.
        target = COCO_TO_VG_SYNSET_BY_HAND.get(name) or most_frequent_by_name.get(name)
        if vg_synset_counts is not None and target not in kept_set:
            not_kept[name] = target
        classes.append(VocabClass(name, coco_id=int(category["id"]),
                                  vg_synsets=[target] if target in kept_set else []))
    aligned = {c.vg_synsets[0] for c in classes if c.vg_synsets}
    classes += [VocabClass(synset, vg_synsets=[synset]) for synset in sorted(kept_set - aligned)]
    return Vocabulary(classes, not_kept)


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
