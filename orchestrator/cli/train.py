"""`maskx train`: one training run on the connected Ray cluster (or a local one)."""
from __future__ import annotations

import argparse

from .common import print_metrics


def add_command(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train on the connected Ray cluster (or a local one), tracked in MLflow")
    train.add_argument("--config", required=True, help="YAML config, e.g. configs/tiny-cpu.yaml")
    train.add_argument("overrides", nargs="*", metavar="dotted.key=value", help="config overrides, e.g. solver.lr=0.01")
    train.add_argument("--resume", metavar="RUN_NAME", help="continue this run from its latest checkpoint")
    train.add_argument("--run-name", metavar="NAME", help="create this run, or continue it if it exists (a cluster job "
                                                          "that may be retried; default: a new name each time)")
    train.add_argument("--record-keys-to", metavar="FOLDER",
                       help="audit what the model saw: each rank appends every sample key it trains on, with its "
                            "iteration, to FOLDER/rank{R}.txt on the host it runs on")
    train.set_defaults(run=run_train)


def run_train(args) -> int:
    from maskx.orchestrator.config import load_config
    from maskx.orchestrator.training.trainer import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg, resume=args.resume, run_name=args.run_name, record_keys_to=args.record_keys_to,
                   verbose=args.verbose)
    print(f"run {result.run_name}: checkpoint {result.checkpoint}")
    print_metrics(result.metrics)
    if result.model_version:
        print(f"registered models:/{cfg.mlflow.registered_model}/{result.model_version}")
    return 0
