"""`maskx synth` (synthetic data in the real COCO and VG file formats) and `maskx prepare` (COCO
or Visual Genome, and the vocabulary, to WebDataset shards)."""
from __future__ import annotations

import argparse

from maskx.datasets.shard_format import DEFAULT_MAX_SKIPPED_FRACTION


def add_commands(sub: argparse._SubParsersAction) -> None:
    synth = sub.add_parser("synth", help="write a small synthetic dataset in the real COCO and VG file formats")
    synth.add_argument("--out", required=True, help="folder to write into")
    synth.add_argument("--train-images", type=int, default=200, help="COCO-format train images (default 200)")
    synth.add_argument("--val-images", type=int, default=50, help="COCO-format val images (default 50)")
    synth.add_argument("--vg-images", type=int, default=200, help="VG-format images, boxes only (default 200; 0 for none)")
    synth.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same bytes")
    synth.add_argument("--occlusion", action="store_true",
                       help="overlapping objects with visible-part masks: the ablation's data (docs/ablation.md)")
    synth.add_argument("--families", action="store_true",
                       help="40 classes, 10 shapes x 4 colours, each shape in set A in 2 colours and set B in 2, "
                            "occluded, same-colour neighbours, noise: data where weight transfer can work "
                            "(docs/ablation.md; no VG, --vg-images and --occlusion do not apply)")
    synth.add_argument("--shards", action="store_true",
                       help="write OUT/raw and convert it to shards in OUT/shards (what the tiny configs read)")

    synth.set_defaults(run=run_synth)

    prepare_parser = sub.add_parser("prepare", help="convert COCO or Visual Genome to WebDataset shards")
    prepare_parser.set_defaults(run=run_prepare)
    prepare = prepare_parser.add_subparsers(dest="source", required=True)
    vocab = prepare.add_parser("vocab", help="build the class vocabulary shared by every source")
    vocab.add_argument("--coco", help="a COCO instances JSON whose categories to use (default: COCO 2017's 80)")
    vocab.add_argument("--vg-objects", help="VG objects.json to take the most frequent synsets from")
    vocab.add_argument("--vg-classes", type=int, default=3000, help="K most frequent VG synsets (default 3000)")
    vocab.add_argument("--out", required=True, help="vocab.json to write")
    coco = prepare.add_parser("coco", help="COCO instances JSON + images -> shards")
    coco.add_argument("--annotations", required=True, help="the split's instances JSON, e.g. annotations/instances_val2017.json")
    coco.add_argument("--images", required=True, nargs="+", metavar="FOLDER_OR_ZIP",
                      help="the split's images as distributed: the val2017/ folder or val2017.zip, local or s3://")
    _add_prepare_common(coco)
    vg = prepare.add_parser("vg", help="Visual Genome image_data.json + objects.json + images -> shards")
    vg.add_argument("--image-data", required=True, help="VG's image_data.json (sizes, urls, coco_id)")
    vg.add_argument("--objects", required=True, help="VG's objects.json (boxes and synsets)")
    vg.add_argument("--images", required=True, nargs="+", metavar="FOLDER_OR_ZIP",
                    help="VG's images.zip and images2.zip, or the folder holding VG_100K/ and VG_100K_2/ (or every "
                         "image flat), local or s3://")
    vg.add_argument("--vg-classes", type=int, default=3000, help="without --vocab: keep the K most frequent synsets (default 3000)")
    vg.add_argument("--split", choices=["train", "val", "test"],
                    help="one of the paper's splits (needs --coco-val): val, the VG images of the COCO val annotations; "
                         "test, the last --test-images VG images in release order that are no COCO image; train, the rest")
    vg.add_argument("--coco-val", metavar="ANNOTATIONS_JSON",
                    help="with --split: the COCO annotations whose images form VG val (the paper's minival2014 = val2017)")
    vg.add_argument("--test-images", type=int, default=5000, help="with --split: the size of VG test (default 5000, the paper's)")
    vg.add_argument("--exclude-coco", action="append", default=[], metavar="ANNOTATIONS_JSON",
                    help="leave out VG images that are in this COCO split (its instances JSON), e.g. the val2017 you "
                         "evaluate on; repeatable")
    _add_prepare_common(vg)


def _add_prepare_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-skipped-fraction", type=float, default=DEFAULT_MAX_SKIPPED_FRACTION,
                        help="fail, writing no manifest, when more than this fraction of the listed images is missing "
                             f"or unreadable (default {DEFAULT_MAX_SKIPPED_FRACTION})")
    parser.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    parser.add_argument("--vocab", help="vocab.json from `maskx prepare vocab` (shared by every source)")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    parser.add_argument("--workers", type=int, default=None, help="conversion processes (default: all cores)")
    parser.add_argument("--ray", action="store_true", help="convert shards as Ray tasks on the connected cluster")


def run_synth(args) -> int:
    if args.families:
        from maskx.datasets.synth_families import write_families, write_family_shards

        write = write_family_shards if args.shards else write_families
        paths = write(args.out, args.train_images, args.val_images, args.seed)
    else:
        from maskx.datasets.synth import write_synthetic, write_synthetic_shards

        write = write_synthetic_shards if args.shards else write_synthetic
        paths = write(args.out, args.train_images, args.val_images, args.vg_images, args.seed, args.occlusion)
    for name, path in paths.items():
        print(f"{name:24} {path}")
    return 0


def run_prepare(args) -> int:
    from maskx.datasets import prepare

    if args.source == "vocab":
        vocab = prepare.prepare_vocabulary(args.coco, args.vg_objects, args.vg_classes)
        vocab.save(args.out)
        print(f"{args.out}: {vocab.num_classes - 1} classes ({len(vocab.class_set('coco'))} COCO, {len(vocab.class_set('vg'))} VG-only)")
        if vocab.coco_targets_not_kept:
            print(f"{len(vocab.coco_targets_not_kept)} COCO classes have no VG class among the top {args.vg_classes} "
                  "synsets (their VG objects are left out, as in the paper): " + ", ".join(
                      f"{name} ({synset or 'no synset of that name'})" for name, synset in vocab.coco_targets_not_kept.items()))
        return 0
    map_tasks = None
    if args.ray:
        from maskx.orchestrator.ray_cluster import ray_map

        map_tasks = ray_map
    common = dict(vocab_path=args.vocab, shard_size=args.shard_size, workers=args.workers, map_tasks=map_tasks,
                  max_skipped_fraction=args.max_skipped_fraction)
    if args.source == "coco":
        manifest = prepare.prepare_coco(args.annotations, args.images, args.out, **common)
    else:
        manifest = prepare.prepare_vg(args.image_data, args.objects, args.images, args.out, vg_classes=args.vg_classes,
                                      exclude_coco=args.exclude_coco, split=args.split, coco_val=args.coco_val,
                                      test_images=args.test_images, **common)
    counts = manifest.counts[manifest.source]
    excluded = f", {counts['excluded_coco_images']} COCO images excluded" if "excluded_coco_images" in counts else ""
    if "split" in counts:
        excluded += (f"; split {counts['split']} (train {counts['train_split_images']}, val {counts['val_split_images']}, "
                     f"test {counts['test_split_images']} images listed)")
    print(f"{manifest.location}: {len(manifest.shards)} shards, {counts['images']} images, "
          f"{counts['instances']} instances, {len(manifest.skipped)} inputs skipped (listed in the manifest){excluded}")
    from maskx.orchestrator.reporting.data_figures import write_classes_figure

    print(f"{write_classes_figure(manifest)}: images and objects per class")
    return 0
