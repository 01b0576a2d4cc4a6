"""The `maskx` command line."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maskx", description="Mask^X R-CNN training on Ray, tracked in MLflow")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the embedded end-to-end demo")
    args = parser.parse_args(argv)
    if args.command == "demo":
        print("maskx demo: not yet - the orchestrator is being built (see issues).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
