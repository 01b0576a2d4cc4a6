"""`maskx predict`: a model over one image, a folder, a glob or shards; in one process or on Ray Data."""
from __future__ import annotations

import argparse


def add_command(sub: argparse._SubParsersAction) -> None:
    predict = sub.add_parser("predict", help="a model over one image (an overlay PNG), or over a folder, glob or "
                                             "shards (COCO results JSON)")
    predict.add_argument("--model", required=True, help="checkpoint folder or MLflow model URI")
    inputs = predict.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--image", help="a JPEG or PNG file; --out is the overlay PNG to write")
    inputs.add_argument("--images", metavar="DIR_OR_GLOB", help="a folder of images or a quoted glob ('val/*.jpg'); "
                                                               "--out is a folder for results.json")
    inputs.add_argument("--shards", metavar="MANIFEST", help="prepared shards (folder, manifest.json or s3://); "
                                                             "--out is a folder for results.json")
    predict.add_argument("--out", required=True, help="PNG to write (--image) or folder for results.json")
    predict.add_argument("--overlays", action="store_true", help="with --images: also an overlay PNG per image in --out")
    predict.add_argument("--batch-size", type=int, default=1,
                         help="images per forward pass (default 1, as maskx eval: a batch pads its images to the "
                              "largest, so with more an image's detections depend slightly on its batch-mates; more "
                              "is faster on a GPU)")
    predict.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                         help="where the model runs in one process (default auto: the GPU where there is one; "
                              "on Ray, --gpus-per-actor)")
    predict.add_argument("--score-threshold", type=float, default=0.5,
                         help="draw detections scoring at least this (default 0.5); results.json keeps every detection")
    on_ray = predict.add_argument_group("on Ray Data (--ray): --images DIR|GLOB|s3://bucket/prefix or --shards, "
                                        "written block by block under --out (a folder or s3://); a rerun skips "
                                        "blocks written already")
    on_ray.add_argument("--ray", action="store_true", help="run on the connected Ray cluster ($RAY_ADDRESS) or a "
                                                          "local one: CPU tasks decode and resize, actors predict")
    on_ray.add_argument("--actors", default="1,1", metavar="MIN,MAX",
                        help="model actors, autoscaled between MIN and MAX (default 1,1)")
    on_ray.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per model actor (default 0: CPU)")
    on_ray.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs per model actor (default 1)")
    on_ray.add_argument("--block-size", type=int, default=64,
                        help="images per written block, a multiple of --batch-size (default 64; a shard is a block)")
    predict.set_defaults(run=run_predict)


def run_predict(args) -> int:
    from maskx.orchestrator.serving import predictions
    from maskx.orchestrator.serving.drawing import write_overlay
    from maskx.orchestrator.serving.inference import inference_device, load_model

    if args.ray:
        return _run_predict_on_ray(args)
    loaded = load_model(args.model, device=inference_device(args.device))
    if args.image:
        drawn = write_overlay(loaded, args.image, args.out, args.score_threshold)
        print(f"{args.out}: {drawn} detections with score >= {args.score_threshold}")
        return 0
    if args.images:
        summary = predictions.predict_images(loaded, args.images, args.out, args.batch_size, args.overlays,
                                             args.score_threshold)
    else:
        summary = predictions.predict_shards(loaded, args.shards, args.out, args.batch_size)
    unreadable = f"; {len(summary.unreadable)} unreadable files skipped: {summary.unreadable}" if summary.unreadable else ""
    print(f"{summary.results}: {summary.detections} detections on {summary.images} images{unreadable}")
    return 0


def _run_predict_on_ray(args) -> int:
    from maskx.orchestrator.serving.inference import model_weights
    from maskx.orchestrator.serving.ray_predictions import predict_on_ray, summary_line

    if args.image or args.overlays:
        raise ValueError("--ray predicts over --images or --shards and writes COCO results: no --image, no --overlays")
    try:
        actors = tuple(int(n) for n in args.actors.split(","))
        if len(actors) == 1:
            actors *= 2
        if len(actors) != 2 or not 1 <= actors[0] <= actors[1]:
            raise ValueError
    except ValueError:
        raise ValueError(f"--actors {args.actors}: MIN,MAX with 1 <= MIN <= MAX, e.g. 2,8 (or one number)") from None
    summary = predict_on_ray(args.model, model_weights(args.model), args.out, images=args.images, shards=args.shards,
                             batch_size=args.batch_size, block_size=args.block_size, actors=actors,
                             gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor)
    print(summary_line(summary))
    for unreadable in summary.unreadable:
        print(f"  unreadable: {unreadable['image']}: {unreadable['reason']}")
    return 0
