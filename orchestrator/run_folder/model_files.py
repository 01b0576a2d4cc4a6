"""What a logged MLflow model carries of a checkpoint (config, vocabulary, the weights alone), and
where to find it in a downloaded model."""
from __future__ import annotations

import os
import shutil

import torch
import yaml
from torch import nn

from .layout import CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE

MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")  # a model or file in MLflow
MODEL_FILES_ARTIFACT = "model_files"  # the pyfunc artifact: config, vocabulary, weights


def model_files(checkpoint_folder: str, model: nn.Module, out_folder: str) -> str:
    """`out_folder` filled with what a logged model carries: the checkpoint's config and vocabulary,
    and the weights alone (a state dict that loads with weights_only=True)."""
    os.makedirs(out_folder, exist_ok=True)
    for name in (CONFIG_FILE, VOCAB_FILE):
        shutil.copy(os.path.join(checkpoint_folder, name), os.path.join(out_folder, name))
    torch.save(model.state_dict(), os.path.join(out_folder, WEIGHTS_FILE))
    return out_folder


def logged_model_files(model_folder: str, source: str) -> str:
    """The folder with config, vocabulary and weights inside a downloaded MLflow model: the pyfunc
    model's `artifacts/model_files`, or `extra_files` of the pytorch-flavor models maskx logged before."""
    candidates = [os.path.join(model_folder, "extra_files")]
    mlmodel = os.path.join(model_folder, "MLmodel")
    if os.path.exists(mlmodel):
        with open(mlmodel) as f:
            artifacts = (yaml.safe_load(f).get("flavors", {}).get("python_function", {}).get("artifacts") or {})
        if MODEL_FILES_ARTIFACT in artifacts:
            candidates.insert(0, os.path.join(model_folder, artifacts[MODEL_FILES_ARTIFACT]["path"]))
    for folder in candidates:
        if os.path.exists(os.path.join(folder, WEIGHTS_FILE)):
            return folder
    raise ValueError(f"model {source}: no {MODEL_FILES_ARTIFACT}/{WEIGHTS_FILE} to load safely; if you trust its "
                     "source, load it with mlflow.pytorch.load_model (unpickling runs code)")


def load_weights(folder: str) -> dict:
    """The state dict of a logged model's files, with weights_only=True (no unpickling)."""
    return torch.load(os.path.join(folder, WEIGHTS_FILE), map_location="cpu", weights_only=True)
