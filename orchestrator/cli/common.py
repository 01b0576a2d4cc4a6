"""What the commands share: exit codes and the metrics line."""

EXIT_FAILURE = 1  # the command ran and failed (a run, the tracking server, a library): -v shows the traceback
EXIT_BAD_INPUT = 2  # a config, path or input the command cannot use (argparse's usage errors exit 2 too)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def print_metrics(metrics: dict) -> None:
    for iou_type, title in (("bbox", "box "), ("segm", "mask")):
        if f"{iou_type}/all/AP" in metrics:
            row = "  ".join(f"{subset} AP {metrics[f'{iou_type}/{subset}/AP']:.3f} AP50 {metrics[f'{iou_type}/{subset}/AP50']:.3f}"
                            for subset in ("all", "setA", "setB"))
            print(f"{title}  {row}")
