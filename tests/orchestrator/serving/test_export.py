"""`maskx export`: the exported TorchScript and ONNX files give eager maskx's detections on real images."""
import pytest
import torch
from torch.nn.functional import interpolate

from maskx.datasets.vocab import COCO_CATEGORIES, build_vocabulary
from maskx.orchestrator.cli import main
from maskx.orchestrator.serving.export import ExportableMaskX, load_exported
from maskx.orchestrator.serving.inference import load_model, read_image

from ...conftest import SHARED_DATA

SIZE = (96, 128)


@pytest.fixture(scope="module")
def model(predicting_model):
    return predicting_model(build_vocabulary(COCO_CATEGORIES))


def real_images(count: int = 3) -> list[torch.Tensor]:
    """coco-tiny val images resized to the export size (what a user of the file does first)."""
    paths = sorted((SHARED_DATA / "coco-tiny" / "val2017").glob("*.jpg"))[:count]
    if not paths:
        pytest.skip("no ../shared/data/coco-tiny here")
    return [interpolate(read_image(str(p)).float()[None] / 255, size=SIZE, mode="bilinear")[0] for p in paths]


@pytest.mark.parametrize("fmt, suffix", [("torchscript", "pt"), ("onnx", "onnx")])
def test_the_exported_file_gives_eager_maskx_s_boxes_scores_and_masks(fmt, suffix, model, tmp_path, capsys):
    out = tmp_path / f"maskx.{suffix}"
    assert main(["export", "--model", model, "--format", fmt, "--out", str(out), "--size", "96,128"]) == 0
    assert "(3, 96, 128)" in capsys.readouterr().out
    exported, eager = load_exported(str(out)), ExportableMaskX(load_model(model))
    tolerance = {"boxes": 0.0, "scores": 0.0, "masks": 0.0} if fmt == "torchscript" else \
        {"boxes": 1e-2, "scores": 1e-5, "masks": 1e-4}  # onnxruntime's kernels round differently
    for image in real_images():
        with torch.no_grad():
            expected = eager(image)
        got = exported(image)
        assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in expected]
        assert len(got[0]) > 0
        boxes, labels, scores, masks = got
        assert torch.equal(labels, expected[1])
        torch.testing.assert_close(boxes, expected[0], atol=tolerance["boxes"], rtol=0)
        torch.testing.assert_close(scores, expected[2], atol=tolerance["scores"], rtol=0)
        torch.testing.assert_close(masks, expected[3], atol=tolerance["masks"], rtol=0)
        assert ((masks > 0.5) != (expected[3] > 0.5)).float().mean() < 1e-4  # binary masks: the same pixels


def test_export_names_what_it_cannot_take(model, tmp_path, capsys):
    assert main(["export", "--model", model, "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--size", "96x128"]) == 2
    assert "--size 96x128: H,W in pixels" in capsys.readouterr().err
    assert main(["export", "--model", model, "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--register"]) == 2
    assert "is no MLflow model" in capsys.readouterr().err


@pytest.mark.parametrize("fmt, suffix", [("torchscript", "pt"), ("onnx", "onnx")])
def test_the_exported_file_follows_the_number_of_detections_from_image_to_image(fmt, suffix, model, tmp_path):
    """The tracer ran on one image; on others the number of detections differs, none at all on one:
    the file follows (each count in the graph is a tensor's shape, not a number the trace froze)."""
    from maskx.orchestrator.serving.export import export_model

    loaded, images = load_model(model), real_images(4)
    with torch.no_grad():
        best = [float(ExportableMaskX(loaded)(image)[2].max()) for image in images]
    # The image with the lowest best score keeps nothing (a margin over onnxruntime's rounding of it).
    loaded.model.roi_heads.score_thresh = min(best) + 1e-4
    exported = load_exported(export_model(loaded, fmt, str(tmp_path / f"maskx.{suffix}"), SIZE))
    eager, counts = ExportableMaskX(loaded), []
    for image in images:
        with torch.no_grad():
            expected = eager(image)
        got = exported(image)
        counts.append(len(got[0]))
        assert len(got[0]) == len(expected[0]) and torch.equal(got[1], expected[1])
        torch.testing.assert_close(got[0], expected[0], atol=1e-2, rtol=0)
        torch.testing.assert_close(got[3], expected[3], atol=1e-4, rtol=0)
    assert 0 in counts and len(set(counts)) > 2, counts
