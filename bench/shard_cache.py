"""What the node's shard cache saves: bytes fetched from S3 over two epochs with and without it, and
the stream's samples/s from a warm cache next to local shards, side by side in one run.

The same shards are prepared into a local folder and into a real S3 API (moto's server on
127.0.0.1; a bucket in another region would add latency and egress cost, not bytes). Each way reads
every sample of the manifest twice with maskx's eval stream (tar, JPEG and JSON decode, one
process); bytes are counted from the S3 client's own GetObject answers.

    python bench/shard_cache.py                         # the real COCO sample from ../shared/data if present
    python bench/shard_cache.py --synthetic-images 400
"""
from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

COCO_TINY = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-tiny"
BUCKET = "maskx-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(out: str, images: int, workdir: str) -> None:
    from maskx.datasets.prepare import prepare_coco
    from maskx.datasets.synth import write_synthetic

    if COCO_TINY.exists() and not images:
        prepare_coco(str(COCO_TINY / "annotations/instances_train2017.json"), str(COCO_TINY / "train2017"), out,
                     shard_size=10, workers=1, progress=False)
        return
    raw = write_synthetic(os.path.join(workdir, "raw"), train_images=images or 200, val_images=1, vg_images=1, seed=0)
    prepare_coco(raw["coco_train_annotations"], raw["coco_train_images"], out, shard_size=20, workers=1, progress=False)


def epochs(manifest: str, cache_folder: str | None, fetched: list[int]) -> list[tuple[float, int]]:
    """(samples/s, bytes fetched from S3) of each of two epochs over every sample of the manifest."""
    from maskx.datasets.shard_cache import CacheSettings
    from maskx.datasets.stream import EvalStream, load_sources

    sources, vocab = load_sources([(manifest, 1.0)])
    for source in sources:
        source.cache = CacheSettings(cache_folder, 10**12) if cache_folder else None
    results = []
    for _ in range(2):
        before, started = sum(fetched), time.perf_counter()
        samples = sum(len(batch.keys) for batch in EvalStream(sources, vocab, batch_size=8))
        results.append((samples / (time.perf_counter() - started), sum(fetched) - before))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic-images", type=int, default=0, help="synthetic COCO images instead of the sample")
    args = parser.parse_args()
    from moto.server import ThreadedMotoServer

    from maskx.datasets import storage

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    fetched: list[int] = []
    client = storage.s3_client()
    client.meta.events.register("after-call.s3.GetObject",
                                lambda parsed, **_: fetched.append(int(parsed.get("ContentLength", 0))))
    client.create_bucket(Bucket=BUCKET)
    try:
        with tempfile.TemporaryDirectory(prefix="maskx-cache-bench-") as workdir:
            local = os.path.join(workdir, "shards")
            prepare(local, args.synthetic_images, workdir)
            for folder, _, names in os.walk(local):
                for name in names:
                    relative = os.path.relpath(os.path.join(folder, name), local)
                    storage.write_bytes(f"s3://{BUCKET}/shards/{relative}", Path(folder, name).read_bytes())
            remote = f"s3://{BUCKET}/shards"
            total = sum(os.path.getsize(os.path.join(local, n)) for n in os.listdir(local) if n.endswith(".tar"))
            ways = {"s3, no cache": epochs(remote, None, fetched),
                    "s3, cache": epochs(remote, os.path.join(workdir, "cache"), fetched),
                    "local shards": epochs(local, None, fetched)}
    finally:
        server.stop()
    print(f"\n{total / 1e6:.1f} MB of shards, two epochs each")
    print("| way | MB from S3, epoch 1 | epoch 2 | samples/s, epoch 1 | epoch 2 |")
    print("|---|---|---|---|---|")
    for way, ((speed1, bytes1), (speed2, bytes2)) in ways.items():
        print(f"| {way} | {bytes1 / 1e6:.1f} | {bytes2 / 1e6:.1f} | {speed1:.0f} | {speed2:.0f} |")
    warm, local_speed = ways["s3, cache"][1][0], ways["local shards"][1][0]
    print(f"\nwarm cache vs local shards: {warm / local_speed:.2f}")


if __name__ == "__main__":
    main()
