"""The logged model is the served one: `log_model` logs the pyfunc from code (`pyfunc_model.py`
building `pyfunc.MaskXPyfunc`) with its signature, an input example and its pip requirements, and
registers it. A finished run calls it (`training/finished_run.py`)."""
from __future__ import annotations

import os
from typing import Optional

import torch

from .. import run_folder
from ..tracking.store import TrackedRun, mlflow_at
from .pyfunc import DEFAULT_PARAMS, INPUT_COLUMN

PYFUNC_MODEL_CODE = os.path.join(os.path.dirname(__file__), "pyfunc_model.py")


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
