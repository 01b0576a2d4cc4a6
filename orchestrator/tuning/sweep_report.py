"""What a finished sweep leaves on its MLflow parent run and in its folder: the trials table, the
metric-by-parameter plot, the promotion decision and, for an ablation, the per-variant table of
mean ± std over seeds in the paper's layout."""
from __future__ import annotations

import json
import os
import statistics
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Optional

from maskx.datasets import storage

from ..config import SweepConfig
from ..tracking.store import TrackedRun
from .promotion import Promotion
from .trials import ERROR, FINISHED, STOPPED, Trial


@dataclass
class MetricSpread:
    """One metric over a variant's finished trials (its seeds): mean, sample std, the values."""
    mean: Optional[float]
    std: Optional[float]
    values: list[float]


@dataclass
class VariantRow:
    variant: str
    finished: int
    trials: int
    metrics: dict[str, MetricSpread] = field(default_factory=dict)


def log_summary(parent: TrackedRun, trials: list[Trial], sw: SweepConfig, promotion: Promotion) -> None:
    values = {"promotion/new_value": promotion.new_value, "promotion/champion_value": promotion.champion_value}
    parent.log_metrics({k: v for k, v in values.items() if v is not None}, 0)
    parent.set_tags({"promotion.decision": promotion.decision, "promotion.new_version": str(promotion.new_version),
                     "promotion.champion_version": str(promotion.champion_version)})
    keys = sorted({k for t in trials for k in t.params})
    table = {"trial": [t.trial for t in trials], "status": [t.status for t in trials],
             sw.metric: [t.metric for t in trials], "mlflow_run_id": [t.mlflow_run_id for t in trials]}
    if sw.variants:
        table["variant"] = [t.variant for t in trials]
    for key in keys:
        table[key] = [json.dumps(t.params.get(key)) for t in trials]
    parent.log_table(table, "sweep/trials.json")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "metric_by_param.png")
        plot_metric_by_param(trials, keys, sw.metric, path)
        parent.log_artifact(path, "sweep")
        summary = os.path.join(folder, "promotion.json")
        with open(summary, "w") as f:
            json.dump(asdict(promotion), f, indent=1)
        parent.log_artifact(summary, "sweep")


def variant_table(trials: list[Trial], variants: list[str], metrics: list[str]) -> list[VariantRow]:
    """One row per variant, in the config's order: each metric's mean and sample standard deviation
    over the variant's finished trials (its seeds), and the values they came from."""
    rows = []
    for variant in variants:
        runs = [t for t in trials if t.variant == variant]
        finished = [t for t in runs if t.status == FINISHED]
        row = VariantRow(variant, len(finished), len(runs))
        for metric in metrics:
            values = [t.table_metrics[metric] for t in finished if t.table_metrics.get(metric) is not None]
            row.metrics[metric] = MetricSpread(statistics.fmean(values) if values else None,
                                               statistics.stdev(values) if len(values) > 1 else None, values)
        rows.append(row)
    return rows


def column_title(metric: str) -> str:
    """`segm/setB/AP50` -> `set-B mask AP50`, the paper's column names."""
    parts = metric.split("/")
    if len(parts) != 3 or parts[0] not in ("bbox", "segm"):
        return metric
    subset = {"setA": "set-A", "setB": "set-B", "all": "all"}.get(parts[1], parts[1])
    return f"{subset} {'mask' if parts[0] == 'segm' else 'box'} {parts[2]}"


def variant_table_markdown(rows: list[VariantRow], metrics: list[str]) -> str:
    """The table in the paper's layout: AP in points (x100), mean ± sample std over seeds."""
    def cell(spread: MetricSpread) -> str:
        if spread.mean is None:
            return "-"
        mean = f"{100 * spread.mean:.1f}"
        return mean if spread.std is None else f"{mean} ± {100 * spread.std:.1f}"

    lines = ["| method | " + " | ".join(column_title(m) for m in metrics) + " | seeds |",
             "|---|" + "---:|" * len(metrics) + "---:|"]
    for row in rows:
        seeds = f"{row.finished}" if row.finished == row.trials else f"{row.finished} of {row.trials}"
        lines.append(f"| {row.variant} | " + " | ".join(cell(row.metrics[m]) for m in metrics) + f" | {seeds} |")
    return "\n".join(lines) + "\n"


def log_variant_table(parent: TrackedRun, sweep_folder: str, rows: list[VariantRow], metrics: list[str],
                      markdown: str) -> None:
    """On the sweep's parent run (a table the MLflow UI shows, and the markdown) and in its folder."""
    columns = {"method": [row.variant for row in rows], "seeds": [row.finished for row in rows]}
    for metric in metrics:
        columns[f"{metric} mean"] = [row.metrics[metric].mean for row in rows]
        columns[f"{metric} std"] = [row.metrics[metric].std for row in rows]
    parent.log_table(columns, "sweep/variants.json")
    parent.log_text(markdown, "sweep/variants.md")
    storage.write_bytes(storage.join(sweep_folder, "variants.md"), markdown.encode())
    storage.write_bytes(storage.join(sweep_folder, "variants.json"),
                        json.dumps([asdict(row) for row in rows], indent=1).encode())


def plot_metric_by_param(trials: list[Trial], keys: list[str], metric: str, path: str) -> None:
    """One panel per searched key (focal gamma/alpha, transfer settings, ...): the metric of each trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = keys or ["(none)"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for status, marker in ((FINISHED, "o"), (STOPPED, "x"), (ERROR, "s")):
            points = [(str(t.params.get(key)), t.metric) for t in trials if t.status == status and t.metric is not None]
            if points:
                ax.scatter([p[0] for p in points], [p[1] for p in points], marker=marker, label=status)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
