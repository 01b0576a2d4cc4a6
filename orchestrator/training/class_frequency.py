"""What repeat-factor sampling does to a run's data, logged to its MLflow run at the start: each
class's frequency (the fraction of the images read that contain it) without and with the repeats,
as a picture (`data/class_frequency.png`) and a table (`data/class_frequency.json`)."""
from __future__ import annotations

from maskx.datasets.repeat_factors import class_repeat_factor
from maskx.datasets.vocab import Vocabulary

from ..run_setup import ClassFrequency
from ..tracking.store import TrackedRun


def log_class_frequency(run: TrackedRun, frequency: ClassFrequency, threshold: float, vocab: Vocabulary) -> None:
    labels = sorted(frequency.before, key=lambda label: (-frequency.before[label], label))
    run.log_table({"class": [vocab.name(label) for label in labels],
                   "frequency": [frequency.before[label] for label in labels],
                   "frequency_with_repeats": [frequency.after[label] for label in labels],
                   "class_repeat_factor": [class_repeat_factor(frequency.before[label], threshold) for label in labels]},
                  "data/class_frequency.json")
    run.log_figure(plot_class_frequency(frequency, threshold, labels), "data/class_frequency.png")


def plot_class_frequency(frequency: ClassFrequency, threshold: float, labels: list[int]):
    """Classes from the most to the least frequent, on a log scale, before and after; the threshold
    drawn across: every class below it is lifted towards it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    ranks = range(1, len(labels) + 1)
    ax.plot(ranks, [frequency.before[label] for label in labels], label="without repeats")
    ax.plot(ranks, [frequency.after[label] for label in labels], label="with repeat factors")
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"data.repeat_threshold {threshold:g}")
    rare = sum(frequency.before[label] < threshold for label in labels)
    ax.set(yscale="log", xlabel="class, most to least frequent", ylabel="fraction of images read with it",
           title=f"repeat-factor sampling: {rare} of {len(labels)} classes below the threshold")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig
