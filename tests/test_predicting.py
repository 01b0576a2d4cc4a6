"""The model the parity tests compare predictions of (`tests/predicting.py`) predicts something: its
scores straddle the thresholds they use and, where trained, its AP is not 0."""
import json

from maskx.datasets.vocab import COCO_CATEGORIES, Vocabulary, build_vocabulary
from maskx.orchestrator.cli import main
from maskx.orchestrator.serving.inference import load_model, predict, read_image

from .conftest import SHARED_DATA


def test_the_model_trained_on_the_synthetic_data_scores_above_zero_ap(predicting_model, synth_shards, tmp_path):
    from pathlib import Path

    checkpoint = predicting_model(Vocabulary.load(synth_shards["vocab"]))
    configs = Path(__file__).resolve().parents[1] / "configs"
    assert main(["eval", "--config", str(configs / "tiny-cpu.yaml"), f"data.val={synth_shards['coco_val']}",
                 "--model", checkpoint, "--json", str(tmp_path / "eval.json")]) == 0
    metrics = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert metrics["bbox/all/AP"] > 0.05 and metrics["segm/all/AP"] > 0.05, metrics
    scores = [r["score"] for r in json.loads((tmp_path / "results.json").read_text())]
    print(f"trained model: box AP {metrics['bbox/all/AP']:.3f}, mask AP {metrics['segm/all/AP']:.3f}, "
          f"{len(scores)} detections, {sum(s >= 0.5 for s in scores)} at 0.5 or more")
    assert min(scores) < 0.5 < max(scores), (min(scores), max(scores))  # serving's default decides something


def test_the_model_with_known_logits_keeps_detections_on_both_sides_of_0_5(predicting_model):
    loaded = load_model(predicting_model(build_vocabulary(COCO_CATEGORIES)))
    image = read_image(str(sorted((SHARED_DATA / "coco-tiny" / "val2017").glob("*.jpg"))[0]))
    detection = predict(loaded.model, image)
    scores = detection["scores"]
    assert len(scores) == 100 and scores.min() < 0.5 < scores.max()
    assert len(set(detection["labels"].tolist())) > 10
    masks = detection["mask_probs"] > 0.5
    assert 0.3 < masks.float().mean() < 0.9  # about the inscribed ellipse: neither empty nor full
