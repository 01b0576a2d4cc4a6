from maskx.datasets.shard_format import FORMAT_VERSION, Manifest, save_manifest
from maskx.orchestrator.config import load_config
from maskx.orchestrator.trainer import training_data_params


def test_a_runs_params_say_what_each_training_manifest_holds_and_what_was_excluded(tmp_path):
    for name, counts in (("coco", {"images": 5, "instances": 9, "skipped": 0}),
                         ("vg", {"images": 90, "instances": 700, "skipped": 3, "excluded_coco_images": 10})):
        save_manifest(Manifest(format=FORMAT_VERSION, source=name, shards=[], counts={name: counts}, vocabulary={},
                               location=str(tmp_path / name / "manifest.json")))
    cfg = load_config("configs/tiny-cpu.yaml", [f"data.train=[{{manifest: {tmp_path}/coco}}, {{manifest: {tmp_path}/vg}}]"])
    params = training_data_params(cfg)
    assert params["data.train.0.source"] == "coco" and params["data.train.0.images"] == "5"
    assert params["data.train.1.source"] == "vg" and params["data.train.1.excluded_coco_images"] == "10"
    assert "data.train.0.excluded_coco_images" not in params


def test_a_config_that_requires_it_refuses_vg_shards_prepared_without_exclude_coco(tmp_path):
    import pytest

    from maskx.orchestrator.trainer import check_vg_coco_exclusion

    for name, counts in (("vg-plain", {"images": 9}), ("vg-excluded", {"images": 8, "excluded_coco_images": 1})):
        save_manifest(Manifest(format=FORMAT_VERSION, source="vg", shards=[], counts={"vg": counts}, vocabulary={},
                               location=str(tmp_path / name / "manifest.json")))
    cfg = load_config("configs/coco-vg-r50.yaml", [f"data.train=[{{manifest: {tmp_path}/vg-excluded}}]"])
    assert cfg.data.require_vg_coco_exclusion
    check_vg_coco_exclusion(cfg)
    cfg = load_config("configs/coco-vg-r50.yaml", [f"data.train=[{{manifest: {tmp_path}/vg-plain}}]"])
    with pytest.raises(ValueError, match=r"data.train.0: .*vg-plain/manifest.json was prepared without --exclude-coco"):
        check_vg_coco_exclusion(cfg)
