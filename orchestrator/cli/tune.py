"""`maskx tune`: a Ray Tune sweep, its summary, and the champion's promotion."""
from __future__ import annotations

import argparse
import os
import shlex

from .common import EXIT_INTERRUPTED


def add_command(sub: argparse._SubParsersAction) -> None:
    tune = sub.add_parser("tune", help="Ray Tune sweep over the config's sweep.space; promotes the best model to champion")
    tune.add_argument("--config", required=True, help="YAML config with a sweep section, e.g. configs/sweep-tiny-cpu.yaml")
    tune.add_argument("overrides", nargs="*", metavar="dotted.key=value", help="config overrides, e.g. sweep.max_concurrent_trials=4")
    tune.add_argument("--sweep", metavar="SWEEP_YAML",
                      help="a file whose sweep: section replaces the config's, e.g. configs/ablation-mask-head.yaml")
    tune.add_argument("--resume", metavar="SWEEP", help="continue an interrupted sweep, by its name (as train's "
                                                        "--resume takes a run's) or its folder; finished trials are "
                                                        "not rerun")
    tune.set_defaults(run=run_tune)


def run_tune(args) -> int:
    from maskx.orchestrator.config import load_config
    from maskx.orchestrator.tuning.sweep import reproduce_command, sweep

    cfg = load_config(args.config, args.overrides, sweep_path=args.sweep)
    result = sweep(cfg, resume=args.resume, write=lambda line: print(line, flush=True))
    print(f"sweep {result.sweep_folder} (MLflow parent run {result.parent_run_id})")
    print(f"{'trial':28} {'status':14} {cfg.sweep.metric:>14}  params")
    for trial in result.trials:
        value = "-" if trial.metric is None else f"{trial.metric:.4f}"
        print(f"{trial.trial[:28]:28} {trial.status:14} {value:>14}  {trial.params}")
    if result.best:
        print(f"best: {result.best.trial} {cfg.sweep.metric}={result.best.metric:.4f}")
        print(f"reproduce: {reproduce_command(args.config, result.best)}")
    if result.interrupted:
        again = ["--sweep", args.sweep] if args.sweep else []
        command = ["maskx", "tune", "--config", args.config, *again, *args.overrides, "--resume",
                   os.path.basename(result.sweep_folder)]
        print(f"interrupted: continue with {shlex.join(command)}")
        return EXIT_INTERRUPTED
    print(f"promotion: {result.promotion.decision}")
    if result.variant_table:
        print(f"variants (AP x100, mean ± std over seeds; also in {result.sweep_folder}/variants.md):")
        print(result.variant_table, end="")
    return 0
