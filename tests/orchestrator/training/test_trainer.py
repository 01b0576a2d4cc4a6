"""The driver's checks before any worker starts (no Ray)."""
import os

import pytest

from maskx.orchestrator.config import load_config
from maskx.orchestrator.training.trainer import check_keep_best

TINY = os.path.join(os.path.dirname(__file__), "..", "..", "..", "configs", "tiny-cpu.yaml")


@pytest.mark.parametrize("metric, problem", [("segm/setB/AR", "is not a COCO metric maskx computes; one of bbox/all/AP"),
                                             ("segm/setB/AP", "needs data.val")])
def test_keep_best_names_a_metric_maskx_computes_and_needs_a_val_set(metric, problem):
    cfg = load_config(TINY, ["data.val=null", f"checkpoint.keep_best={metric}"])
    with pytest.raises(ValueError, match=f"checkpoint.keep_best: .*{problem}"):
        check_keep_best(cfg)
