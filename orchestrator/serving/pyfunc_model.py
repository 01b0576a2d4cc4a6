"""What MLflow runs to build a logged maskx model when it is loaded or served (a model from code:
nothing is unpickled). See `pyfunc.py`."""
from mlflow.models import set_model

from maskx.orchestrator.serving.pyfunc import MaskXPyfunc

set_model(MaskXPyfunc())
