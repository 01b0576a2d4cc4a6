"""`maskx demo`: the embedded end-to-end demo."""
from __future__ import annotations

import argparse


def add_command(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="the embedded end-to-end demo: synthetic data, local Ray, local MLflow")
    demo.add_argument("--out", default="demo-out", help="folder for data, shards and checkpoints (default demo-out)")
    demo.add_argument("overrides", nargs="*", metavar="dotted.key=value", help="overrides of configs/tiny-cpu.yaml")
    demo.set_defaults(run=run_demo_command)


def run_demo_command(args) -> int:
    from maskx.orchestrator.demo import run_demo

    return run_demo(args.out, overrides=args.overrides)
