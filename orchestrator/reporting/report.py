"""One self-contained HTML page per run (`report.html`, logged to the run and opened from the MLflow
UI's artifacts): the model card, the headline metrics, loss and learning-rate curves, the last
evaluation's figures and val images, the data's classes and the config; for a sweep, its trials,
metric by parameter, the trials' curves with the scheduler's stops, and the champion decision.

Everything comes from the MLflow run, so `maskx report RUN_ID` rebuilds the page of any run, and
a run's end writes it the same way. Images are embedded (base64): one file, no server needed.
"""
from __future__ import annotations

import base64
import html
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

from . import figures
from ..tracking.store import TrackedRun, Tracking
from .evaluation_figures import FIGURE_KEYS

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
HEADLINE = [f"{iou}/{subset}/{name}" for iou in ("segm", "bbox") for subset in ("all", "setA", "setB")
            for name in ("AP", "AP50", "AP75")]
# MLflow's time-stepped image files: images/<key, / as ~>+step+<step>+timestamp+<ms>+<uuid>.png
# (`%` separators before MLflow 3.2).
STEPPED_IMAGE = re.compile(r"^(?P<key>.+?)[+%]step[+%](?P<step>\d+)[+%]timestamp[+%]\d+[+%][0-9a-f-]+\.png$")
STATIC_IMAGES = ("data/classes.png", "data/class_frequency.png", "sweep/metric_by_param.png")
STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
img{max-width:100%;border:1px solid #ddd;margin:.4em 0}table{border-collapse:collapse;font-size:90%}
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}th{background:#f3f3f3}
pre{background:#f7f7f7;padding:1em;white-space:pre-wrap;font-size:85%}h2{border-bottom:1px solid #ccc}"""


@dataclass
class SteppedImage:
    key: str
    step: int
    path: str  # artifact path in the run


def stepped_images(run: TrackedRun) -> list[SteppedImage]:
    """Every time-stepped image the run holds (full size, not MLflow's compressed copies)."""
    found = []
    for entry in run.client.list_artifacts(run.run_id, "images"):
        match = STEPPED_IMAGE.match(os.path.basename(entry.path))
        if match:
            found.append(SteppedImage(match["key"].replace("~", "/").replace("#", "/"), int(match["step"]), entry.path))
    return found


def latest_by_key(images: list[SteppedImage]) -> dict[str, SteppedImage]:
    """The newest step of each key: the evaluation figures in `FIGURE_KEYS` order, then the others by name."""
    latest: dict[str, SteppedImage] = {}
    for image in sorted(images, key=lambda i: i.step):
        latest[image.key] = image
    order = {key: i for i, key in enumerate(FIGURE_KEYS)}
    return dict(sorted(latest.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))


def build_report(tracking: Tracking, run_id: str) -> str:
    """The HTML page of run `run_id` (a training run or a sweep)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    run = tracking.run(run_id)
    info = run.client.get_run(run_id)
    artifacts = _Artifacts(run)
    sections = [_header(info), _metrics_table(info.data.metrics)]
    card = info.data.tags.get("mlflow.note.content")
    if card:
        sections.append(f"<h2>Model card</h2><pre>{html.escape(card)}</pre>")
    history = {key: [(m.step, m.value) for m in run.client.get_metric_history(run_id, key)]
               for key in info.data.metrics if key.startswith("loss/") or key == "train/lr"}
    if any(history.values()):
        sections.append("<h2>Training</h2>" + _img(figures.png_bytes(figures.training_curves(history))))
    latest = latest_by_key(stepped_images(run))
    if latest:
        sections.append("<h2>Evaluation</h2>")
        for key, image in latest.items():
            sections.append(f"<h3>{html.escape(key)} <small>(iteration {image.step})</small></h3>"
                            + _img(artifacts.read(image.path)))
    sections += _sweep_sections(run, artifacts)
    for path in STATIC_IMAGES:
        data = artifacts.read_if_present(path)
        if data:
            sections.append(f"<h2>{html.escape(path)}</h2>" + _img(data))
    config = artifacts.read_if_present("config.yaml")
    if config:
        sections.append(f"<h2>Config</h2><pre>{html.escape(config.decode())}</pre>")
    artifacts.close()
    title = html.escape(f"maskx report: {info.info.run_name}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{STYLE}</style>"
            f"</head><body>{''.join(sections)}</body></html>")


def log_report(run: TrackedRun) -> None:
    """The run's page, built from what it logged, as its `report.html` artifact. A page that cannot be
    built is a warning, not a failed run: `maskx report RUN_ID` builds it again."""
    try:
        page = build_report(run.tracking, run.run_id)
    except Exception as exc:
        log.warning("report of run %s not written (%s: %s); `maskx report %s` builds it", run.run_id,
                    type(exc).__name__, exc, run.run_id)
        return
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, REPORT_FILE)
        with open(path, "w") as f:
            f.write(page)
        run.log_artifact(path)


def _header(info) -> str:
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(info.info.start_time / 1000))
    tags = info.data.tags
    rows = [("run", info.info.run_name), ("run id", info.info.run_id), ("status", info.info.status),
            ("started", started), ("run folder", tags.get("maskx.run_folder", "")),
            ("commit", tags.get("mlflow.source.git.commit", ""))]
    body = "".join(f"<tr><th>{k}</th><td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in rows if v)
    return f"<h1>{html.escape(info.info.run_name)}</h1><table>{body}</table>"


def _metrics_table(metrics: dict[str, float]) -> str:
    shown = [key for key in HEADLINE if key in metrics]
    if not shown:
        return ""
    cells = "".join(f"<tr><th>{k}</th><td>{metrics[k]:.4f}</td></tr>" for k in shown)
    return f"<h2>Last evaluation (COCO AP; set B: classes without masks in training)</h2><table>{cells}</table>"


def _sweep_sections(run: TrackedRun, artifacts: "_Artifacts") -> list[str]:
    trials = artifacts.read_if_present("sweep/trials.json")
    if trials is None:
        return []
    table = json.loads(trials)
    columns, rows = table["columns"], table["data"]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    sections = [f"<h2>Trials</h2><table><tr>{head}</tr>{body}</table>"]
    promotion = artifacts.read_if_present("sweep/promotion.json")
    if promotion:
        sections.append(f"<h2>Champion decision</h2><pre>{html.escape(promotion.decode())}</pre>")
    curves = _trial_curves(run, columns, rows)
    if curves:
        sections.append("<h2>Trials over time (scheduler stops marked)</h2>" + _img(figures.png_bytes(curves)))
    return sections


def _trial_curves(run: TrackedRun, columns: list[str], rows: list[list]):
    """Each trial's sweep metric against the iteration, a cross where the trial ended early."""
    if "mlflow_run_id" not in columns or len(columns) < 3:
        return None
    metric = columns[2]  # sweep_report's table: trial, status, the sweep metric, mlflow_run_id, ...
    trials = []
    for row in rows:
        record = dict(zip(columns, row))
        if not record["mlflow_run_id"]:
            continue
        history = run.client.get_metric_history(record["mlflow_run_id"], metric)
        trials.append((str(record["trial"]), str(record["status"]), sorted((m.step, m.value) for m in history)))
    return figures.trials_over_time(trials, metric) if any(points for _, _, points in trials) else None


def _img(png: bytes) -> str:
    return f"<img src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


class _Artifacts:
    """The run's artifacts, downloaded one file at a time as the page asks for them."""

    def __init__(self, run: TrackedRun):
        self.run = run
        self.folder = tempfile.TemporaryDirectory(prefix="maskx-report-")

    def read(self, path: str) -> bytes:
        from mlflow.artifacts import download_artifacts

        local = download_artifacts(run_id=self.run.run_id, artifact_path=path, dst_path=self.folder.name,
                                   tracking_uri=self.run.tracking.uri)
        with open(local, "rb") as f:
            return f.read()

    def read_if_present(self, path: str) -> Optional[bytes]:
        parent = os.path.dirname(path) or None
        names = {entry.path for entry in self.run.client.list_artifacts(self.run.run_id, parent)}
        return self.read(path) if path in names else None

    def close(self) -> None:
        self.folder.cleanup()
