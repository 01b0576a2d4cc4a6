"""The model card: what a registered model is, what it was trained on, how good it is, how to use it.
Written from the run into the run's description and the registry's, so that someone picking a model
in the MLflow UI needs to open nothing else."""
from __future__ import annotations

from typing import Optional

from maskx.datasets.vocab import Vocabulary

from ..config import TrainConfig
from ..run_folder import BestModel
from ..run_setup import TrainingData


def _ap(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    return f"{value:.3f}" if value is not None and value >= 0 else "n/a"


def model_card(cfg: TrainConfig, vocab: Vocabulary, metrics: dict, data: list[TrainingData], run_name: str,
               run_id: str, iterations: int, model_uri: Optional[str] = None, best: Optional[BestModel] = None) -> str:
    """`metrics`: the evaluation of the model the card is about; `best`: set where that is the run's
    best evaluation (`checkpoint.keep_best`) rather than its last iteration."""
    set_a = cfg.model.mask_classes or []
    set_b = vocab.num_classes - 1 - len(set_a)
    mask_head = cfg.model.mask_head.mode
    lines = [
        f"**Mask^X R-CNN** (Hu et al., CVPR 2018), {cfg.model.backbone.name}-FPN, mask head `{mask_head}`"
        f"{', box loss focal' if cfg.model.box_loss.kind == 'focal' else ''}: boxes for {vocab.num_classes - 1} "
        f"classes; masks trained on set A ({len(set_a)} classes: {', '.join(map(str, cfg.data.mask_sets))}) and, "
        f"through the weight transfer function, predicted for set B too ({set_b} classes with boxes only).",
        "",
        f"Trained by run `{run_name}` (MLflow run {run_id}): {iterations} iterations of "
        f"{cfg.data.batch_size} images x {cfg.scaling.num_workers} workers (global batch {cfg.data.global_batch_size or cfg.data.batch_size * cfg.scaling.max_workers}), lr {cfg.solver.lr}, config `{cfg.name}`.",
        "",
        "| data | source | images | digest | weight |",
        "|---|---|---:|---|---:|",
    ]
    lines += [f"| {d.context} `{d.url}` | {d.source} | {d.samples} | {d.digest} | {'' if d.weight is None else d.weight} |"
              for d in data]
    if best is not None:
        lines += ["", f"This model is the run's best evaluation by `{best.metric}` ({best.value:.4f}): the weights of "
                      f"iteration {best.iteration} of {iterations} (`checkpoint.keep_best`), not the last iteration's."]
    if any(k.startswith(("bbox/", "segm/")) for k in metrics):
        lines += ["", f"Evaluation on `{cfg.data.val}` ({int(metrics.get('eval/images', 0))} images), COCO AP:", "",
                  "| | box AP | mask AP |", "|---|---:|---:|"]
        lines += [f"| {label} | {_ap(metrics, f'bbox/{key}/AP')} | {_ap(metrics, f'segm/{key}/AP')} |"
                  for label, key in (("all classes", "all"), ("set A (trained with masks)", "setA"),
                                     ("set B (masks by transfer)", "setB"))]
    else:
        lines += ["", "Not evaluated (no `data.val`)."]
    if model_uri:
        lines += ["", "Use it:", "", "```bash",
                  f"maskx predict --model {model_uri} --image IMAGE.jpg --out overlay.png",
                  f"mlflow models serve -m {model_uri} --env-manager local   # POST JPEG bytes to /invocations",
                  "```", "",
                  f"In Python: `maskx.orchestrator.inference.load_model(\"{model_uri}\")` (weights only, nothing "
                  f"unpickled) or `mlflow.pyfunc.load_model(\"{model_uri}\")`."]
    return "\n".join(lines) + "\n"
