"""docs/config.md is the typed config's reference, generated: it fails here when a key is added,
renamed, retyped, its default changed or its comment edited without writing the file again."""
from pathlib import Path

from maskx.orchestrator.config import TrainConfig
from maskx.orchestrator.config_reference import missing_meanings, reference, sections

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_docs_config_md_is_the_generated_reference():
    assert REFERENCE.read_text() == reference(), (
        "docs/config.md is out of date: python -m maskx.orchestrator.config_reference > docs/config.md")


def test_every_key_is_there_with_a_meaning_and_the_default_a_config_gets():
    assert missing_meanings() == []  # a key without a comment in the source would say nothing here
    defaults = TrainConfig()
    rows = {key: default for _, _, section in sections(TrainConfig) for key, _, default, _ in section}
    assert rows["solver.lr"] == str(defaults.solver.lr) and rows["model.backbone.norm"] == defaults.model.backbone.norm
    assert rows["data.min_sizes"] == "[800]" and rows["mlflow.tracking_uri"] == "null"
    assert {"data.train[].manifest", "model.mask_head.transfer_input", "sweep.champion_alias",
            "scaling.collective_timeout_s", "eval_timeout_s"} <= set(rows)
