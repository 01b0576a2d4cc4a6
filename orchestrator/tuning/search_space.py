"""The sweep's search space as Ray Tune takes it (`sweep.space`, `sweep.variants`), and a trial's
config from its point in it."""
from __future__ import annotations

import copy
import json

from ..config import SweepConfig, TrainConfig, apply_override, validate

PARAMS_KEY = "overrides"  # the search space under one key, so that dotted names stay intact
VARIANT_KEY = "variant"


def search_space(sweep: SweepConfig):
    """Tune's param space from the config's `sweep.space`, under one key so dotted names stay intact;
    the variants' names are one more grid dimension."""
    from ray import tune

    samplers = {"grid": tune.grid_search, "choice": tune.choice,
                "uniform": lambda bounds: tune.uniform(*bounds), "loguniform": lambda bounds: tune.loguniform(*bounds)}
    space = {}
    for key, spec in sweep.space.items():
        if len(spec) != 1 or next(iter(spec)) not in samplers:
            raise ValueError(f"sweep.space.{key}: expected one of {{{', '.join(samplers)}: ...}}, got {spec}")
        kind, values = next(iter(spec.items()))
        if kind in ("uniform", "loguniform") and len(values) != 2:
            raise ValueError(f"sweep.space.{key}: {kind} takes [low, high], got {values}")
        if kind != "grid" and sweep.search == "grid":
            raise ValueError(f"sweep.space.{key}: search=grid takes only grid entries; use search=random or optuna")
        space[key] = samplers[kind](values)
    if sweep.variants:
        if sweep.search != "grid":
            raise ValueError(f"sweep.variants: runs every variant at every point of a grid; set sweep.search: grid, got {sweep.search}")
        if sweep.scheduler != "fifo":
            raise ValueError("sweep.variants: an ablation compares its variants at the same budget, so no trial may be "
                             f"stopped early; set sweep.scheduler: fifo, got {sweep.scheduler}")
        return {PARAMS_KEY: space, VARIANT_KEY: tune.grid_search(list(sweep.variants))}
    if not space:
        raise ValueError("sweep.space: empty; name at least one dotted config key to search over")
    return {PARAMS_KEY: space}


def trial_overrides(variants: dict[str, dict], params: dict) -> dict:
    """A trial's dotted overrides: its variant's (`sweep.variants`), then its point of the search space."""
    return {**variants.get(params.get(VARIANT_KEY), {}), **params.get(PARAMS_KEY, {})}


def trial_config(base: dict, overrides: dict) -> TrainConfig:
    tree = copy.deepcopy(base)
    for key, value in overrides.items():
        apply_override(tree, f"{key}={json.dumps(value)}")
    return validate(tree)
