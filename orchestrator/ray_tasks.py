"""Ray tasks for work that outgrows one machine, such as converting full COCO/VG to shards."""
from __future__ import annotations

from typing import Callable, Iterator


def ray_map(fn: Callable, tasks: list) -> Iterator:
    """fn over tasks as Ray tasks on the connected (or a new local) cluster, results in order."""
    import ray

    if not ray.is_initialized():
        ray.init(address="auto" if _cluster_running() else None, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(fn)
    refs = [remote.remote(task) for task in tasks]
    for ref in refs:
        yield ray.get(ref)


def _cluster_running() -> bool:
    import os

    return bool(os.environ.get("RAY_ADDRESS"))
