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


def test_a_background_evaluation_that_could_never_get_its_cpus_is_refused_at_start():
    from maskx.orchestrator.config import load_config
    from maskx.orchestrator.training.cluster_checks import check_eval_cpus_fit

    cfg = load_config("configs/tiny-cpu.yaml", ["eval_cpus=1", "scaling.num_workers=2"])  # 2 workers x 1 CPU
    with pytest.raises(ValueError, match="eval_cpus 1: the training workers hold 2 of the cluster's 2 CPUs"):
        check_eval_cpus_fit(cfg, cluster_cpus=2)
    check_eval_cpus_fit(cfg, cluster_cpus=3)  # a core left for it
    check_eval_cpus_fit(cfg, cluster_cpus=0)  # a head waiting for its autoscaler: not judged
    check_eval_cpus_fit(load_config("configs/tiny-cpu.yaml", ["eval_cpus=0"]), cluster_cpus=2)
    check_eval_cpus_fit(load_config("configs/tiny-cpu.yaml", ["eval_cpus=1", "eval_mode=inline"]), cluster_cpus=2)
