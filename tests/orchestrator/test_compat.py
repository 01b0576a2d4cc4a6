"""The private names maskx leans on (`orchestrator/compat.py`) are where the version it was checked
against put them. A new version fails here first: check each against its source, then update
`CHECKED_AGAINST`."""
import inspect
import logging

import ray

from maskx.orchestrator import compat


def test_the_installed_versions_are_the_ones_checked():
    installed = {"ray": ray.__version__}
    assert installed == compat.CHECKED_AGAINST, (
        f"installed {installed}, compat.py was checked against {compat.CHECKED_AGAINST}: read the private names "
        "it uses in the new version's source, then update CHECKED_AGAINST")


def test_ray_s_torch_backend_sets_up_the_process_group_in_on_start():
    backend = compat.ray_torch_backend()
    assert list(inspect.signature(backend.on_start).parameters) == ["self", "worker_group", "backend_config"]
    assert "_setup_torch_process_group" in inspect.getsource(backend.on_start)

    from maskx.orchestrator.training.process_group import NodeAddressTorchConfig

    assert issubclass(NodeAddressTorchConfig().backend_cls, backend)


def test_ray_train_logs_each_report_through_the_logger_maskx_quiets():
    from ray.train.v2._internal.execution import context

    logger = compat.ray_train_report_logger()
    assert context.logger is logger  # the very logger `Reporting training result ...` goes through
    assert "Reporting training result" in inspect.getsource(context)
    assert isinstance(logger, logging.Logger)
