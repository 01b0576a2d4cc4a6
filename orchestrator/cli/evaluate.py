"""`maskx eval`: COCO box and mask AP of a model on the config's data.val."""
from __future__ import annotations

import argparse

from .common import print_metrics


def add_command(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser("eval", help="COCO box and mask AP (overall, set A, set B) of a model on data.val")
    evaluate.add_argument("--config", required=True, help="config whose data.val and data.mask_sets to use")
    evaluate.add_argument("overrides", nargs="*", metavar="dotted.key=value", help="config overrides, e.g. data.val=s3://b/coco-val2017")
    evaluate.add_argument("--model", required=True, help="checkpoint folder, runs:/ID/model, models:/NAME/VERSION or models:/NAME@ALIAS")
    evaluate.add_argument("--json", help="also write the metrics and per-class AP here, and the detections as COCO "
                                          "results (results.json, categories.json) in the same folder")
    evaluate.set_defaults(run=run_eval)


def run_eval(args) -> int:
    import json
    import os

    from maskx.orchestrator.config import load_config
    from maskx.orchestrator.run_setup import set_up_run
    from maskx.orchestrator.serving.inference import evaluate_model
    from maskx.orchestrator.serving.predictions import RESULTS_FILE, coco_results, write_results

    setup = set_up_run(load_config(args.config, args.overrides), train=False)
    evaluation = evaluate_model(setup, args.model)
    print_metrics(evaluation.metrics)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(evaluation.summary(), f, indent=1)
        results = os.path.join(os.path.dirname(os.path.abspath(args.json)), RESULTS_FILE)
        write_results(results, coco_results(evaluation.detections, setup.vocab), setup.vocab)
        print(f"{args.json}: metrics; {results}: {len(evaluation.detections)} detections as COCO results")
    return 0
