"""`maskx export`: the inference path as one TorchScript or ONNX file."""
from __future__ import annotations

import argparse


def add_command(sub: argparse._SubParsersAction) -> None:
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
    export.set_defaults(run=run_export)


def run_export(args) -> int:
    from maskx.orchestrator.serving.export import export_model, register_export
    from maskx.orchestrator.serving.inference import load_model
    from maskx.orchestrator.tracking.store import Tracking

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
