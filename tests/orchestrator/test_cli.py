"""The `maskx` command line's own behaviour (each command's work is tested where it lives)."""
from maskx.orchestrator.cli import build_parser


def test_verbose_before_or_after_the_command_means_verbose():
    parse = build_parser().parse_args
    assert parse(["-v", "train", "--config", "c.yaml"]).verbose  # was False: train's --verbose shadowed -v
    assert parse(["train", "--config", "c.yaml", "--verbose"]).verbose
    assert not parse(["train", "--config", "c.yaml"]).verbose
    assert parse(["-v", "eval", "--config", "c.yaml", "--model", "m"]).verbose
