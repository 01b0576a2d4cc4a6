"""The model MLflow logs, registers and serves: a pyfunc whose artifacts are the weights, config and
vocabulary (no pickled code: MLflow builds it from `pyfunc_model.py`, and the weights load with
weights_only=True).

Scoring protocol: a DataFrame with one column `image` of JPEG or PNG bytes (`binary` in the
signature, so over REST each is a base64 string), e.g.
`{"dataframe_split": {"columns": ["image"], "data": [["/9j/4AAQ..."]]}}`; params `score_threshold`
(default 0.5) and `max_detections` (default 100). The answer has one entry per image: `boxes`
(xyxy, pixels), `class_ids` (the vocabulary's labels), `class_names`, `scores`, and `masks` as COCO
RLE (`{"size": [H, W], "counts": "..."}`).

An image whose header says it is over MASKX_MAX_IMAGE_PIXELS (the server's environment; default
64 million) is refused with a 400 naming the limit, before it is decoded; masks are pasted and
encoded one kept detection at a time (`inference.py`), so a request's memory stays bounded.
"""
import os
from typing import Optional

import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from ..evaluation.records import mask_rles
from ..run_folder import MODEL_FILES_ARTIFACT
from .inference import LoadedModel, decode_image_bytes, inference_device, kept, load_model_files, predict

INPUT_COLUMN = "image"
DEFAULT_PARAMS = {"score_threshold": 0.5, "max_detections": 100}
DEVICE_VARIABLE = "MASKX_DEVICE"  # the serving host's environment: auto (default), cpu or cuda


def detections_json(loaded: LoadedModel, image_bytes: bytes, score_threshold: float, max_detections: int) -> dict:
    image = decode_image_bytes(image_bytes, INPUT_COLUMN)
    detection = predict(loaded.model, image)
    detection = kept(detection, torch.where(detection["scores"] >= score_threshold)[0][:max_detections])  # by score
    labels = detection["labels"].tolist()
    return {"boxes": [[round(v, 2) for v in box] for box in detection["boxes"].tolist()],
            "class_ids": labels, "class_names": [loaded.vocab.name(label) for label in labels],
            "scores": [round(score, 5) for score in detection["scores"].tolist()],
            "masks": mask_rles(detection, tuple(image.shape[-2:])) or []}


class MaskXPyfunc(PythonModel):
    def load_context(self, context) -> None:
        # On the serving host's GPU where it has one; MASKX_DEVICE (auto, cpu, cuda) says otherwise.
        device = inference_device(os.environ.get(DEVICE_VARIABLE, "auto"))
        self.loaded = load_model_files(context.artifacts[MODEL_FILES_ARTIFACT], device)

    def predict(self, context, model_input: pd.DataFrame, params: Optional[dict] = None) -> list[dict]:
        params = {**DEFAULT_PARAMS, **(params or {})}
        try:
            return [detections_json(self.loaded, image, float(params["score_threshold"]), int(params["max_detections"]))
                    for image in model_input[INPUT_COLUMN]]
        except ValueError as exc:  # the request's fault: a 400 with this message, not MLflow's generic one
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
