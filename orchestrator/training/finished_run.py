"""What a finished run leaves in MLflow: its evaluation tables, overlays of a few val images, the
model (the serving pyfunc: `serving/model_logging.py`), registered, and the model card on the run and
the version."""
from __future__ import annotations

import os
import tempfile
from typing import Optional

import torch
from torchvision.io import encode_jpeg, write_png

from maskx.datasets.stream import EvalStream

from .. import run_folder
from ..run_setup import RunSetup
from ..serving.drawing import draw_predictions
from ..serving.inference import load_model, predict
from ..serving.model_logging import log_model
from ..tracking.model_card import model_card
from ..tracking.store import TrackedRun

OVERLAY_IMAGES = 4  # val images drawn with the final model's detections


def log_finished_run(setup: RunSetup, checkpoint_folder: str, mlflow_run: TrackedRun, run_name: str,
                     best: Optional[tuple[run_folder.BestModel, str]] = None) -> tuple[dict, Optional[str]]:
    """Eval tables from the run's last checkpoint; overlays and the model (registered) from it too, or
    from `best` (the best model by `checkpoint.keep_best` and its local folder). Returns the last
    evaluation's metrics and the registered version."""
    cfg = setup.config
    unsent = run_folder.read_unsent_metrics(checkpoint_folder)
    if unsent:
        mlflow_run.log_unsent(unsent)
    model_folder = best[1] if best else checkpoint_folder
    loaded = load_model(model_folder)
    metrics = {}
    evaluation = run_folder.read_evaluation(checkpoint_folder)
    if evaluation:
        metrics = evaluation["metrics"]
        set_a = [loaded.vocab.name(label) for label in loaded.config.model.mask_classes or []]
        mlflow_run.log_evaluation(evaluation["per_class_ap"], set_a)
        mlflow_run.log_artifact(run_folder.eval_path(checkpoint_folder), "eval")
    model_evaluation = run_folder.read_evaluation(model_folder) or {"metrics": {}}
    example = None
    if setup.val_sources:
        with tempfile.TemporaryDirectory() as folder:
            for i, batch in enumerate(EvalStream(setup.val_sources, setup.vocab, batch_size=1)):
                if i == OVERLAY_IMAGES:
                    break
                image = batch.images[0]
                example = encode_jpeg(image).numpy().tobytes() if example is None else example
                path = os.path.join(folder, f"{batch.keys[0].replace('/', '_')}.png")
                write_png(draw_predictions(image, predict(loaded.model, image), setup.vocab, setup.set_a), path)
                mlflow_run.log_artifact(path, "overlays")
    if example is None:
        size = loaded.config.model.min_size
        example = encode_jpeg(torch.zeros(3, size, size, dtype=torch.uint8)).numpy().tobytes()
    chosen = {} if best is None else {"maskx.iteration": str(best[0].iteration), "maskx.best_by": best[0].metric,
                                       "maskx.best_value": str(best[0].value)}
    with tempfile.TemporaryDirectory() as folder:
        files = run_folder.model_files(model_folder, loaded.model, os.path.join(folder, run_folder.MODEL_FILES_ARTIFACT))
        version = log_model(mlflow_run, files, example, cfg.mlflow.registered_model, tags=chosen)
    model_uri = f"models:/{cfg.mlflow.registered_model}/{version}" if version else f"runs:/{mlflow_run.run_id}/model"
    card = model_card(cfg, loaded.vocab, model_evaluation["metrics"], setup.lineage(), run_name, mlflow_run.run_id,
                      cfg.solver.max_iter, model_uri, best=best[0] if best else None)
    mlflow_run.set_description(card)
    if version:
        mlflow_run.tracking.describe(cfg.mlflow.registered_model, version, card)
    return metrics, version
