"""Which checkpoint a run continues from: the newest complete one in its folder, local or S3."""
from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Optional

from maskx.datasets import storage

from .checkpoint import load_state
from .layout import COMPLETE_FILE, STATE_FILE, checkpoint_iteration

log = logging.getLogger(__name__)


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
