"""A trained model put to work: loading it (a checkpoint folder, `models:/`, `runs:/`), predicting
(one process, or on Ray), drawing its detections, the logged and served pyfunc, export. Imports
`evaluation/` and `tracking/`, nothing from `reporting/`, `training/` or `tuning/`."""


def __getattr__(name: str):
    # Models logged before this package existed run `from maskx.orchestrator.serving import
    # MaskXPyfunc` (their copy of pyfunc_model.py); mlflow loads only when one asks.
    if name == "MaskXPyfunc":
        from .pyfunc import MaskXPyfunc

        return MaskXPyfunc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
