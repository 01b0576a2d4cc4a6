"""Overlays of predictions: masks, boxes and class names over the image."""
from pathlib import Path

import pytest
import torch

from maskx.datasets.vocab import Vocabulary, VocabClass
from maskx.orchestrator.serving.drawing import draw_predictions


def test_overlay_draws_kept_detections_only():
    vocab = Vocabulary([VocabClass("person", 1), VocabClass("kite", 38)])
    image = torch.full((3, 64, 80), 100, dtype=torch.uint8)
    masks = torch.zeros(2, 1, 64, 80)
    masks[0, 0, 10:30, 10:30] = 1.0
    masks[1, 0, 40:60, 50:70] = 1.0
    detection = {"boxes": torch.tensor([[10.0, 10, 30, 30], [50, 40, 70, 60]]), "labels": torch.tensor([1, 2]),
                 "scores": torch.tensor([0.9, 0.2]), "masks": masks}
    overlay = draw_predictions(image, detection, vocab, None, score_threshold=0.5)
    assert overlay.shape == image.shape and overlay.dtype == torch.uint8
    assert not torch.equal(overlay[:, 15:25, 15:25], image[:, 15:25, 15:25])  # the kept mask is painted
    assert torch.equal(overlay[:, 45:55, 55:65], image[:, 45:55, 55:65])      # the low-score one is not


def test_overlay_without_detections_is_the_image():
    vocab = Vocabulary([VocabClass("person", 1)])
    image = torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
             "masks": torch.zeros(0, 1, 32, 32)}
    assert torch.equal(draw_predictions(image, empty, vocab, None), image)


# What the code file MLflow copied into each generation of logged models imports: before the serving
# package (#25), and since (pyfunc_model.py, unchanged when tracking/ and evaluation/ left serving/).
LOGGED_MODEL_IMPORTS = ["from maskx.orchestrator.serving import MaskXPyfunc",
                        "from maskx.orchestrator.serving.pyfunc import MaskXPyfunc"]


@pytest.mark.parametrize("statement", LOGGED_MODEL_IMPORTS)
def test_models_logged_by_an_older_maskx_still_load_their_class(statement):
    namespace = {}
    exec(statement, namespace)
    from maskx.orchestrator.serving.pyfunc import MaskXPyfunc

    assert namespace["MaskXPyfunc"] is MaskXPyfunc
    code = Path(__file__).resolve().parents[3] / "orchestrator" / "serving" / "pyfunc_model.py"
    assert LOGGED_MODEL_IMPORTS[-1] in code.read_text()  # the newest generation is today's file


def png_of_zeros(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height black pixels: a few hundred KB that decode to width x height
    x 3 bytes (a decompression bomb, where they are many)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row, compressor = b"\0" * (1 + (width + 7) // 8), zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(monkeypatch):
    import pytest

    from maskx.orchestrator.serving.inference import ImageTooLarge, decode_image_bytes

    over_ours = png_of_zeros(9000, 8000)  # 72 megapixels, under Pillow's own bomb limit
    with pytest.raises(ImageTooLarge, match=r"image: over the limit of 64000000 pixels \(MASKX_MAX_IMAGE_PIXELS\): "
                                            r"9000x8000 is 72000000"):
        decode_image_bytes(over_ours, "image")
    bomb = png_of_zeros(30000, 30000)  # 900 megapixels in ~100 KB
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageTooLarge, match=r"over the limit of 64000000 pixels \(MASKX_MAX_IMAGE_PIXELS\): .*900000000"):
        decode_image_bytes(bomb, "image")
    monkeypatch.setenv("MASKX_MAX_IMAGE_PIXELS", "100")
    assert decode_image_bytes(png_of_zeros(10, 10), "image").shape == (3, 10, 10)
    with pytest.raises(ImageTooLarge, match="11x10 is 110"):
        decode_image_bytes(png_of_zeros(11, 10), "image")
    with pytest.raises(ValueError, match="image: not a JPEG or PNG"):
        decode_image_bytes(b"GIF89a not really", "image")
    monkeypatch.setenv("MASKX_MAX_IMAGE_PIXELS", "64M")
    with pytest.raises(ValueError, match="MASKX_MAX_IMAGE_PIXELS='64M': a positive number of pixels"):
        decode_image_bytes(png_of_zeros(10, 10), "image")


def test_masks_pasted_one_at_a_time_are_torchvision_s():
    """A loaded model leaves its masks unpasted; pasting each kept one alone gives the masks, boxes and
    RLEs torchvision's all-at-once paste gives."""
    from maskx.orchestrator.evaluation.records import binary_masks, mask_rles

    from ...models.conftest import tiny_model

    model = tiny_model(box_score_thresh=0.0).eval()
    torch.manual_seed(1)
    image = torch.rand(3, 150, 190)
    with torch.no_grad():
        [pasted] = model([image])
        model.transform.paste_masks = False
        [unpasted] = model([image])
    assert "masks" not in unpasted and unpasted["mask_probs"].shape[-2:] == (28, 28) and len(pasted["boxes"]) > 10
    assert torch.equal(unpasted["boxes"], pasted["boxes"]) and torch.equal(unpasted["scores"], pasted["scores"])
    one_at_a_time = torch.stack(list(binary_masks(unpasted, (150, 190))))
    assert torch.equal(one_at_a_time, pasted["masks"][:, 0] > 0.5) and one_at_a_time.any()
    assert mask_rles(unpasted, (150, 190)) == mask_rles(pasted, (150, 190))


def encoded(frames, format, **save):
    import io

    buffer = io.BytesIO()
    frames[0].save(buffer, format=format, **({"save_all": True, "append_images": frames[1:]} if len(frames) > 1 else {}),
                   **save)
    return buffer.getvalue()


def test_only_single_frame_jpeg_and_png_decode_and_always_to_3_x_h_x_w_uint8():
    """A GIF's frames decoded one tensor each the header's size: 20 frames of 2000x2000 in ~80 KB
    were 240 MB. Other formats and animated PNGs are refused; 16-bit PNGs keep their top 8 bits."""
    import numpy as np
    import pytest
    from PIL import Image

    from maskx.orchestrator.serving.inference import decode_image_bytes

    frames = [Image.new("P", (2000, 2000), i) for i in range(20)]
    gif = encoded(frames, "GIF")
    assert len(gif) < 200_000
    with pytest.raises(ValueError, match="image: not a JPEG or PNG \\(a GIF\\)"):
        decode_image_bytes(gif, "image")
    with pytest.raises(ValueError, match="not a JPEG or PNG \\(a GIF\\)"):
        decode_image_bytes(encoded(frames[:1], "GIF"), "image")
    with pytest.raises(ValueError, match="not a JPEG or PNG \\(a WEBP\\)"):
        decode_image_bytes(encoded([Image.new("RGB", (8, 8))], "WEBP"), "image")
    animated = encoded([Image.new("RGB", (64, 64), (i, 0, 0)) for i in range(3)], "PNG")
    with pytest.raises(ValueError, match="image: an animated PNG of 3 frames"):
        decode_image_bytes(animated, "image")

    deep = np.full((6, 5), 0xC8FF, dtype=np.uint16)  # 16-bit grey 51455: 200 in 8 bits
    image = decode_image_bytes(encoded([Image.fromarray(deep)], "PNG"), "image")
    assert image.dtype == torch.uint8 and image.shape == (3, 6, 5) and int(image.min()) == int(image.max()) == 200
    grey = decode_image_bytes(encoded([Image.new("L", (7, 4), 90)], "PNG"), "image")
    assert grey.dtype == torch.uint8 and grey.shape == (3, 4, 7) and int(grey.max()) == 90
    jpeg = decode_image_bytes(encoded([Image.new("RGB", (9, 8), (10, 120, 240))], "JPEG"), "image")
    assert jpeg.dtype == torch.uint8 and jpeg.shape == (3, 8, 9)


def test_one_drawing_marks_set_b_in_every_picture_and_none_where_every_class_is_set_a():
    """Overlays of `maskx predict`, `maskx overlay` and a registered model's use the evaluation
    examples' drawing: a set-B class's box orange and named `[B]`; no set given, every class set A."""
    from maskx.orchestrator.serving.drawing import COLORS, class_name, set_colors

    vocab = Vocabulary([VocabClass("person", 1), VocabClass("kite", 38)])
    assert class_name(vocab, 2, {1}) == "kite [B]" and class_name(vocab, 2, None) == "kite"
    assert set_colors([1, 2], {1}) == [COLORS["A"], COLORS["B"]] and set_colors([1, 2], None) == [COLORS["A"]] * 2
    image = torch.full((3, 64, 80), 100, dtype=torch.uint8)
    detection = {"boxes": torch.tensor([[10.0, 10, 30, 30]]), "labels": torch.tensor([2]), "scores": torch.tensor([0.9])}
    drawn = draw_predictions(image, detection, vocab, {1})
    assert tuple(drawn[:, 20, 10].tolist()) == COLORS["B"]  # the box's left edge


def test_inference_runs_on_the_gpu_where_there_is_one_unless_told(monkeypatch):
    from maskx.orchestrator.serving.inference import inference_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert inference_device("auto") == inference_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device cuda: torch sees no GPU"):
        inference_device("cuda")
    with pytest.raises(ValueError, match="--device tpu: one of auto, cpu, cuda"):
        inference_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert inference_device("auto") == inference_device("cuda") == torch.device("cuda")
    assert inference_device("cpu") == torch.device("cpu")


def test_eval_predict_and_the_served_model_take_a_device():
    from maskx.orchestrator.cli import build_parser
    from maskx.orchestrator.serving import pyfunc

    parse = build_parser().parse_args
    assert parse(["eval", "--model", "m", "--shards", "s"]).device == "auto"
    assert parse(["predict", "--model", "m", "--image", "i.jpg", "--out", "o.png", "--device", "cpu"]).device == "cpu"
    assert pyfunc.DEVICE_VARIABLE == "MASKX_DEVICE"  # the serving host's choice, default auto


def test_the_sweep_s_champion_is_scored_on_a_gpu_where_the_cluster_has_one(monkeypatch):
    import ray

    from maskx.orchestrator.tuning import promotion

    asked = []

    def remote(**options):
        asked.append(options)
        return lambda fn: type("Task", (), {"remote": staticmethod(lambda *args: {"segm/setB/AP": 0.5})})

    monkeypatch.setattr(ray, "remote", remote)
    monkeypatch.setattr(ray, "get", lambda value: value)
    for resources, gpus in (({"CPU": 8.0}, 0), ({"CPU": 8.0, "GPU": 4.0}, 1)):
        monkeypatch.setattr(ray, "cluster_resources", lambda resources=resources: resources)
        assert promotion.evaluated_on_ray(None, "models:/m/1") == {"segm/setB/AP": 0.5}
        assert asked[-1]["num_gpus"] == gpus
