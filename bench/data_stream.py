"""Samples/s of maskx's full training stream vs a JPEG-decode-only loop over the same shards, per core.

The full stream reads tar samples, shuffles, decodes JPEG + JSON, checks the set-A RLEs, draws each
image's resize (800, max 1333) and flip, and cuts steps. The reference loop reads the same tar
samples and decodes the JPEGs only. Goal: ratio >= 0.85. What the train step does instead of the
loader is timed on its own line: the resize and flip run on the device, and the set-A masks are
decoded in the step's process (`decode_masks`), while a GPU computes the previous step.

    python bench/data_stream.py                        # real COCO sample from ../shared/data if present
    python bench/data_stream.py --manifest s3://b/coco/train
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from maskx.datasets.prepare import prepare_coco
from maskx.datasets.partitions import DataPlan, EpochLayout
from maskx.datasets.stream import SkipCounter, load_sources, shard_samples
from maskx.datasets.train_stream import TrainStream
from maskx.datasets.synth import write_synthetic
from maskx.datasets.transforms import decode_masks

ROOT = Path(__file__).resolve().parents[1]

COCO_TINY = ROOT.parent / "shared" / "data" / "coco-tiny"


def default_manifest(workdir: str) -> str:
    out = os.path.join(workdir, "shards")
    if COCO_TINY.exists():
        prepare_coco(str(COCO_TINY / "annotations/instances_train2017.json"), str(COCO_TINY / "train2017"), out,
                     shard_size=10, workers=1, progress=False)
    else:
        paths = write_synthetic(os.path.join(workdir, "raw"), train_images=100, val_images=1, vg_images=1)
        prepare_coco(paths["coco_train_annotations"], paths["coco_train_images"], out, shard_size=10, workers=1, progress=False)
    return out


def decode_only(urls: list[str], counts: list[int], samples: int) -> float:
    done, start = 0, time.perf_counter()
    while done < samples:
        for url, count in zip(urls, counts):
            for sample in shard_samples(url, count, SkipCounter()):
                decode_jpeg(torch.frombuffer(bytearray(sample["jpg"]), dtype=torch.uint8), mode=ImageReadMode.RGB)
                done += 1
                if done == samples:
                    break
            if done == samples:
                break
    return samples / (time.perf_counter() - start)


def full_stream(manifest: str, samples: int, batch_size: int, min_size: int, max_size: int) -> tuple[float, float]:
    """Samples/s of the stream, and the seconds per sample the step then spends decoding masks."""
    sources, vocab = load_sources([(manifest, 1.0)])
    layout = EpochLayout(DataPlan(global_batch=batch_size, partitions=1), world_size=1, batch_size=batch_size)
    stream = TrainStream(sources=sources, vocab=vocab, mask_labels=vocab.class_set("voc"), layout=layout,
                         steps_per_epoch=samples // batch_size, min_sizes=(min_size,), max_size=max_size,
                         shuffle_buffer=64)
    start = time.perf_counter()
    targets = [t for step in stream.steps() for batch in step.micro_batches for t in batch.targets]
    rate = len(targets) / (time.perf_counter() - start)  # the images are let go as they come, as in training
    start = time.perf_counter()
    for target in targets:
        decode_masks(target)
    return rate, (time.perf_counter() - start) / len(targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", help="shards to read (default: prepared from ../shared/data/coco-tiny)")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    args = parser.parse_args()
    torch.set_num_threads(1)  # per core
    with tempfile.TemporaryDirectory() as workdir:
        manifest = args.manifest or default_manifest(workdir)
        sources, _ = load_sources([(manifest, 1.0)])
        decode_rate = decode_only(sources[0].shard_urls, sources[0].shard_samples, args.samples)
        stream_rate, mask_decode_s = full_stream(manifest, args.samples, args.batch_size, args.min_size, args.max_size)
    print(f"manifest={args.manifest or 'coco-tiny train2017 (real)' if COCO_TINY.exists() else 'synthetic'} "
          f"samples={args.samples} resize={args.min_size}/{args.max_size} threads=1 torch={torch.__version__}")
    print(f"decode-only loop: {decode_rate:7.1f} samples/s per core")
    print(f"full stream:      {stream_rate:7.1f} samples/s per core")
    print(f"ratio stream/decode: {stream_rate / decode_rate:.2f} (goal >= 0.85)")
    print(f"in the train step:   {mask_decode_s * 1e3:.2f} ms per sample decoding set-A masks (compact)")


if __name__ == "__main__":
    main()
