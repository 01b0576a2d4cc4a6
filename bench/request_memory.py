"""Peak memory of one prediction request on a large photo: maskx's serving path (the loaded model
leaves its masks unpasted; each kept detection's mask is pasted and RLE-encoded alone) next to
torchvision's (every detection's mask pasted on the whole image as floats, then thresholded), side by
side in one run.

Each measurement is a fresh process (its peak resident memory, VmHWM, is a high-water mark): configs/
tiny-cpu.yaml's model (R-18-FPN, untrained, 81 classes) keeping every detection (box_score_thresh 0:
100 detections), one JPEG of the given size, `pyfunc.detections_json` with score_threshold 0 and
max_detections 100. The figure is the request's peak over the process's resident memory before it.

    python bench/request_memory.py                      # 3000x3000 both ways, 6000x8000 maskx's way
    python bench/request_memory.py --sizes 3000x3000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "tiny-cpu.yaml")
WAYS = ("torchvision", "maskx")


def photo_jpeg(height: int, width: int) -> bytes:
    """A smooth synthetic photo (stripes and gradients: a few MB as JPEG, like a real one)."""
    import torch
    from torchvision.io import encode_jpeg

    rows, columns = torch.arange(height)[:, None], torch.arange(width)[None, :]
    channels = [(rows // 4) % 256, (columns // 4) % 256, ((rows + columns) // 8) % 256]
    pixels = torch.stack([c.expand(height, width) for c in channels]).to(torch.uint8)
    return encode_jpeg(pixels, quality=80).numpy().tobytes()


def peak_resident_kb() -> int:
    """This process's peak resident memory (VmHWM: unlike getrusage's ru_maxrss, not inherited from
    the parent across fork and exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def measure(way: str, jpeg_path: str) -> dict:
    """In this process: the request's peak memory over what the process held before it."""
    import torch

    from maskx.datasets.vocab import Vocabulary, VocabClass
    from maskx.models import build_model
    from maskx.orchestrator.config import load_config
    from maskx.orchestrator.run_setup import bind_to_vocabulary
    from maskx.orchestrator.serving.inference import LoadedModel
    from maskx.orchestrator.serving.pyfunc import detections_json

    torch.set_num_threads(1)
    vocab = Vocabulary([VocabClass(f"class{i}", i) for i in range(1, 81)])
    cfg = bind_to_vocabulary(load_config(TINY, ["model.num_classes=81", "model.box_score_thresh=0.0", "data.mask_sets=[all]"]), vocab)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    model.transform.paste_masks = way == "torchvision"
    with open(jpeg_path, "rb") as f:
        jpeg = f.read()
    before = peak_resident_kb()
    started = time.perf_counter()
    answer = detections_json(LoadedModel(model, vocab, cfg), jpeg, 0.0, 100)
    seconds = time.perf_counter() - started
    peak = peak_resident_kb()
    return {"way": way, "masks": len(answer["masks"]), "request_gb": (peak - before) / 2**20, "before_gb": before / 2**20,
            "seconds": seconds}


def in_fresh_process(way: str, jpeg_path: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--measure", way, jpeg_path], capture_output=True, text=True)
    if done.returncode != 0:
        return {"way": way, "failed": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["3000x3000", "6000x8000"], help="WIDTHxHEIGHT ...")
    parser.add_argument("--torchvision-up-to", type=int, default=10_000_000,
                        help="measure torchvision's way only up to this many pixels (it needs ~0.8 KB a pixel)")
    parser.add_argument("--measure", nargs=2, metavar=("WAY", "JPEG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    print(f"{'size':>10} {'way':>12} {'masks':>6} {'held before GB':>15} {'request peak GB':>16} {'seconds':>8}")
    rows = {}
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        with tempfile.NamedTemporaryFile(suffix=".jpg") as jpeg:  # made here: the measuring process holds only its bytes
            jpeg.write(photo_jpeg(height, width))
            jpeg.flush()
            for way in WAYS:
                if way == "torchvision" and width * height > args.torchvision_up_to:
                    continue
                rows[size, way] = in_fresh_process(way, jpeg.name)
        for way in WAYS:
            if (size, way) not in rows:
                continue
            row = rows[size, way]
            if "failed" in row:
                print(f"{size:>10} {way:>12} failed: {row['failed']}")
                continue
            print(f"{size:>10} {way:>12} {row['masks']:>6} {row['before_gb']:>15.2f} {row['request_gb']:>16.2f} "
                  f"{row['seconds']:>8.1f}")
    for size in args.sizes:
        if (size, "torchvision") in rows and (size, "maskx") in rows and "failed" not in rows[size, "maskx"] \
                and "failed" not in rows[size, "torchvision"]:
            ratio = rows[size, "maskx"]["request_gb"] / rows[size, "torchvision"]["request_gb"]
            print(f"{size}: maskx's request peak is {ratio:.3f} of torchvision's paste")


if __name__ == "__main__":
    main()
