"""A training run's folder: the one module that names, writes and reads the files in it.

    <checkpoint.storage_path>/<run name>/       a local folder or s3://
        mlflow_run.json                         the run's MLflow run id, written when the run starts
        checkpoint_00001000/                    every checkpoint.every iterations (Ray Train keeps
                                                checkpoint.num_to_keep of them)
            state.pt                            weights, optimizer, scheduler, iteration, the data
                                                position of every canonical partition (merged from
                                                all ranks), the data plan, RNG
            config.yaml                         the resolved config
            vocab.json                          the shards' class vocabulary
            eval.json                           metrics and per-class AP, when it evaluated there
            unsent_metrics.json                 metric values MLflow could not take yet (last one only)
            complete.json                       written last: the size and sha256 of every file above
        best_00000800/                          with checkpoint.keep_best: the model of the best
                                                evaluation so far (state.pt holds its weights and
                                                iteration; config, vocabulary, eval.json, complete.json)
        best.json                               which best_* folder that is, by which metric, its value

A checkpoint is complete when its complete.json is there and every file it lists has the size and
checksum it records; resuming (`--resume` or Ray's restart after a failure) continues from the newest
complete checkpoint in the folder itself, whatever Ray's own record says (its snapshot can lag the
folders on storage when the driver dies). complete.json is written last on the worker's disk, but
Ray's upload copies a folder's files in parallel: on storage it can arrive before state.pt, and a
host cut off mid-upload leaves it beside a missing file. Such a checkpoint never finished; one whose
files are there but wrong was finished and then damaged.

A logged MLflow model carries config.yaml, vocab.json and weights.pt (the state dict alone, which
loads with `torch.load(weights_only=True)`) as its artifact `model_files/` (`extra_files/` in models
logged by a maskx before the pyfunc).

Functions here take the bare model, never its DistributedDataParallel wrapper (whose state dict
names every tensor `module.*`).
"""
from __future__ import annotations

import json
import logging
import os
import random
import secrets
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from torch import nn

from maskx.datasets import storage
from maskx.datasets.partitions import DataPlan, StreamPosition
from maskx.datasets.vocab import Vocabulary

from .config import TrainConfig, load_config

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
VOCAB_FILE = "vocab.json"
EVAL_FILE = "eval.json"
UNSENT_METRICS_FILE = "unsent_metrics.json"
WEIGHTS_FILE = "weights.pt"
MLFLOW_RUN_FILE = "mlflow_run.json"
RECORD_WAIT_S = 5.0  # how long a claim record read empty is waited for (see read_mlflow_run)
COMPLETE_FILE = "complete.json"
CHECKPOINT_PREFIX = "checkpoint_"
BEST_FILE = "best.json"


def run_folder(storage_path: str, run_name: str) -> str:
    return storage.join(storage_path, run_name)


def checkpoint_name(iteration: int) -> str:
    return f"{CHECKPOINT_PREFIX}{iteration:08d}"


def checkpoint_iteration(name: str) -> Optional[int]:
    """The iteration a checkpoint folder's name says, or None for another name."""
    digits = name[len(CHECKPOINT_PREFIX):]
    return int(digits) if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else None


def read_mlflow_run(folder: str) -> Optional[str]:
    """The MLflow run id recorded in a run folder, or None for a run that never started."""
    record = storage.join(folder, MLFLOW_RUN_FILE)
    if storage.stat(record) is None:
        return None
    payload = storage.read_bytes(record)
    # Where the filesystem cannot hard-link (FUSE), the claim is created empty and written an instant later.
    deadline = time.monotonic() + RECORD_WAIT_S
    while not payload and time.monotonic() < deadline:
        time.sleep(0.05)
        payload = storage.read_bytes(record)
    return json.loads(payload)["run_id"]


def write_mlflow_run(folder: str, run_id: str, redacted_tracking_uri: str) -> None:
    """Claim the run folder for MLflow run `run_id`: created exclusively, so two drivers starting one
    run name at once cannot both log into it (the second gets FileExistsError)."""
    record = storage.join(folder, MLFLOW_RUN_FILE)
    if not storage.create_exclusive(record, json.dumps({"run_id": run_id, "tracking_uri": redacted_tracking_uri}).encode()):
        raise FileExistsError(f"run folder {folder}: another driver started a run in it just now "
                              f"(MLflow run {read_mlflow_run(folder)}); this one ({run_id}) stops")


def new_run_name(config_name: str) -> str:
    """A generated run name: the config's, the UTC start time, and a random part, so that two runs
    started in the same second (a sweep, two users, a retried job) never share a folder."""
    return f"{config_name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


@dataclass
class TrainState:
    """What a checkpoint holds besides the weights: where training and the data stream stand, the
    run's data plan (global batch, partitions) and the world size that wrote it."""
    iteration: int = 0
    position: StreamPosition = field(default_factory=StreamPosition)
    plan: Optional[DataPlan] = None
    world_size: int = 1


def checkpoint_contents(model: nn.Module, optimizer, scheduler, state: TrainState) -> dict:
    """Everything needed to continue exactly: weights, solver, iteration, the data position of every
    partition (`state.position` merged over the ranks), RNG.

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
    url = storage.join(folder, best.folder_name)
    if not storage.is_s3(url):
        return url
    for name in storage.list_folder(url)[1]:
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


def restore(contents: dict, model: nn.Module, optimizer=None, scheduler=None) -> TrainState:
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


MODEL_FILES_ARTIFACT = "model_files"  # the pyfunc artifact: config, vocabulary, weights


def model_files(checkpoint_folder: str, model: nn.Module, out_folder: str) -> str:
    """`out_folder` filled with what a logged model carries: the checkpoint's config and vocabulary,
    and the weights alone (a state dict that loads with weights_only=True)."""
    import shutil

    os.makedirs(out_folder, exist_ok=True)
    for name in (CONFIG_FILE, VOCAB_FILE):
        shutil.copy(os.path.join(checkpoint_folder, name), os.path.join(out_folder, name))
    torch.save(model.state_dict(), os.path.join(out_folder, WEIGHTS_FILE))
    return out_folder


def logged_model_files(model_folder: str, source: str) -> str:
    """The folder with config, vocabulary and weights inside a downloaded MLflow model: the pyfunc
    model's `artifacts/model_files`, or `extra_files` of the pytorch-flavor models maskx logged before."""
    import yaml

    candidates = [os.path.join(model_folder, "extra_files")]
    mlmodel = os.path.join(model_folder, "MLmodel")
    if os.path.exists(mlmodel):
        with open(mlmodel) as f:
            artifacts = (yaml.safe_load(f).get("flavors", {}).get("python_function", {}).get("artifacts") or {})
        if MODEL_FILES_ARTIFACT in artifacts:
            candidates.insert(0, os.path.join(model_folder, artifacts[MODEL_FILES_ARTIFACT]["path"]))
    for folder in candidates:
        if os.path.exists(os.path.join(folder, WEIGHTS_FILE)):
            return folder
    raise ValueError(f"model {source}: no {MODEL_FILES_ARTIFACT}/{WEIGHTS_FILE} to load safely; if you trust its "
                     "source, load it with mlflow.pytorch.load_model (unpickling runs code)")


def load_weights(folder: str) -> dict:
    """The state dict of a logged model's files, with weights_only=True (no unpickling)."""
    return torch.load(os.path.join(folder, WEIGHTS_FILE), map_location="cpu", weights_only=True)


class UnfinishedCheckpoint(ValueError):
    """A checkpoint cut off before all its files were written: no complete.json, or a file it lists
    is not there."""


def resume_state(folder: str, offered: Optional[str] = None) -> Optional[tuple[str, dict]]:
    """(checkpoint url, its state) of the newest complete checkpoint in the run folder `folder` (a
    local folder or s3://), or None when it holds no checkpoint yet (a new run) or only ones that never
    finished (the run starts over, with a warning naming them). `offered` is the checkpoint Ray would
    restore, named in the log. Checkpoints that are unfinished or damaged (a file of the wrong size or
    checksum, or unreadable) are passed over with a warning; a folder whose checkpoints are all
    unusable and one of them damaged is an error listing them, never a silent start from scratch."""
    names = sorted((n for n in storage.list_folder(folder)[0] if checkpoint_iteration(n) is not None),
                   key=checkpoint_iteration, reverse=True)
    # A folder with no completion record at all was written by a maskx from before them.
    legacy = not any(storage.stat(storage.join(storage.join(folder, name), COMPLETE_FILE)) for name in names)
    problems, damaged = [], False
    for name in names:
        url = storage.join(folder, name)
        try:
            state = load_complete_state(url, legacy)
        except (ValueError, OSError) as exc:
            problems.append(f"{name}: {exc}")
            damaged = damaged or not isinstance(exc, UnfinishedCheckpoint)
            log.warning("checkpoint %s passed over: %s", url, exc)
            continue
        offered_name = os.path.basename(offered.rstrip("/")) if offered else None
        why = "the newest complete checkpoint in the run folder"
        if offered_name != name:
            why += f"; Ray offered {offered_name or 'none'}"
        if problems:
            why += f"; passed over {len(problems)} newer"
        log.info("resuming from %s (iteration %d): %s", url, state["iteration"], why)
        return url, state
    if names and damaged:
        raise ValueError(f"run folder {folder}: none of its {len(names)} checkpoints is complete and readable ("
                         + "; ".join(problems) + "); refusing to start the run over")
    if names:
        log.warning("run folder %s: none of its %d checkpoints finished (%s); the run starts over", folder,
                    len(names), "; ".join(problems))
    return None


def load_complete_state(url: str, legacy: bool = False) -> dict:
    """The state of a checkpoint folder (local or s3://) once its files match its complete.json; with
    `legacy` (a run from before completion records), once its state.pt loads whole (torch's zip
    format does not load once truncated)."""
    record_path = storage.join(url, COMPLETE_FILE)
    record = json.loads(storage.read_bytes(record_path)) if storage.stat(record_path) else None
    if record is None and not legacy:
        raise UnfinishedCheckpoint(f"no {COMPLETE_FILE}: cut off before it was complete")
    for name, expected in (record or {"files": {}})["files"].items():
        found = storage.stat(storage.join(url, name))
        if found is None:
            raise UnfinishedCheckpoint(f"{name} is missing ({COMPLETE_FILE} lists it)")
        if found[0] < expected["bytes"]:  # an upload cut off (or still going): never finished, not damaged
            raise UnfinishedCheckpoint(f"{name} is {found[0]} bytes, {COMPLETE_FILE} says {expected['bytes']}: "
                                       "cut off before it was whole")
        if found[0] != expected["bytes"]:
            raise ValueError(f"{name} is {found[0]} bytes, {COMPLETE_FILE} says {expected['bytes']}")
    with tempfile.TemporaryDirectory(prefix="maskx-checkpoint-") as scratch:
        local = url
        if storage.is_s3(url):
            local = scratch
            storage.write_bytes(os.path.join(scratch, STATE_FILE), storage.read_bytes(storage.join(url, STATE_FILE)))
        if record is not None and storage.file_sha256(os.path.join(local, STATE_FILE)) != record["files"][STATE_FILE]["sha256"]:
            raise ValueError(f"{STATE_FILE} does not match its checksum in {COMPLETE_FILE}")
        state = load_state(local)
    if record is None:
        log.warning("checkpoint %s has no %s (an older maskx wrote it); using it since its %s loads", url,
                    COMPLETE_FILE, STATE_FILE)
    return state
