"""What a finished run leaves in MLflow: its evaluation tables, overlays of a few val images, the
model (a pyfunc from code, `pyfunc.py`), registered, and the model card on the run and the version."""
from __future__ import annotations

import os
import tempfile
from typing import Optional

import torch
from torchvision.io import encode_jpeg, write_png

from maskx.datasets.stream import EvalStream

from .. import run_folder
from ..run_setup import RunSetup
from .drawing import draw_predictions
from .inference import load_model, predict
from .model_card import model_card
from .pyfunc import DEFAULT_PARAMS, INPUT_COLUMN
from .tracking import TrackedRun, mlflow_at

OVERLAY_IMAGES = 4  # val images drawn with the final model's detections
PYFUNC_MODEL_CODE = os.path.join(os.path.dirname(__file__), "pyfunc_model.py")


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


def log_model(mlflow_run: TrackedRun, model_files: str, example_image: bytes, registered_model: Optional[str],
              tags: Optional[dict[str, str]] = None) -> Optional[str]:
    """Log the serving model (`pyfunc.py`: a pyfunc from code, artifacts `model_files`) with its
    signature and a real image as input example; register it, with `tags` on the version. Returns
    the version."""
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    mlflow = mlflow_at(mlflow_run.tracking.uri)
    signature = ModelSignature(
        inputs=Schema([ColSpec("binary", INPUT_COLUMN)]),
        params=ParamSchema([ParamSpec("score_threshold", "double", DEFAULT_PARAMS["score_threshold"]),
                            ParamSpec("max_detections", "long", DEFAULT_PARAMS["max_detections"])]))
    # A run maskx is still in: the fluent API needs it active to log a model into it.
    with mlflow.start_run(run_id=mlflow_run.run_id):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=PYFUNC_MODEL_CODE, artifacts={run_folder.MODEL_FILES_ARTIFACT: model_files},
            signature=signature, input_example=pd.DataFrame({INPUT_COLUMN: [example_image]}),
            pip_requirements=_pip_requirements())
    if not registered_model:
        return None
    return mlflow_run.tracking.register(info.model_uri, registered_model, {"run_id": mlflow_run.run_id, **(tags or {})})


def _pip_requirements() -> list[str]:
    # mlflow's inference would pin whatever the env holds; the model needs only these to load.
    import torchvision

    return [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}", "maskx"]
