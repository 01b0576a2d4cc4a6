"""The `maskx` command line: synth, prepare, train, tune, eval, predict, export, browse, report,
mlflow-server, demo. One module per command (two for `data.py`: synth and prepare), each owning its
flags and what it runs; a command imports the rooms it needs when it runs, so `maskx --help` loads
neither Ray nor MLflow."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from maskx.orchestrator.redaction import redact, redact_logs

from . import browse, data, demo, evaluate, export, mlflow_server, predict, report, train, tune
from .common import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INTERRUPTED
from .mlflow_server import server_setup, split_names

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILURE", "EXIT_INTERRUPTED", "build_parser", "main", "server_setup", "split_names"]

VERBOSE_HELP = ("debug logging, the libraries' own progress lines (Ray Train's record of every report, MLflow's "
                "transfer bars), and the traceback of a failure")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskx", description="Mask^X R-CNN on COCO + Visual Genome, trained on Ray, tracked in MLflow")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    data.add_commands(sub)  # synth, prepare
    for command in (train, tune, evaluate, predict, export, browse, report, mlflow_server, demo):
        command.add_command(sub)
    _verbose_everywhere(sub)
    return parser


def _verbose_everywhere(sub: argparse._SubParsersAction) -> None:
    """-v / --verbose before or after the command, the same flag (SUPPRESS: `maskx -v train` keeps it)."""
    for command in sub.choices.values():
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _verbose_everywhere(action)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    redact_logs()
    if not args.verbose:  # MLflow draws a bar per file it uploads or downloads; matplotlib says INFO of its fonts
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        return args.run(args)
    except (FileNotFoundError, PermissionError, ValueError) as exc:  # what the user gave: a config, path, value
        print(redact(f"maskx {args.command}: {exc}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # it ran and failed; redacted (MLflow's own errors embed the tracking URI)
        if args.verbose:
            print(redact(traceback.format_exc()), file=sys.stderr)
        else:  # maskx's RuntimeErrors are written for the user; another library's error says what it is
            said = str(exc) if type(exc) is RuntimeError else f"{type(exc).__name__}: {exc}"
            print(redact(f"maskx {args.command}: {said} (-v shows the traceback)"), file=sys.stderr)
        return EXIT_FAILURE
