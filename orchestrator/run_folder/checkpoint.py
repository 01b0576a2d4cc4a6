"""One checkpoint folder: what it holds (`TrainState`, the state dict), written whole with
`complete.json` last, read back, restored into a model and its solver."""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from maskx.datasets import storage
from maskx.datasets.partitions import DataPlan, StreamPosition
from maskx.datasets.vocab import Vocabulary

from ..config import TrainConfig, load_config
from .layout import COMPLETE_FILE, CONFIG_FILE, EVAL_FILE, STATE_FILE, UNSENT_METRICS_FILE, VOCAB_FILE


@dataclass
class TrainState:
    """What a checkpoint holds besides the weights: where training and the data stream stand, the
    run's data plan (global batch, partitions) and the world size that wrote it."""
    iteration: int = 0
    position: StreamPosition = field(default_factory=StreamPosition)
    plan: Optional[DataPlan] = None
    world_size: int = 1


def checkpoint_contents(model: nn.Module, optimizer, scheduler, state: TrainState, scaler=None) -> dict:
    """Everything needed to continue exactly: weights, solver (with float16's gradient scaler), iteration,
    the data position of every partition (`state.position` merged over the ranks), RNG.

    Plain tensors, numbers, strings, lists and dicts only, so it loads with `torch.load(weights_only=True)`."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "iteration": state.iteration,
        "data_position": state.position.to_json(),
        "data_plan": vars(state.plan) if state.plan else None,
        "world_size": state.world_size,
        "rng": {"torch": torch.get_rng_state(), "python": _python_rng_to_lists(random.getstate())},
        "grad_scaler": scaler.state_dict() if scaler is not None else None,
    }


def save_state(contents: dict, folder: str) -> str:
    """Write `state.pt` into `folder` atomically: a crash never leaves a half file under the final name."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, STATE_FILE)
    partial = path + ".partial"
    torch.save(contents, partial)
    os.replace(partial, path)
    return path


def write_checkpoint(folder: str, contents: dict, config_yaml: str, vocab: Vocabulary,
                     evaluation: Optional[dict] = None, unsent_metrics: list = ()) -> None:
    """A whole checkpoint folder: state, config, vocabulary, and the evaluation and unsent metrics if any."""
    save_state(contents, folder)
    with open(os.path.join(folder, CONFIG_FILE), "w") as f:
        f.write(config_yaml)
    vocab.save(os.path.join(folder, VOCAB_FILE))
    if unsent_metrics:
        with open(os.path.join(folder, UNSENT_METRICS_FILE), "w") as f:
            json.dump(list(unsent_metrics), f)
    if evaluation:
        with open(os.path.join(folder, EVAL_FILE), "w") as f:
            json.dump(evaluation, f, indent=1)
    # Last, and covering every other file: the upload to storage may copy files in any order.
    files = {name: {"bytes": os.path.getsize(os.path.join(folder, name)), "sha256": storage.file_sha256(os.path.join(folder, name))}
             for name in sorted(os.listdir(folder))}
    with open(os.path.join(folder, COMPLETE_FILE), "w") as f:
        json.dump({"iteration": contents["iteration"], "files": files}, f, indent=1)


def write_checkpoint_to_scratch(contents: dict, config_yaml: str, vocab: Vocabulary, evaluation: Optional[dict] = None,
                                unsent_metrics: list = ()) -> str:
    """`write_checkpoint` into a new temporary folder, returned; removed again if the write fails
    (a full disk must not also fill /tmp with half checkpoints, one per retry)."""
    folder = tempfile.mkdtemp(prefix="maskx-checkpoint-")
    try:
        write_checkpoint(folder, contents, config_yaml, vocab, evaluation, unsent_metrics)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def local_checkpoint(url: str, scratch: str) -> str:
    """A local folder holding the files of checkpoint folder `url`: `url` itself where it is local,
    else a copy of them in `scratch`."""
    if not storage.is_s3(url):
        return url
    names = storage.list_folder(url)[1]
    if STATE_FILE not in names:
        raise FileNotFoundError(f"checkpoint {url}: no {STATE_FILE} in it")
    for name in names:
        storage.write_bytes(os.path.join(scratch, name), storage.read_bytes(storage.join(url, name)))
    return scratch


def load_state(folder: str) -> dict:
    path = os.path.join(folder, STATE_FILE)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {folder}: no {STATE_FILE} in it") from None
    except Exception as exc:  # a truncated or foreign file: say which and why
        raise ValueError(f"checkpoint {path}: unreadable ({type(exc).__name__}: {exc})") from None


def restore(contents: dict, model: nn.Module, optimizer=None, scheduler=None, scaler=None) -> TrainState:
    model.load_state_dict(contents["model"])
    if optimizer is not None:
        saved_groups = len(contents["optimizer"]["param_groups"])
        if saved_groups != len(optimizer.param_groups):
            raise ValueError(f"checkpoint: its optimizer has {saved_groups} parameter groups, this maskx builds "
                             f"{len(optimizer.param_groups)} (biases got their own group, at solver.bias_lr_factor "
                             "x lr, on 2026-12-07); it cannot continue exactly. Start a new run, with "
                             "model.init_from to keep its weights")
        optimizer.load_state_dict(contents["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(contents["scheduler"])
    if scaler is not None and contents.get("grad_scaler"):  # none in a bf16 or float32 run's checkpoints
        scaler.load_state_dict(contents["grad_scaler"])
    torch.set_rng_state(contents["rng"]["torch"])
    random.setstate(_python_rng_from_lists(contents["rng"]["python"]))
    if "positions" in contents:
        raise ValueError("checkpoint: written by a maskx older than elastic data positions (per-rank positions); "
                         "it cannot continue exactly. Start a new run, with model.init_from to keep its weights")
    plan = contents.get("data_plan")
    return TrainState(iteration=contents["iteration"], position=StreamPosition.from_json(contents["data_position"]),
                      plan=DataPlan(**plan) if plan else None, world_size=contents.get("world_size", 1))


def _python_rng_to_lists(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_rng_from_lists(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def read_evaluation(folder: str) -> Optional[dict]:
    """`{"metrics": ..., "per_class_ap": ...}` of a checkpoint that evaluated, else None."""
    path = eval_path(folder)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def eval_path(folder: str) -> str:
    return os.path.join(folder, EVAL_FILE)


def read_unsent_metrics(folder: str) -> list[dict]:
    path = os.path.join(folder, UNSENT_METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def read_config_and_vocab(folder: str) -> tuple[TrainConfig, Vocabulary]:
    """The config and vocabulary a checkpoint folder or a logged model's extra files hold."""
    return load_config(os.path.join(folder, CONFIG_FILE)), Vocabulary.load(os.path.join(folder, VOCAB_FILE))
