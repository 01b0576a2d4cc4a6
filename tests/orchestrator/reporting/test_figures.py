"""The pictures: each figure's plotted data is the numbers it came from; the error analysis's curves
average to COCOeval's own AP figures; shards drawn as training sees them."""
import numpy as np
import pytest
from PIL import Image

from maskx.datasets.shard_format import load_manifest
from maskx.orchestrator.cli import main
from maskx.orchestrator.reporting import figures
from maskx.orchestrator.reporting.evaluation_figures import FIGURE_KEYS, evaluation_figures
from maskx.orchestrator.evaluation.error_analysis import LEVELS, class_confusions_forgiven
from maskx.orchestrator.evaluation.coco_scoring import evaluate

from ..evaluation.test_evaluation import coco_tiny_records

VOC = [1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72]


@pytest.fixture(scope="module")
def coco_tiny_evaluation():
    """COCOeval of the real coco-tiny val annotations against detections with a model's errors."""
    return evaluate(*coco_tiny_records(np.random.default_rng(0)), 91, VOC)


def test_the_curves_average_to_cocoeval_s_ap_and_each_level_forgives_more(coco_tiny_evaluation):
    metrics, _, curves = coco_tiny_evaluation
    for iou_type in ("bbox", "segm"):
        for subset in ("all", "setA", "setB"):
            levels = curves[iou_type][subset]
            assert all(len(levels[level]) == 101 for level in LEVELS)
            for level, name in (("AP", "AP"), ("C50", "AP50"), ("C75", "AP75")):
                assert np.mean(levels[level]) == pytest.approx(metrics[f"{iou_type}/{subset}/{name}"], abs=1e-5)
            means = [np.mean(levels[level]) for level in LEVELS[1:]]
            assert means == sorted(means) and means[-1] == 1.0, (iou_type, subset, means)
            assert np.mean(levels["Cls"]) > np.mean(levels["Loc"])  # 10% of detections have the wrong class


def test_class_confusion_is_forgiven_by_crowd_regions_of_the_classes_detected_on_an_object():
    annotations = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0},
                   {"image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10], "iscrowd": 0},
                   {"image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10], "iscrowd": 0}]
    detections = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
                  {"image_id": 1, "category_id": 3, "bbox": [5, 5, 20, 20]},  # meets both objects
                  {"image_id": 1, "category_id": 4, "bbox": [50, 50, 5, 5]},  # meets none
                  {"image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10]}]
    added = class_confusions_forgiven(annotations, detections)[len(annotations):]
    assert sorted((a["image_id"], a["category_id"], tuple(a["bbox"]), a["iscrowd"]) for a in added) == [
        (1, 3, (0, 0, 10, 10), 1), (1, 3, (20, 20, 10, 10), 1)]


def test_without_the_error_analysis_the_pr_curves_remain_and_where_it_fails_is_not_drawn():
    metrics, tables, curves = evaluate(*coco_tiny_records(np.random.default_rng(0)), 91, VOC, error_analysis=False)
    assert set(curves["segm"]["setB"]) == {"AP", "C75", "C50"}
    assert np.mean(curves["segm"]["setB"]["C50"]) == pytest.approx(metrics["segm/setB/AP50"], abs=1e-5)
    summary = {"metrics": metrics, "per_class_ap": {"segm": {}}, "curves": curves}
    assert set(evaluation_figures(summary, set())) == {"eval/pr_curves", "eval/ap_by_size"}


def test_each_figure_plots_the_numbers_it_was_given(coco_tiny_evaluation):
    metrics, tables, curves = coco_tiny_evaluation
    pr = figures.pr_curves(curves)
    plotted = {line.get_label(): line.get_ydata() for line in pr.axes[1].get_lines()}
    assert [list(y) for y in plotted.values()] == [curves["segm"][s][level] for s in ("setA", "setB") for level in ("C50", "AP")]
    assert any(f"AP50 {metrics['segm/setB/AP50']:.3f}" in label for label in plotted)

    per_class = {str(label): ap for label, ap in tables["segm"].items()}
    bars = figures.per_class_ap(per_class, {str(label) for label in VOC})
    ax = bars.axes[0]
    heights = [patch.get_height() for patch in ax.patches]
    assert heights == sorted((ap for ap in per_class.values() if ap >= 0), reverse=True)
    names = [tick.get_text() for tick in ax.get_xticklabels()]
    colors = [patch.get_facecolor()[:3] for patch in ax.patches]
    for name, color in zip(names, colors):
        assert color == pytest.approx((0.12156, 0.46666, 0.70588) if int(name) in VOC else (1.0, 0.49803, 0.05490), abs=1e-3)

    sizes = figures.ap_by_size(metrics).axes[0]
    assert [p.get_height() for p in sizes.patches] == [
        metrics[f"{iou}/{subset}/{size}"] for iou in ("bbox", "segm") for subset in ("setA", "setB") for size in figures.SIZES]

    failing = figures.failure_analysis(curves)
    legend = [text.get_text() for text in failing.axes[3].get_legend().get_texts()]  # mask, set B
    assert legend[0] == f"[{np.mean(curves['segm']['setB']['C75']):.3f}] C75: IoU .75"


def test_past_sixty_classes_the_bars_show_the_best_and_worst_thirty():
    per_class = {f"class{i:04d}": i / 3000 for i in range(3000)}
    ax = figures.per_class_ap(per_class, set()).axes[0]
    names = [tick.get_text() for tick in ax.get_xticklabels()]
    assert len(names) == 60 and names[0] == "class2999" and names[29] == "class2970" and names[-1] == "class0000"


def test_evaluation_figures_are_readable_images(coco_tiny_evaluation):
    metrics, tables, curves = coco_tiny_evaluation
    summary = {"metrics": metrics, "per_class_ap": {k: {str(c): v for c, v in t.items()} for k, t in tables.items()},
               "curves": curves}
    drawn = evaluation_figures(summary, {str(label) for label in VOC}, ", iteration 10")
    assert set(drawn) == set(FIGURE_KEYS)
    for key, figure in drawn.items():
        image = figures.as_image(figure)
        assert image.mode == "RGB" and image.width >= 600 and image.height >= 300, key
        assert len(set(image.getdata())) > 20, key  # something is drawn


def test_prepare_draws_the_classes_and_browse_draws_samples_as_training_sees_them(synth_paths, tmp_path, capsys):
    out = tmp_path / "vg"
    assert main(["prepare", "vg", "--image-data", synth_paths["vg_image_data"], "--objects", synth_paths["vg_objects"],
                 "--images", synth_paths["vg_images"], "--out", str(out)]) == 0
    assert "classes.png: images and objects per class" in capsys.readouterr().out
    assert Image.open(out / "classes.png").size == (1000, 420)
    counts = load_manifest(out).load_class_counts()
    assert sum(counts.instances.values()) == load_manifest(out).counts["vg"]["instances"] and not any(counts.masks.values())

    drawn = tmp_path / "browse"
    assert main(["browse", "--shards", str(out), "--out", str(drawn), "--count", "3"]) == 0
    pngs = sorted(drawn.iterdir())
    assert len(pngs) == 3 and "3 samples drawn; 0 skipped" in capsys.readouterr().out
    assert min(Image.open(pngs[0]).size) == 800  # resized as data.min_sizes' default says
    assert main(["browse", "--shards", str(out), "--out", str(drawn), "--classes", "no-such-class"]) == 2
    assert "--classes: no-such-class not in the shards' vocabulary" in capsys.readouterr().err


def test_a_figure_mlflow_cannot_take_is_a_warning_not_a_failed_run(monkeypatch, caplog):
    from maskx.orchestrator.reporting.evaluation_figures import FigureLogger
    from maskx.orchestrator.tracking.store import Tracking

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    unreachable = Tracking("http://127.0.0.1:9").run("0" * 32)  # nothing listens on port 9
    logger = FigureLogger(unreachable)
    logger.submit(lambda: {"eval/ap_by_size": figures.ap_by_size({})}, 10)
    logger.close()
    assert "figures of iteration 10 not logged to MLflow" in caplog.text
