"""The training config: typed dataclasses loaded from YAML with dotted command-line overrides.

`load_config("configs/tiny-cpu.yaml", ["solver.lr=0.01"])` reads the file, applies each
`dotted.key=value` (values parsed as YAML), and validates the whole tree with pydantic: an
unknown key or a wrong type is an error that names the key. Builders downstream read only this.

`sections.py` holds the sections (data, solver, scaling, checkpoint, mlflow, sweep), `train_config.py`
the whole (`TrainConfig`), `loading.py` reading, overriding, validating and writing it; callers import
from here. docs/config.md lists every key (generated: `config_reference.py`).
"""
from .loading import (ConfigError, apply_override, check_frozen_backbone_has_weights, dump_config, load_config,
                      packaged_config, validate)
from .sections import (DEFAULT_TRACKING_STORE, PAPER_TABLE_METRICS, CheckpointConfig, DataConfig, MlflowConfig,
                       ScalingConfig, SolverConfig, SweepConfig, TrainSource, resolve_tracking_uri)
from .train_config import TrainConfig

__all__ = ["DEFAULT_TRACKING_STORE", "PAPER_TABLE_METRICS", "CheckpointConfig", "ConfigError", "DataConfig",
           "MlflowConfig", "ScalingConfig", "SolverConfig", "SweepConfig", "TrainConfig", "TrainSource", "apply_override",
           "check_frozen_backbone_has_weights", "dump_config", "load_config", "packaged_config", "resolve_tracking_uri",
           "validate"]
