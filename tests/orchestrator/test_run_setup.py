"""A run set up once (`set_up_run`): its paths, manifests, vocabulary, data plan and the checks
`maskx train` makes on the driver before any worker starts."""
from maskx.datasets.shard_format import FORMAT_VERSION, Manifest, load_manifest, save_manifest
from maskx.orchestrator.config import load_config
from maskx.orchestrator.run_setup import ManifestUse, RunSetup, set_up_run

TINY = "configs/tiny-cpu.yaml"


def test_a_runs_params_say_what_each_training_manifest_holds_and_what_was_excluded(tmp_path):
    for name, counts in (("coco", {"images": 5, "instances": 9, "skipped": 0}),
                         ("vg", {"images": 90, "instances": 700, "skipped": 3, "excluded_coco_images": 10})):
        save_manifest(Manifest(format=FORMAT_VERSION, source=name, shards=[], counts={name: counts}, vocabulary={},
                               location=str(tmp_path / name / "manifest.json")))
    cfg = load_config("configs/tiny-cpu.yaml", [f"data.train=[{{manifest: {tmp_path}/coco}}, {{manifest: {tmp_path}/vg}}]"])
    manifests = [ManifestUse(s.manifest, load_manifest(s.manifest), "train", s.weight) for s in cfg.data.train]
    params = RunSetup(config=cfg, vocab=None, sources=[], val_sources=None, plan=None, steps_per_epoch=0,
                      manifests=manifests).manifest_params()
    assert params["data.train.0.source"] == "coco" and params["data.train.0.images"] == "5"
    assert params["data.train.1.source"] == "vg" and params["data.train.1.excluded_coco_images"] == "10"
    assert "data.train.0.excluded_coco_images" not in params


def test_a_config_that_requires_it_refuses_vg_shards_prepared_without_exclude_coco(tmp_path):
    import pytest

    from maskx.orchestrator.run_setup import check_vg_coco_exclusion

    for name, counts in (("vg-plain", {"images": 9}), ("vg-excluded", {"images": 8, "excluded_coco_images": 1})):
        save_manifest(Manifest(format=FORMAT_VERSION, source="vg", shards=[], counts={"vg": counts}, vocabulary={},
                               location=str(tmp_path / name / "manifest.json")))
    cfg = load_config("configs/coco-vg-r50.yaml", [f"data.train=[{{manifest: {tmp_path}/vg-excluded}}]"])
    assert cfg.data.require_vg_coco_exclusion
    check_vg_coco_exclusion([load_manifest(source.manifest) for source in cfg.data.train])
    cfg = load_config("configs/coco-vg-r50.yaml", [f"data.train=[{{manifest: {tmp_path}/vg-plain}}]"])
    with pytest.raises(ValueError, match=r"data.train.0: .*vg-plain/manifest.json was prepared without --exclude-coco"):
        check_vg_coco_exclusion([load_manifest(source.manifest) for source in cfg.data.train])
    # The paper's train split leaves out VG val (the COCO val images) by construction.
    save_manifest(Manifest(format=FORMAT_VERSION, source="vg", shards=[], vocabulary={},
                           counts={"vg": {"images": 7, "split": "train", "train_split_images": 7}},
                           location=str(tmp_path / "vg-train-split" / "manifest.json")))
    check_vg_coco_exclusion([load_manifest(str(tmp_path / "vg-train-split"))])


def test_init_from_in_a_run_with_a_set_b_must_name_the_parts_it_takes(synth_shards):
    """A run whose set A is not every class refuses to take every tensor of `model.init_from` (a mask
    head trained on set B's masks would void it) until `model.init_from_parts` names them."""
    import pytest

    train = [f"data.train=[{{manifest: {synth_shards['coco_train']}}}]", "data.val=null"]
    with pytest.raises(ValueError, match=r"model.init_from_parts: required with model.init_from \(.*detector.pth\) in a run "
                                         r"whose set A is not every class \(data.mask_sets=\['voc'\]: 4 of 10 classes"):
        set_up_run(load_config(TINY, train + ["model.init_from=detector.pth"]))
    set_up_run(load_config(TINY, train + ["model.init_from=detector.pth", "model.init_from_parts=[backbone, rpn, box_head]"]))
    set_up_run(load_config(TINY, train + ["model.init_from=detector.pth", "data.mask_sets=[all]"]))  # no set B


def test_a_run_on_several_hosts_names_every_path_only_this_host_sees(tmp_path):
    import pytest

    from maskx.orchestrator.training.cluster_checks import check_paths_reach_every_node

    cfg = load_config("configs/tiny-cpu.yaml", [f"data.train=[{{manifest: {tmp_path}/coco}}, {{manifest: s3://b/vg}}]",
                                                f"data.val={tmp_path}/val", f"checkpoint.storage_path={tmp_path}/runs"])
    with pytest.raises(ValueError) as failure:
        check_paths_reach_every_node(cfg, f"sqlite:///{tmp_path}/mlflow.db")
    message = str(failure.value)
    for named in (f"checkpoint.storage_path {tmp_path}/runs: use s3://", f"data.train.0.manifest {tmp_path}/coco",
                  f"data.val {tmp_path}/val", "mlflow.tracking_uri sqlite:///", "maskx mlflow-server", "scaling.shared_paths"):
        assert named in message
    assert "data.train.1" not in message  # on S3: every host reaches it
    cfg.scaling.shared_paths = [str(tmp_path)]  # the user says every node mounts it
    check_paths_reach_every_node(cfg, f"sqlite:///{tmp_path}/mlflow.db")
    cfg = load_config("configs/tiny-cpu.yaml", ["data.train=[{manifest: s3://b/coco}]", "data.val=s3://b/val",
                                                "checkpoint.storage_path=s3://b/runs"])
    check_paths_reach_every_node(cfg, "http://mlflow.internal:5000")


def test_root_is_what_relative_paths_and_the_sqlite_store_mean(tmp_path, monkeypatch):
    """`ray job submit ... -- maskx train ... root=$PWD`: the job runs in a copy of the working dir."""
    from maskx.orchestrator.run_setup import with_absolute_paths

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = with_absolute_paths(load_config("configs/tiny-cpu.yaml", [f"root={tmp_path}", "data.val=s3://bucket/val"]))
    assert cfg.data.train[0].manifest == f"{tmp_path}/demo-out/shards/coco-train"
    assert cfg.data.val == "s3://bucket/val"
    assert cfg.checkpoint.storage_path == f"{tmp_path}/demo-out/ray_results"
    assert cfg.mlflow.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    server = with_absolute_paths(load_config("configs/tiny-cpu.yaml", [f"root={tmp_path}", "mlflow.tracking_uri=http://mlflow:5000"]))
    assert server.mlflow.tracking_uri == "http://mlflow:5000"


def test_the_run_s_data_plan_and_a_resumed_run_keeps_its_own(synth_shards):
    """Defaults: batch_size x the most workers, most workers x loader workers; steps per epoch: one pass
    over the mixed sources. A resumed run keeps the plan it started with; asking for another is refused."""
    import pytest

    sources = [f"data.train=[{{manifest: {synth_shards['coco_train']}}}, {{manifest: {synth_shards['vg']}, weight: 0.5}}]",
               f"data.val={synth_shards['coco_val']}"]
    setup = set_up_run(load_config(TINY, sources + ["scaling.num_workers=[2, 4]", "data.loader_workers=3"]))
    assert (setup.plan.global_batch, setup.plan.partitions) == (4 * 4, 12)  # tiny-cpu: batch_size 4
    assert setup.steps_per_epoch == (24 + 12) // 16  # the synthetic COCO train and VG images, 16 a step
    assert setup.config.model.num_classes == 11 and setup.vocab.num_classes == 11
    resumed = set_up_run(load_config(TINY, sources + ["scaling.num_workers=1"])).continuing(setup.plan)
    assert resumed.plan == setup.plan and resumed.steps_per_epoch == 2
    with pytest.raises(ValueError, match="data.partitions=5, but this run started with 12"):
        set_up_run(load_config(TINY, sources + ["data.partitions=5"])).continuing(setup.plan)


def test_a_val_set_of_another_vocabulary_is_refused_before_anything_starts(synth_shards, tmp_path):
    import json

    import pytest

    other = tmp_path / "other-val"
    other.mkdir()
    manifest = json.loads(open(f"{synth_shards['coco_val']}/manifest.json").read())
    manifest["vocabulary"]["classes"] = manifest["vocabulary"]["classes"][::-1]
    (other / "manifest.json").write_text(json.dumps(manifest))
    cfg = load_config(TINY, [f"data.train=[{{manifest: {synth_shards['coco_train']}}}]", f"data.val={other}"])
    with pytest.raises(ValueError, match=f"data.val: {other} was prepared with another vocabulary than data.train"):
        set_up_run(cfg)


def test_repeat_factors_come_from_the_manifests_and_lengthen_the_epoch(synth_shards, tmp_path):
    import json
    import shutil

    import pytest

    train = [f"data.train=[{{manifest: {synth_shards['coco_train']}}}, {{manifest: {synth_shards['vg']}, weight: 0.5}}]",
             "data.val=null", "data.batch_size=2", "scaling.num_workers=2"]
    plain = set_up_run(load_config(TINY, train))
    assert plain.repeat_factors is None and plain.steps_per_epoch == (24 + 12) // 4
    setup = set_up_run(load_config(TINY, train + ["data.repeat_threshold=0.5"]))
    factors = setup.repeat_factors
    assert factors.threshold == 0.5 and 0 < len(factors.above_one) <= 36
    assert setup.steps_per_epoch == int(24 + 12 + factors.extra_samples) // 4 > plain.steps_per_epoch
    assert setup.continuing(setup.plan).steps_per_epoch == setup.steps_per_epoch
    rarest = min(setup.class_frequency.before, key=setup.class_frequency.before.get)
    assert setup.class_frequency.after[rarest] > setup.class_frequency.before[rarest]
    params = setup.manifest_params()
    assert params["data.repeat.images_above_one"] == str(len(factors.above_one))
    assert setup.train_stream(world_size=1, rank=0, epoch=0).repeat_factors is factors
    # Shards prepared before image_classes.json existed: a clear error naming the key, the manifest and the fix.
    old = tmp_path / "vg-old"
    shutil.copytree(synth_shards["vg"], old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["image_classes"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    (old / "image_classes.json").unlink()
    with pytest.raises(ValueError, match=r"data.repeat_threshold needs each image's classes; data.train.1: manifest "
                                         r".*vg-old/manifest.json: lists no image_classes.json .* run the same `maskx "
                                         r"prepare` again"):
        set_up_run(load_config(TINY, [f"data.train=[{{manifest: {synth_shards['coco_train']}}}, {{manifest: {old}}}]",
                                      "data.val=null", "data.repeat_threshold=0.5"]))
    set_up_run(load_config(TINY, [f"data.train=[{{manifest: {old}}}]", "data.val=null"]))  # without repeats: fine
