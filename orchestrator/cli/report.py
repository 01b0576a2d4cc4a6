"""`maskx report`: the HTML report of an MLflow run or sweep."""
from __future__ import annotations

import argparse


def add_command(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="the HTML report of an MLflow run or sweep (figures, curves, model card, config)")
    report.add_argument("run_id", metavar="RUN_ID", nargs="?", help="MLflow run id (a training run or a sweep's parent run)")
    report.add_argument("--experiment", metavar="NAME", help="instead of RUN_ID: the newest run of this MLflow experiment")
    report.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    report.add_argument("--out", help="HTML file to write (default report-RUN_ID.html)")
    report.add_argument("--log", action="store_true", help="also log it to the run as report.html, replacing the one there")
    report.set_defaults(run=run_report)


def run_report(args) -> int:
    from maskx.orchestrator.reporting.report import build_report, log_report
    from maskx.orchestrator.tracking.store import Tracking

    if (args.run_id is None) == (args.experiment is None):
        raise ValueError("name a run: RUN_ID or --experiment NAME (its newest run), not both")
    tracking = Tracking(args.tracking_uri)
    run_id = args.run_id or tracking.newest_run(args.experiment)
    out = args.out or f"report-{run_id}.html"
    with open(out, "w") as f:
        f.write(build_report(tracking, run_id))
    print(f"{out}: report of run {run_id} in {tracking.redacted_uri}")
    if args.log:
        log_report(tracking.run(run_id))
        print("logged to the run as report.html")
    return 0
