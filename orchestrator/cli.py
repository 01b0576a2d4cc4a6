"""The `maskx` command line: synth, prepare, and (as they land) train, eval, predict, tune, demo."""
from __future__ import annotations

import argparse
import logging
import sys


def _add_prepare_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    parser.add_argument("--vocab", help="vocab.json from `maskx prepare vocab` (shared by every source)")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    parser.add_argument("--workers", type=int, default=None, help="conversion processes (default: all cores)")
    parser.add_argument("--ray", action="store_true", help="convert shards as Ray tasks on the connected cluster")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskx", description="Mask^X R-CNN on COCO + Visual Genome, trained on Ray, tracked in MLflow")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="write a small synthetic dataset in the real COCO and VG file formats")
    synth.add_argument("--out", required=True)
    synth.add_argument("--train-images", type=int, default=200)
    synth.add_argument("--val-images", type=int, default=50)
    synth.add_argument("--vg-images", type=int, default=200)
    synth.add_argument("--seed", type=int, default=0)

    prepare = sub.add_parser("prepare", help="convert COCO or Visual Genome to WebDataset shards").add_subparsers(dest="source", required=True)
    vocab = prepare.add_parser("vocab", help="build the class vocabulary shared by every source")
    vocab.add_argument("--coco", help="a COCO instances JSON whose categories to use (default: COCO 2017's 80)")
    vocab.add_argument("--vg-objects", help="VG objects.json to take the most frequent synsets from")
    vocab.add_argument("--vg-classes", type=int, default=3000, help="K most frequent VG synsets (default 3000)")
    vocab.add_argument("--out", required=True, help="vocab.json to write")
    coco = prepare.add_parser("coco", help="COCO instances JSON + images -> shards")
    coco.add_argument("--annotations", required=True)
    coco.add_argument("--images", required=True)
    _add_prepare_common(coco)
    vg = prepare.add_parser("vg", help="Visual Genome image_data.json + objects.json + images -> shards")
    vg.add_argument("--image-data", required=True)
    vg.add_argument("--objects", required=True)
    vg.add_argument("--images", required=True)
    vg.add_argument("--vg-classes", type=int, default=3000)
    _add_prepare_common(vg)

    sub.add_parser("demo", help="the embedded end-to-end demo (not yet: see the orchestrator issue)")
    return parser


def run_synth(args) -> int:
    from datasets.synth import write_synthetic

    paths = write_synthetic(args.out, args.train_images, args.val_images, args.vg_images, args.seed)
    for name, path in paths.items():
        print(f"{name:24} {path}")
    return 0


def run_prepare(args) -> int:
    from datasets import prepare

    if args.source == "vocab":
        vocab = prepare.prepare_vocabulary(args.coco, args.vg_objects, args.vg_classes)
        vocab.save(args.out)
        print(f"{args.out}: {vocab.num_classes - 1} classes ({len(vocab.class_set('coco'))} COCO, {len(vocab.class_set('vg'))} VG-only)")
        return 0
    map_tasks = None
    if args.ray:
        from orchestrator.ray_tasks import ray_map

        map_tasks = ray_map
    if args.source == "coco":
        manifest = prepare.prepare_coco(args.annotations, args.images, args.out, args.vocab, args.shard_size, args.workers, map_tasks)
    else:
        manifest = prepare.prepare_vg(args.image_data, args.objects, args.images, args.out, args.vocab, args.vg_classes,
                                      args.shard_size, args.workers, map_tasks)
    counts = manifest.counts[manifest.source]
    print(f"{manifest.location}: {len(manifest.shards)} shards, {counts['images']} images, "
          f"{counts['instances']} instances, {len(manifest.skipped)} inputs skipped (listed in the manifest)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "synth":
            return run_synth(args)
        if args.command == "prepare":
            return run_prepare(args)
        if args.command == "demo":
            print("maskx demo: not yet - `maskx train` lands with the orchestrator issue. "
                  "Meanwhile: maskx synth --out data && maskx prepare coco ... (see README).")
            return 0
    except (FileNotFoundError, PermissionError, ValueError) as exc:
        print(f"maskx {args.command}: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
