"""A model once trained: MLflow tracking and the registry, the logged and served model, loading,
prediction, COCO evaluation and model cards. Imports nothing from `training/` or `tuning/`."""


def __getattr__(name: str):
    # Models logged before this package existed run `from maskx.orchestrator.serving import
    # MaskXPyfunc` (their copy of pyfunc_model.py); mlflow loads only when one asks.
    if name == "MaskXPyfunc":
        from .pyfunc import MaskXPyfunc

        return MaskXPyfunc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
