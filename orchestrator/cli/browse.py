"""`maskx browse`: prepared shards drawn as the model sees them."""
from __future__ import annotations

import argparse


def add_command(sub: argparse._SubParsersAction) -> None:
    browse = sub.add_parser("browse", help="draw prepared shards as the model sees them (resized, flipped, masks "
                                           "decoded; boxes without masks marked), listing skipped samples")
    browse.add_argument("--shards", required=True, metavar="MANIFEST", help="prepared shards (folder, manifest.json or s3://)")
    browse.add_argument("--out", required=True, help="folder for the PNGs")
    browse.add_argument("--count", type=int, default=16, help="samples to draw (default 16)")
    browse.add_argument("--classes", nargs="+", metavar="NAME", help="only samples with one of these classes")
    browse.add_argument("--config", help="a training config: its data.min_sizes, max_size, flip_prob (default the defaults)")
    browse.set_defaults(run=run_browse)


def run_browse(args) -> int:
    from maskx.orchestrator.config import DataConfig, load_config
    from maskx.orchestrator.reporting.browse import browse

    data = load_config(args.config).data if args.config else DataConfig()
    summary = browse(args.shards, args.out, args.count, args.classes, tuple(data.min_sizes), data.max_size,
                     data.flip_prob)
    print(f"{args.out}: {len(summary.drawn)} samples drawn; {len(summary.skipped)} skipped")
    for why in summary.skipped:
        print(f"  skipped: {why}")
    return 0
