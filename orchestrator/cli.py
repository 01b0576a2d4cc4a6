"""The `maskx` command line: synth, prepare, train, tune, eval, predict, export, browse, report, mlflow-server, demo."""
from __future__ import annotations

import argparse
import logging
import sys
import traceback

from maskx.datasets.shard_format import DEFAULT_MAX_SKIPPED_FRACTION
from maskx.orchestrator.redaction import redact, redact_logs

EXIT_BAD_INPUT = 2  # a config, path or input the command cannot use (argparse's usage errors exit 2 too)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def _add_prepare_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-skipped-fraction", type=float, default=DEFAULT_MAX_SKIPPED_FRACTION,
                        help="fail, writing no manifest, when more than this fraction of the listed images is missing "
                             f"or unreadable (default {DEFAULT_MAX_SKIPPED_FRACTION})")
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

    prepare = sub.add_parser("prepare", help="convert COCO or Visual Genome to WebDataset shards").add_subparsers(dest="source", required=True)
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

    train = sub.add_parser("train", help="train on the connected Ray cluster (or a local one), tracked in MLflow")
    train.add_argument("--config", required=True, help="YAML config, e.g. configs/tiny-cpu.yaml")
    train.add_argument("overrides", nargs="*", metavar="dotted.key=value", help="config overrides, e.g. solver.lr=0.01")
    train.add_argument("--resume", metavar="RUN_NAME", help="continue this run from its latest checkpoint")
    train.add_argument("--run-name", metavar="NAME", help="create this run, or continue it if it exists (a cluster job "
                                                          "that may be retried; default: a new name each time)")
    train.add_argument("--record-keys-to", metavar="FOLDER",
                       help="audit what the model saw: each rank appends every sample key it trains on, with its "
                            "iteration, to FOLDER/rank{R}.txt on the host it runs on")
    # SUPPRESS: without the flag here, `maskx -v train` keeps the top-level -v.
    train.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="also show Ray Train's record of every report and MLflow's upload progress bars "
                            "(and debug logging, as -v)")

    tune = sub.add_parser("tune", help="Ray Tune sweep over the config's sweep.space; promotes the best model to champion")
    tune.add_argument("--config", required=True, help="YAML config with a sweep section, e.g. configs/sweep-tiny-cpu.yaml")
    tune.add_argument("overrides", nargs="*", metavar="dotted.key=value", help="config overrides, e.g. sweep.max_concurrent_trials=4")
    tune.add_argument("--sweep", metavar="SWEEP_YAML",
                      help="a file whose sweep: section replaces the config's, e.g. configs/ablation-mask-head.yaml")
    tune.add_argument("--resume", metavar="SWEEP_FOLDER", help="continue an interrupted sweep (finished trials are not rerun)")

    evaluate = sub.add_parser("eval", help="COCO box and mask AP (overall, set A, set B) of a model on data.val")
    evaluate.add_argument("--config", required=True, help="config whose data.val and data.mask_sets to use")
    evaluate.add_argument("overrides", nargs="*", metavar="dotted.key=value", help="config overrides, e.g. data.val=s3://b/coco-val2017")
    evaluate.add_argument("--model", required=True, help="checkpoint folder, runs:/ID/model, models:/NAME/VERSION or models:/NAME@ALIAS")
    evaluate.add_argument("--json", help="also write the metrics and per-class AP here, and the detections as COCO "
                                          "results (results.json, categories.json) in the same folder")

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

    export = sub.add_parser("export", help="the whole inference path as one TorchScript or ONNX file, for a fixed "
                                           "input size")
    export.add_argument("--model", required=True, help="checkpoint folder or MLflow model URI")
    export.add_argument("--format", required=True, choices=["torchscript", "onnx"],
                        help="torchscript (torch.jit.load, libtorch) or onnx (onnxruntime, TensorRT)")
    export.add_argument("--out", required=True, help="file to write, e.g. maskx.pt or maskx.onnx")
    export.add_argument("--size", default="480,640", metavar="H,W",
                        help="the input size the file takes (default 480,640): images resized or padded to it")
    export.add_argument("--register", action="store_true",
                        help="also log the file beside the MLflow model it came from (its run's exports/) and name it "
                             "in the registered version's tag maskx.export.FORMAT")

    browse = sub.add_parser("browse", help="draw prepared shards as the model sees them (resized, flipped, masks "
                                           "decoded; boxes without masks marked), listing skipped samples")
    browse.add_argument("--shards", required=True, metavar="MANIFEST", help="prepared shards (folder, manifest.json or s3://)")
    browse.add_argument("--out", required=True, help="folder for the PNGs")
    browse.add_argument("--count", type=int, default=16, help="samples to draw (default 16)")
    browse.add_argument("--classes", nargs="+", metavar="NAME", help="only samples with one of these classes")
    browse.add_argument("--config", help="a training config: its data.min_sizes, max_size, flip_prob (default the defaults)")

    report = sub.add_parser("report", help="the HTML report of an MLflow run or sweep (figures, curves, model card, config)")
    report.add_argument("run_id", metavar="RUN_ID", nargs="?", help="MLflow run id (a training run or a sweep's parent run)")
    report.add_argument("--experiment", metavar="NAME", help="instead of RUN_ID: the newest run of this MLflow experiment")
    report.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    report.add_argument("--out", help="HTML file to write (default report-RUN_ID.html)")
    report.add_argument("--log", action="store_true", help="also log it to the run as report.html, replacing the one there")

    server = sub.add_parser("mlflow-server", help="run an MLflow tracking server: sqlite and artifacts under --store for one "
                                                   "person; PostgreSQL, S3 and logins for a team (docs/cluster.md)")
    server.add_argument("--store", default="mlflow-server", help="folder for mlflow.db and artifacts when no others are "
                                                                 "given, and the login config (default mlflow-server)")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: not reachable from other machines)")
    server.add_argument("--port", type=int, default=5000, help="port to listen on (default 5000)")
    server.add_argument("--backend-store-uri", metavar="URI",
                        help="runs and registry: postgresql://USER@HOST:PORT/DB, its password in PGPASSWORD or ~/.pgpass "
                             "(default $MLFLOW_BACKEND_STORE_URI, else sqlite in --store)")
    server.add_argument("--artifacts-destination", metavar="URL",
                        help="where artifacts go, e.g. s3://BUCKET/PREFIX with this host's AWS credentials; clients "
                             "upload through the server and need none (default a folder in --store)")
    server.add_argument("--auth", action="store_true",
                        help="logins and permissions (MLflow's basic-auth app); the admin's first password from "
                             "MLFLOW_AUTH_ADMIN_PASSWORD or --admin-password-file")
    server.add_argument("--admin-password-file", metavar="FILE", help="with --auth: a file holding the admin's first password")
    server.add_argument("--auth-database-uri", metavar="URI", help="with --auth: users and permissions (default the "
                                                                   "--backend-store-uri database)")
    server.add_argument("--default-permission", default="READ", help="with --auth: what a user may do with others' "
                                                                     "experiments and models (READ, EDIT, MANAGE, NO_PERMISSIONS)")
    server.add_argument("--allowed-hosts", metavar="NAME,...", default="",
                        help="names clients reach the server by, e.g. mlflow.mlflow.svc.cluster.local: MLflow answers "
                             "other Host headers than localhost and private IPs with 403")
    server.add_argument("--cors-allowed-origins", metavar="URL,...", default="",
                        help="origins of other web apps whose pages may call the API, e.g. https://dash.example.com")
    server.add_argument("--insecure-no-auth", action="store_true",
                        help="allow --host beyond loopback without --auth (anyone who reaches it can edit everything)")
    server.add_argument("--workers", type=int, default=1, help="server processes (default 1; more with PostgreSQL)")

    demo = sub.add_parser("demo", help="the embedded end-to-end demo: synthetic data, local Ray, local MLflow")
    demo.add_argument("--out", default="demo-out", help="folder for data, shards and checkpoints (default demo-out)")
    demo.add_argument("overrides", nargs="*", metavar="dotted.key=value", help="overrides of configs/tiny-cpu.yaml")
    return parser


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


def run_train(args) -> int:
    from maskx.orchestrator.config import load_config
    from maskx.orchestrator.training.trainer import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg, resume=args.resume, run_name=args.run_name, record_keys_to=args.record_keys_to,
                   verbose=args.verbose)
    print(f"run {result.run_name}: checkpoint {result.checkpoint}")
    _print_metrics(result.metrics)
    if result.model_version:
        print(f"registered models:/{cfg.mlflow.registered_model}/{result.model_version}")
    return 0


def run_tune(args) -> int:
    from maskx.orchestrator.config import load_config
    from maskx.orchestrator.tuning.sweep import reproduce_command, sweep

    cfg = load_config(args.config, args.overrides, sweep_path=args.sweep)
    result = sweep(cfg, resume=args.resume, write=lambda line: print(line, flush=True))
    print(f"sweep {result.sweep_folder} (MLflow parent run {result.parent_run_id})")
    print(f"{'trial':28} {'status':14} {cfg.sweep.metric:>14}  params")
    for trial in result.trials:
        value = "-" if trial.metric is None else f"{trial.metric:.4f}"
        print(f"{trial.trial[:28]:28} {trial.status:14} {value:>14}  {trial.params}")
    if result.best:
        print(f"best: {result.best.trial} {cfg.sweep.metric}={result.best.metric:.4f}")
        print(f"reproduce: {reproduce_command(args.config, result.best)}")
    if result.interrupted:
        again = f" --sweep {args.sweep}" if args.sweep else ""
        print(f"interrupted: continue with maskx tune --config {args.config}{again} --resume {result.sweep_folder}")
        return EXIT_INTERRUPTED
    print(f"promotion: {result.promotion.decision}")
    if result.variant_table:
        print(f"variants (AP x100, mean ± std over seeds; also in {result.sweep_folder}/variants.md):")
        print(result.variant_table, end="")
    return 0


def run_eval(args) -> int:
    import json
    import os

    from maskx.orchestrator.config import load_config
    from maskx.orchestrator.run_setup import set_up_run
    from maskx.orchestrator.serving.inference import evaluate_model
    from maskx.orchestrator.serving.predictions import RESULTS_FILE, coco_results, write_results

    setup = set_up_run(load_config(args.config, args.overrides), train=False)
    evaluation = evaluate_model(setup, args.model)
    _print_metrics(evaluation.metrics)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(evaluation.summary(), f, indent=1)
        results = os.path.join(os.path.dirname(os.path.abspath(args.json)), RESULTS_FILE)
        write_results(results, coco_results(evaluation.detections, setup.vocab), setup.vocab)
        print(f"{args.json}: metrics; {results}: {len(evaluation.detections)} detections as COCO results")
    return 0


def run_predict(args) -> int:
    from maskx.orchestrator.serving import predictions
    from maskx.orchestrator.serving.drawing import write_overlay
    from maskx.orchestrator.serving.inference import load_model

    if args.ray:
        return _run_predict_on_ray(args)
    loaded = load_model(args.model)
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


def run_export(args) -> int:
    from maskx.orchestrator.serving.export import export_model, register_export
    from maskx.orchestrator.serving.inference import load_model
    from maskx.orchestrator.serving.tracking import Tracking

    try:
        height, width = (int(n) for n in args.size.split(","))
    except ValueError:
        raise ValueError(f"--size {args.size}: H,W in pixels, e.g. 480,640") from None
    if args.register and not args.model.startswith(("runs:/", "models:/")):
        raise ValueError(f"--register: --model {args.model} is no MLflow model (runs:/ID/model or models:/NAME/VERSION)")
    export_model(load_model(args.model), args.format, args.out, (height, width))
    print(f"{args.out}: {args.format}, one image (3, {height}, {width}) float RGB in [0, 1] -> boxes, labels, scores, masks")
    if args.register:
        print(f"logged as {register_export(Tracking(), args.model, args.out, args.format)}")
    return 0


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


def run_report(args) -> int:
    from maskx.orchestrator.reporting.report import build_report, log_report
    from maskx.orchestrator.serving.tracking import Tracking

    if (args.run_id is None) == (args.experiment is None):
        raise ValueError("name a run: RUN_ID or --experiment NAME (its newest run), not both")
    tracking = Tracking(args.tracking_uri)
    run_id = args.run_id or tracking.newest_run(args.experiment)
    out = args.out or f"report-{run_id}.html"
    with open(out, "w") as f:
        f.write(build_report(tracking, run_id))
    print(f"{out}: report of run {run_id} in {tracking.redacted_uri}")
    if args.log:
        log_report(tracking.run(run_id))
        print("logged to the run as report.html")
    return 0


def split_names(listed: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in listed.split(",") if name.strip())


def server_setup(args):
    """`maskx mlflow-server`'s flags as the tracking server's ServerSetup."""
    from maskx.orchestrator.serving.tracking_server import ServerSetup

    return ServerSetup(store=args.store, host=args.host, port=args.port, backend_store_uri=args.backend_store_uri,
                       artifacts_destination=args.artifacts_destination, auth=args.auth,
                       admin_password_file=args.admin_password_file, auth_database_uri=args.auth_database_uri,
                       default_permission=args.default_permission, workers=args.workers,
                       allowed_hosts=split_names(args.allowed_hosts),
                       cors_allowed_origins=split_names(args.cors_allowed_origins),
                       insecure_no_auth=args.insecure_no_auth)


def run_mlflow_server(args) -> int:
    import os

    from maskx.orchestrator.serving.tracking_server import describe, server_command

    setup = server_setup(args)
    command, environment = server_command(setup)
    print(describe(setup), flush=True)
    os.execve(command[0], command, {**os.environ, **environment})


def run_demo_command(args) -> int:
    from maskx.orchestrator.demo import run_demo

    return run_demo(args.out, overrides=args.overrides)


def _print_metrics(metrics: dict) -> None:
    for iou_type, title in (("bbox", "box "), ("segm", "mask")):
        if f"{iou_type}/all/AP" in metrics:
            row = "  ".join(f"{subset} AP {metrics[f'{iou_type}/{subset}/AP']:.3f} AP50 {metrics[f'{iou_type}/{subset}/AP50']:.3f}"
                            for subset in ("all", "setA", "setB"))
            print(f"{title}  {row}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    redact_logs()
    commands = {"synth": run_synth, "prepare": run_prepare, "train": run_train, "tune": run_tune, "eval": run_eval,
                "predict": run_predict, "export": run_export, "browse": run_browse, "report": run_report, "demo": run_demo_command,
                "mlflow-server": run_mlflow_server}
    try:
        return commands[args.command](args)
    except (FileNotFoundError, PermissionError, ValueError, RuntimeError) as exc:
        print(redact(f"maskx {args.command}: {exc}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception:  # anything else (MLflow's own errors embed the tracking URI): its traceback, redacted
        print(redact(traceback.format_exc()), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
