"""The `maskx` command line's own behaviour (each command's work is tested where it lives)."""
from maskx.orchestrator.cli import build_parser


def test_verbose_before_or_after_the_command_means_verbose():
    parse = build_parser().parse_args
    assert parse(["-v", "train", "--config", "c.yaml"]).verbose  # was False: train's --verbose shadowed -v
    assert parse(["train", "--config", "c.yaml", "--verbose"]).verbose
    assert not parse(["train", "--config", "c.yaml"]).verbose
    assert parse(["-v", "eval", "--config", "c.yaml", "--model", "m"]).verbose


def test_v_and_verbose_are_one_flag_on_every_command():
    parse = build_parser().parse_args
    for argv in (["train", "--config", "c.yaml"], ["tune", "--config", "c.yaml"], ["synth", "--out", "o"],
                 ["prepare", "coco", "--annotations", "a.json", "--images", "i", "--out", "o"],
                 ["predict", "--model", "m", "--image", "i.jpg", "--out", "o.png"], ["demo"]):
        assert not parse(argv).verbose
        assert parse(["-v", *argv]).verbose and parse(["--verbose", *argv]).verbose
        assert parse([*argv, "-v"]).verbose and parse([*argv, "--verbose"]).verbose


def test_bad_input_exits_2_and_a_failure_exits_1_with_its_traceback_only_under_v(tmp_path, capsys, monkeypatch):
    from maskx.orchestrator import cli
    from maskx.orchestrator.cli import EXIT_BAD_INPUT, EXIT_FAILURE, main

    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == EXIT_BAD_INPUT == 2
    assert "maskx train: config" in capsys.readouterr().err
    import logging

    assert logging.getLogger("matplotlib").level == logging.WARNING  # its INFO lines are no user's business

    def fails(args):
        raise KeyError("the tracking server answered 500 for http://user:secret@mlflow:5000")

    real = cli.build_parser

    def with_failing_report():
        parser = real()
        parser._subparsers._group_actions[0].choices["report"].set_defaults(run=fails)
        return parser

    monkeypatch.setattr(cli, "build_parser", with_failing_report)
    assert main(["report", "abc"]) == EXIT_FAILURE == 1
    err = capsys.readouterr().err
    assert err.startswith("maskx report: KeyError:") and "(-v shows the traceback)" in err and "Traceback" not in err
    assert "secret" not in err
    assert main(["report", "abc", "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "secret" not in err


def test_eval_without_a_config_takes_the_model_s_set_a_but_this_machine_s_paths_and_store(synth_shards, tmp_path,
                                                                                           monkeypatch):
    """A model trained elsewhere carries its run's root and tracking server in its config: `maskx eval
    --shards` without --config resolves a relative --shards here and reads no store of the run's."""
    import json
    import os

    from maskx.datasets.vocab import Vocabulary
    from maskx.orchestrator.cli import main
    from maskx.orchestrator.config import load_config
    from maskx.orchestrator.run_setup import bind_to_vocabulary
    from maskx.orchestrator.training.model_checkpoint import write_model_checkpoint

    tiny = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny-cpu.yaml")
    vocab = Vocabulary.load(synth_shards["vocab"])
    cfg = bind_to_vocabulary(load_config(tiny, ["root=/cluster/home/someone", "eval_error_analysis=false",
                                                "mlflow.tracking_uri=http://mlflow.cluster.internal:5000"]), vocab)
    model = write_model_checkpoint(str(tmp_path / "model"), cfg, vocab)
    monkeypatch.chdir(os.path.dirname(synth_shards["coco_val"]))
    assert main(["eval", "--model", model, "--shards", os.path.basename(synth_shards["coco_val"]),
                 "--out", str(tmp_path / "eval")]) == 0
    evaluation = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert evaluation["metrics"]["eval/images"] == 10
