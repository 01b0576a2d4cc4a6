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
