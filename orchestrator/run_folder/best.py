"""`best.json` and the `best_<iteration>/` folder it names: the best model of a run by
`checkpoint.keep_best`."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from typing import Optional

from maskx.datasets import storage
from maskx.datasets.vocab import Vocabulary

from .checkpoint import local_checkpoint, write_checkpoint
from .layout import BEST_FILE


@dataclass(frozen=True)
class BestModel:
    """`best.json`: the run's best evaluation so far by `checkpoint.keep_best` (higher is better)."""
    iteration: int
    metric: str
    value: float

    @property
    def folder_name(self) -> str:
        return f"best_{self.iteration:08d}"


def write_best(folder: str, best: BestModel, *, weights: dict, config_yaml: str, vocab: Vocabulary,
               evaluation: dict) -> None:
    """The model of the best evaluation into `<run folder>/best_<iteration>/`, then `best.json` naming
    it, then the previous best's folder removed: a crash at any point leaves best.json naming a whole
    folder. The folder loads as a checkpoint does (`maskx eval --model`, `model.init_from`), but holds no
    solver state: runs resume from checkpoints, not from it."""
    previous = read_best(folder)
    target = storage.join(folder, best.folder_name)
    with tempfile.TemporaryDirectory(prefix="maskx-best-") as local:
        write_checkpoint(local, {"model": weights, "iteration": best.iteration}, config_yaml, vocab, evaluation)
        for name in sorted(os.listdir(local)):
            storage.put_file(os.path.join(local, name), storage.join(target, name))
    storage.write_bytes(storage.join(folder, BEST_FILE), json.dumps(asdict(best)).encode())
    if previous is not None and previous.folder_name != best.folder_name:
        storage.remove_folder(storage.join(folder, previous.folder_name))


def read_best(folder: str) -> Optional[BestModel]:
    """The best model recorded in a run folder (local or s3://), or None before its first evaluation."""
    record = storage.join(folder, BEST_FILE)
    if storage.stat(record) is None:
        return None
    return BestModel(**json.loads(storage.read_bytes(record)))


def local_best(folder: str, best: BestModel, scratch: str) -> str:
    """A local folder holding the best model's files: its own where the run folder is local, else a
    copy in `scratch`."""
    return local_checkpoint(storage.join(folder, best.folder_name), scratch)
