"""The `maskx` command line: synth, prepare, train, tune, eval, predict, export, browse, report,
mlflow-server, demo. One module per command (two for `data.py`: synth and prepare), each owning its
flags and what it runs; a command imports the rooms it needs when it runs, so `maskx --help` loads
neither Ray nor MLflow."""
from __future__ import annotations

import argparse
import logging
import sys
import traceback

from maskx.orchestrator.redaction import redact, redact_logs

from . import browse, data, demo, evaluate, export, mlflow_server, predict, report, train, tune
from .common import EXIT_BAD_INPUT, EXIT_INTERRUPTED
from .mlflow_server import server_setup, split_names

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "build_parser", "main", "server_setup", "split_names"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskx", description="Mask^X R-CNN on COCO + Visual Genome, trained on Ray, tracked in MLflow")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    data.add_commands(sub)  # synth, prepare
    for command in (train, tune, evaluate, predict, export, browse, report, mlflow_server, demo):
        command.add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    redact_logs()
    try:
        return args.run(args)
    except (FileNotFoundError, PermissionError, ValueError, RuntimeError) as exc:
        print(redact(f"maskx {args.command}: {exc}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception:  # anything else (MLflow's own errors embed the tracking URI): its traceback, redacted
        print(redact(traceback.format_exc()), file=sys.stderr)
        return 1
