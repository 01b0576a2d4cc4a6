import pytest

from maskx.orchestrator.config import ConfigError, dump_config, load_config

TINY = "configs/tiny-cpu.yaml"


def test_tiny_config_loads_with_dotted_overrides():
    cfg = load_config(TINY, ["solver.lr=0.05", "model.mask_head.mode=transfer", "data.min_sizes=[96, 128]",
                             "mlflow.registered_model=null"])
    assert cfg.solver.lr == 0.05
    assert cfg.model.mask_head.mode == "transfer"
    assert cfg.data.min_sizes == [96, 128]
    assert cfg.mlflow.registered_model is None
    assert cfg.data.train[1].weight == 0.5
    assert load_config(None, ["model.backbone.weights=r50.pth"]).model.backbone.name == "resnet50"  # dataclass defaults


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"solver\.learning_rate: unknown key"):
        load_config(TINY, ["solver.learning_rate=0.1"])
    with pytest.raises(ConfigError, match=r"model\.mask_head\.tranfer_input: unknown key"):
        load_config(TINY, ["model.mask_head.tranfer_input=cls"])


def test_wrong_type_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"solver\.max_iter: .*integer"):
        load_config(TINY, ["solver.max_iter=many"])
    with pytest.raises(ConfigError, match=r"model\.mask_head\.mode: 'transfer\+rnn' is not one of"):
        load_config(TINY, ["model.mask_head.mode=transfer+rnn"])


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(TINY, ["seed=7"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(str(path)) == cfg


def test_shipped_configs_all_load():
    from pathlib import Path

    configs = Path(__file__).resolve().parents[2] / "configs"
    shipped = sorted(configs.glob("*.yaml"))
    assert {"tiny-cpu.yaml", "coco-r50.yaml", "voc-to-nonvoc-r50.yaml", "vg3k-r50.yaml"} <= {p.name for p in shipped}
    sweep_files = {"ablation-mask-head.yaml": "ablation-tiny-cpu.yaml",  # a sweep joins a training config
                   "transfer-mask-head.yaml": "transfer-families-cpu.yaml",
                   "transfer-gate.yaml": "transfer-families-cpu.yaml",
                   "transfer-disjoint.yaml": "transfer-families-cpu.yaml"}
    for path in shipped:
        if path.name in sweep_files:
            load_config(str(configs / sweep_files[path.name]), sweep_path=str(path))
        else:
            load_config(str(path))


@pytest.mark.parametrize("override", ["model.backbone.norm=frozen_bn", "model.backbone.trainable_layers=3",
                                      "model.freeze=[backbone]"])
def test_a_frozen_backbone_without_weights_is_refused_at_load_naming_the_key_and_the_way_out(override):
    """Frozen BN or frozen stages from random weights stay random, with no normalization anywhere."""
    with pytest.raises(ConfigError) as refused:
        load_config(TINY, [override])
    message = str(refused.value)
    assert message.startswith("model.backbone.weights: not set, but the backbone is frozen")
    assert "torch.save(torchvision.models.resnet18(weights='IMAGENET1K_V1').state_dict(), 'resnet18-imagenet.pth')" in message
    load_config(TINY, [override, "model.backbone.weights=resnet18-imagenet.pth"])  # with weights: fine
    load_config(TINY, [override, "model.init_from=models:/maskx-detector/1"])  # or starting from a trained model
    load_config(TINY, ["model.backbone.norm=gn"])  # trained from scratch, normalized


def test_a_number_in_a_dotted_key_indexes_a_list():
    cfg = load_config(TINY, ["data.train.1.weight=0.25"])
    assert [s.weight for s in cfg.data.train] == [1.0, 0.25]
    with pytest.raises(ConfigError, match=r"data.train.5: no item 5 in a list of 2"):
        load_config(TINY, ["data.train.5.weight=0.25"])
    with pytest.raises(ConfigError, match=r"seed is not a section"):
        load_config(TINY, ["seed.x=1"])


def test_a_sweep_file_replaces_the_sweep_section_and_holds_nothing_else(tmp_path):
    cfg = load_config("configs/sweep-tiny-cpu.yaml", ["sweep.space={seed: {grid: [4]}}"],
                      sweep_path="configs/ablation-mask-head.yaml")
    assert cfg.sweep.space == {"seed": {"grid": [4]}} and cfg.sweep.scheduler == "fifo" and "class-agnostic" in cfg.sweep.variants
    assert cfg.name == "sweep-tiny-cpu"  # the rest is the training config's
    stray = tmp_path / "sweep.yaml"
    stray.write_text("sweep: {search: grid}\nsolver: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"sweep.yaml: a sweep file holds only a top-level `sweep:` section, got solver, sweep"):
        load_config("configs/tiny-cpu.yaml", sweep_path=str(stray))
    stray.write_text("sweep: {variants: {a: {seed: 1}}, schedular: fifo}\n")
    with pytest.raises(ConfigError, match="sweep.schedular: unknown key"):
        load_config("configs/tiny-cpu.yaml", sweep_path=str(stray))


@pytest.mark.parametrize("override, key", [("sweep.mode=maximize", "sweep.mode"), ("sweep.scheduler=median", "sweep.scheduler"),
                                           ("sweep.search=bayes", "sweep.search"),
                                           ("scaling.placement_strategy=spread", "scaling.placement_strategy"),
                                           ("eval_mode=later", "eval_mode")])
def test_a_choice_outside_its_options_is_an_error_naming_the_key_and_the_options(override, key):
    # Free strings let `mode: maximize` minimize and `scheduler: median` run FIFO without a word.
    with pytest.raises(ConfigError, match=rf"{key}: Input should be '\w+'"):
        load_config(TINY, [override])


def test_elastic_worker_counts():
    cfg = load_config(TINY, ["scaling.num_workers=[2, 4]", "data.loader_workers=3"])
    assert (cfg.scaling.min_workers, cfg.scaling.max_workers, cfg.scaling.ray_num_workers()) == (2, 4, (2, 4))
    assert cfg.to_dict()["scaling"]["num_workers"] == [2, 4]  # YAML- and MLflow-friendly
    for bad in ("[3, 1]", "[0, 2]", "[1, 2, 3]", "0"):
        with pytest.raises(ConfigError, match="scaling.num_workers"):
            load_config(TINY, [f"scaling.num_workers={bad}"])


def test_a_gpu_worker_takes_whole_gpus():
    """NCCL cannot run two ranks of one group on one GPU: a fraction is refused with use_gpu, not at the first all-reduce."""
    assert load_config(TINY, ["scaling.use_gpu=true", "scaling.gpus_per_worker=2"]).scaling.gpus_per_worker == 2
    assert load_config(TINY, ["scaling.gpus_per_worker=0.5"]).scaling.gpus_per_worker == 0.5  # CPU workers: unused
    for bad in ("0.5", "1.5", "0"):
        with pytest.raises(ConfigError, match=rf"scaling.gpus_per_worker: a whole number >= 1 with use_gpu.*got {bad}"):
            load_config(TINY, ["scaling.use_gpu=true", f"scaling.gpus_per_worker={bad}"])


def test_norm_none_is_read_as_gn_with_a_warning_because_it_always_built_group_norm():
    import torch

    from maskx.models import build_model

    with pytest.warns(FutureWarning, match=r"model.backbone.norm: 'none' is now called 'gn' \(it always built GroupNorm\)"):
        old = load_config(TINY, ["model.backbone.norm=none"])
    assert old.model.backbone.norm == "gn"
    new = load_config(TINY)
    assert new.model.backbone.norm == "gn"
    torch.manual_seed(0)
    old_weights = build_model(old.model).state_dict()
    torch.manual_seed(0)
    model = build_model(new.model)
    assert model.state_dict().keys() == old_weights.keys()  # checkpoints of `none` runs load as they are
    assert all(torch.equal(old_weights[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.backbone.body.bn1, torch.nn.GroupNorm)
    with pytest.raises(ConfigError, match=r"model.backbone.norm: 'layer' is not one of 'frozen_bn', 'bn', 'gn'"):
        load_config(TINY, ["model.backbone.norm=layer"])


def test_a_repeat_threshold_outside_0_1_is_an_error_naming_it():
    assert load_config(TINY).data.repeat_threshold is None  # off unless asked for
    assert load_config(TINY, ["data.repeat_threshold=0.001"]).data.repeat_threshold == 0.001
    for bad in ("0", "1.5", "-0.1"):
        with pytest.raises(ConfigError, match=r"data.repeat_threshold: a fraction of images in \(0, 1\]"):
            load_config(TINY, [f"data.repeat_threshold={bad}"])


def test_the_shard_cache_is_off_unless_given_a_folder_and_its_limit_must_be_positive():
    assert load_config(TINY).data.cache_settings() is None
    settings = load_config(TINY, ["data.cache_dir=/mnt/nvme/shards", "data.cache_limit_gb=2.5"]).data.cache_settings()
    assert (settings.folder, settings.limit_bytes) == ("/mnt/nvme/shards", 2_500_000_000)
    with pytest.raises(ConfigError, match=r"data.cache_limit_gb: the most disk the shard cache takes on a node"):
        load_config(TINY, ["data.cache_dir=/tmp/c", "data.cache_limit_gb=0"])


def test_periodic_evaluation_is_scored_beside_training_unless_asked_otherwise():
    cfg = load_config(TINY)
    assert cfg.eval_mode == "background" and cfg.eval_cpus == 0
    assert load_config(TINY, ["eval_mode=inline"]).eval_mode == "inline"
    with pytest.raises(ConfigError, match=r"eval_cpus: CPUs a background COCOeval reserves, 0 or more; got -1"):
        load_config(TINY, ["eval_cpus=-1"])


def test_no_credential_reaches_a_config_file_or_the_command_line_s_error(synth_shards, monkeypatch, capsys):
    """dump_config writes what checkpoints, best models and registered models keep as config.yaml;
    the CLI's error lines and tracebacks (MLflow's own messages carry the tracking URI) are redacted."""
    from maskx.orchestrator.cli import main
    from maskx.orchestrator.config import TrainConfig, dump_config

    from ..conftest import free_port

    cfg = TrainConfig()
    cfg.mlflow.tracking_uri = "http://alice:s3cret@mlflow.internal:5000"
    written = dump_config(cfg)
    assert "s3cret" not in written and "tracking_uri: http://***@mlflow.internal:5000" in written
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    nobody = f"http://alice:s3cret@127.0.0.1:{free_port()}"  # nothing listens: MLflow's error names the URI
    assert main(["eval", "--config", "configs/tiny-cpu.yaml", "--model", "models:/demo/1",
                 f"mlflow.tracking_uri={nobody}", f"data.val={synth_shards['coco_val']}"]) != 0
    err = capsys.readouterr().err
    assert "s3cret" not in err and "http://***@127.0.0.1" in err


def test_log_records_from_any_logger_are_written_redacted():
    """MLflow logs its request URL (with user:password@) from its own loggers; the handlers maskx's
    CLI and workers set up write it redacted, messages and tracebacks alike."""
    import io
    import logging

    from maskx.orchestrator.redaction import RedactingFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("mlflow.utils.rest_utils.test")
    logger.addHandler(handler)
    try:
        logger.warning("retrying %s", "http://alice:s3cret@mlflow.internal:5000/api/2.0/mlflow/runs/get")
        try:
            raise ConnectionError("HTTPConnectionPool for http://alice:s3cret@mlflow.internal:5000 refused")
        except ConnectionError:
            logger.exception("request failed")
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert "s3cret" not in written and written.count("http://***@mlflow.internal:5000") >= 2, written
