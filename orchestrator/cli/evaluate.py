"""`maskx eval`: COCO box and mask AP of a model on val shards (`--shards`, or the config's data.val)."""
from __future__ import annotations

import argparse

from .common import print_metrics

EVAL_FILE = "eval.json"  # in --out: metrics, per-class AP, curves (what a checkpoint's eval.json holds)


def add_command(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser("eval", help="COCO box and mask AP (overall, set A, set B) of a model on val shards")
    evaluate.add_argument("--model", required=True, help="checkpoint folder (local or s3://), runs:/ID/model, "
                                                         "models:/NAME/VERSION or models:/NAME@ALIAS")
    evaluate.add_argument("--shards", metavar="MANIFEST", help="val shards (folder, manifest.json or s3://), as "
                                                               "predict takes them (default: the config's data.val)")
    evaluate.add_argument("--config", help="config whose data.val, data.mask_sets and eval settings to use (default: "
                                           "the model's own, which needs --shards)")
    evaluate.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                          help="where the model runs (default auto: the GPU where there is one)")
    evaluate.add_argument("overrides", nargs="*", metavar="dotted.key=value", help="config overrides, e.g. "
                                                                                   "eval_batch_size=4")
    written = evaluate.add_mutually_exclusive_group()
    written.add_argument("--out", metavar="FOLDER", help=f"also write {EVAL_FILE} (metrics, per-class AP), the "
                                                         "detections as COCO results (results.json) and "
                                                         "categories.json into this folder (local)")
    written.add_argument("--json", help="as --out, the metrics in this file and the results beside it")
    evaluate.set_defaults(run=run_eval)


def run_eval(args) -> int:
    import json
    import os

    from maskx.orchestrator.config import apply_override, load_config, validate
    from maskx.orchestrator.run_setup import set_up_run
    from maskx.orchestrator.serving.inference import evaluate_model, inference_device, model_weights
    from maskx.orchestrator.serving.predictions import RESULTS_FILE, coco_results, write_results

    if args.config:
        cfg = load_config(args.config, args.overrides)
    elif not args.shards:
        raise ValueError("name the val shards: --shards MANIFEST, or --config with data.val")
    else:  # the model's own config: its set A, its eval settings; paths and the store are this machine's
        tree = model_weights(args.model)[0].to_dict()
        tree["root"], tree["mlflow"]["tracking_uri"] = None, None
        for override in args.overrides:
            apply_override(tree, override)
        cfg = validate(tree)
    if args.shards:
        cfg.data.val = args.shards
    setup = set_up_run(cfg, train=False)
    evaluation = evaluate_model(setup, args.model, inference_device(args.device))
    print_metrics(evaluation.metrics)
    if args.out or args.json:
        metrics_file = os.path.join(args.out, EVAL_FILE) if args.out else os.path.abspath(args.json)
        os.makedirs(os.path.dirname(metrics_file), exist_ok=True)
        with open(metrics_file, "w") as f:
            json.dump(evaluation.summary(), f, indent=1)
        results = os.path.join(os.path.dirname(metrics_file), RESULTS_FILE)
        write_results(results, coco_results(evaluation.detections, setup.vocab), setup.vocab)
        print(f"{metrics_file}: metrics; {results}: {len(evaluation.detections)} detections as COCO results")
    return 0
