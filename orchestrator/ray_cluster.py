"""The one way maskx connects to Ray, and Ray tasks for work that outgrows one machine (converting
full COCO/VG to shards)."""
from __future__ import annotations

import os
from typing import Callable, Iterator


def connect(log_to_driver: bool = True) -> None:
    """Join the cluster at $RAY_ADDRESS (what `ray job submit` and `ray start` set), or start a local
    Ray instance; nothing when this process is connected already."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=log_to_driver)


def ray_map(fn: Callable, tasks: list) -> Iterator:
    """fn over tasks as Ray tasks on the connected (or a new local) cluster, results in order."""
    import ray

    connect(log_to_driver=False)
    remote = ray.remote(num_cpus=1)(fn)
    refs = [remote.remote(task) for task in tasks]
    for ref in refs:
        yield ray.get(ref)
