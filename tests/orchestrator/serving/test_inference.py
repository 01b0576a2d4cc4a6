"""Overlays of predictions: masks, boxes and class names over the image."""
import torch

from maskx.datasets.vocab import Vocabulary, VocabClass
from maskx.orchestrator.serving.inference import draw_overlay


def test_overlay_draws_kept_detections_only():
    vocab = Vocabulary([VocabClass("person", 1), VocabClass("kite", 38)])
    image = torch.full((3, 64, 80), 100, dtype=torch.uint8)
    masks = torch.zeros(2, 1, 64, 80)
    masks[0, 0, 10:30, 10:30] = 1.0
    masks[1, 0, 40:60, 50:70] = 1.0
    detection = {"boxes": torch.tensor([[10.0, 10, 30, 30], [50, 40, 70, 60]]), "labels": torch.tensor([1, 2]),
                 "scores": torch.tensor([0.9, 0.2]), "masks": masks}
    overlay = draw_overlay(image, detection, vocab, score_threshold=0.5)
    assert overlay.shape == image.shape and overlay.dtype == torch.uint8
    assert not torch.equal(overlay[:, 15:25, 15:25], image[:, 15:25, 15:25])  # the kept mask is painted
    assert torch.equal(overlay[:, 45:55, 55:65], image[:, 45:55, 55:65])      # the low-score one is not


def test_overlay_without_detections_is_the_image():
    vocab = Vocabulary([VocabClass("person", 1)])
    image = torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
             "masks": torch.zeros(0, 1, 32, 32)}
    assert torch.equal(draw_overlay(image, empty, vocab), image)


def test_models_logged_before_the_serving_package_still_load_their_class():
    # The code file MLflow copied into models logged by an older maskx runs this import.
    namespace = {}
    exec("from maskx.orchestrator.serving import MaskXPyfunc", namespace)
    from maskx.orchestrator.serving.pyfunc import MaskXPyfunc

    assert namespace["MaskXPyfunc"] is MaskXPyfunc
