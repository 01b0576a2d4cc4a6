"""A config from YAML and dotted overrides, validated whole, and written back out."""
from __future__ import annotations

import os
from typing import Any, Optional

import pydantic
import yaml

from maskx.models.config import ModelConfig

from .train_config import TrainConfig


class ConfigError(ValueError):
    pass


def apply_override(tree: dict, override: str) -> None:
    """`a.b.c=value` into a nested dict; the value is parsed as YAML (numbers, lists, null...). A number
    indexes a list: `data.train.1.weight=0.5` is the second training source's weight."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected dotted.key=value")
    *parents, leaf = key.strip().split(".")
    node = tree
    for i, part in enumerate(parents + [leaf]):
        where = ".".join((parents + [leaf])[:i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {override!r}: {where}: no item {part} in a list of {len(node)}")
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {where.rpartition('.')[0]} is not a section")
        if i == len(parents):
            node[part] = yaml.safe_load(raw)
        else:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]


def validate(tree: dict) -> TrainConfig:
    try:
        cfg = pydantic.TypeAdapter(TrainConfig).validate_python(tree)
    except pydantic.ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(top level)"
            if error["type"] == "unexpected_keyword_argument":
                problems.append(f"{where}: unknown key")
            else:
                problems.append(f"{where}: {error['msg']} (got {error.get('input')!r})")
        raise ConfigError("config: " + "; ".join(problems)) from None
    try:
        cfg.model.validate(require_num_classes=False)
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None
    check_frozen_backbone_has_weights(cfg.model)
    return cfg


def check_frozen_backbone_has_weights(model: ModelConfig) -> None:
    """A backbone that keeps its starting values (frozen BN, frozen stages, `model.freeze`) must start
    from trained ones: from random ones its frozen layers stay random, with no normalization anywhere."""
    backbone = model.backbone
    if not (backbone.frozen or "backbone" in model.freeze) or backbone.weights or model.init_from:
        return
    raise ConfigError(
        f"model.backbone.weights: not set, but the backbone is frozen (norm {backbone.norm}, trainable_layers "
        f"{backbone.trainable_layers}{', model.freeze names it' if 'backbone' in model.freeze else ''}): its frozen "
        "layers would keep their random values. Write torchvision's ImageNet weights once, on a machine with "
        f"internet: python -c \"import torch, torchvision; torch.save(torchvision.models.{backbone.name}(weights="
        f"'IMAGENET1K_V1').state_dict(), '{backbone.name}-imagenet.pth')\" and set model.backbone.weights to that "
        "file; or start from model.init_from; or train the whole backbone from scratch (norm gn, trainable_layers 5)")


def _read_yaml(path: str) -> dict:
    try:
        with open(path) as f:
            tree = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config {path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path}: not valid YAML ({exc})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config {path}: the top level must be a mapping")
    return tree


def load_config(path: Optional[str], overrides: list[str] = (), sweep_path: Optional[str] = None) -> TrainConfig:
    """`sweep_path`: a YAML whose `sweep:` section replaces the config's, so that one sweep (an
    ablation) runs unchanged on any training config; overrides apply after it."""
    tree: dict[str, Any] = _read_yaml(path) if path else {}
    if sweep_path:
        sweep_tree = _read_yaml(sweep_path)
        if set(sweep_tree) != {"sweep"}:
            raise ConfigError(f"config {sweep_path}: a sweep file holds only a top-level `sweep:` section, "
                              f"got {', '.join(sorted(sweep_tree)) or 'nothing'}")
        tree["sweep"] = sweep_tree["sweep"]
    for override in overrides:
        apply_override(tree, override)
    return validate(tree)


def packaged_config(name: str) -> str:
    """The path of a config that ships with maskx (`configs/NAME`, installed as `maskx.configs`)."""
    import maskx.configs

    # A namespace package: importlib.resources cannot read one through setuptools' editable finder,
    # whose path hook sits in __path__ beside the real folder.
    for folder in maskx.configs.__path__:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise ConfigError(f"config {name}: not among the configs installed with maskx")


def dump_config(cfg: TrainConfig) -> str:
    """The config as YAML, as checkpoints, registered models and MLflow keep it: credentials in a URL
    (`mlflow.tracking_uri: http://user:password@host`) and secret-named keys' values redacted."""
    from ..redaction import redact_text

    return redact_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
