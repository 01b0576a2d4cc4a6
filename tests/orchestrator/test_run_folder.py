"""Resuming takes the newest *complete* checkpoint in the run folder itself, whatever Ray remembers:
the moments a driver can die (a checkpoint folder just created, cut off mid-write or mid-upload,
between two checkpoints) laid out on disk and on S3, deterministically."""
import logging
import os
import shutil

import pytest
import torch

from maskx.datasets.vocab import COCO_CATEGORIES, build_vocabulary
from maskx.orchestrator import run_folder
from maskx.orchestrator.config import SolverConfig, TrainConfig, dump_config
from maskx.orchestrator.training.step import build_lr_scheduler, build_optimizer


def write_run(folder, iterations=(2, 4, 6)):
    """A run folder with a complete checkpoint at each iteration, as `maskx train` writes them."""
    model = torch.nn.Linear(4, 2)
    optimizer = build_optimizer(model, SolverConfig())
    scheduler = build_lr_scheduler(optimizer, SolverConfig())
    vocab = build_vocabulary(COCO_CATEGORIES)
    for iteration in iterations:
        contents = run_folder.checkpoint_contents(model, optimizer, scheduler, run_folder.TrainState(iteration))
        run_folder.write_checkpoint(str(folder / run_folder.checkpoint_name(iteration)), contents,
                                    dump_config(TrainConfig()), vocab)
    return folder


def resumed_iteration(folder, **kwargs):
    found = run_folder.resume_state(str(folder), **kwargs)
    return None if found is None else found[1]["iteration"]


def test_a_checkpoint_records_every_file_it_holds(tmp_path):
    checkpoint = write_run(tmp_path, (2,)) / "checkpoint_00000002"
    import json

    record = json.loads((checkpoint / run_folder.COMPLETE_FILE).read_text())
    assert record["iteration"] == 2
    assert set(record["files"]) == {"state.pt", "config.yaml", "vocab.json"}
    assert record["files"]["state.pt"]["bytes"] == (checkpoint / "state.pt").stat().st_size


def test_a_new_run_folder_resumes_nothing(tmp_path):
    assert run_folder.resume_state(str(tmp_path / "absent")) is None
    assert run_folder.resume_state(str(tmp_path)) is None


def test_the_newest_complete_checkpoint_wins_over_what_ray_offers(tmp_path, caplog):
    write_run(tmp_path)
    with caplog.at_level(logging.INFO):
        assert resumed_iteration(tmp_path, offered=str(tmp_path / "checkpoint_00000002")) == 6
    assert "resuming from" in caplog.text and "checkpoint_00000006" in caplog.text
    assert "Ray offered checkpoint_00000002" in caplog.text


@pytest.mark.parametrize("moment", ["folder just created", "state written, record not yet", "upload cut mid-file",
                                    "record there, a file not yet", "bytes damaged after the write"])
def test_a_checkpoint_cut_off_at_any_moment_is_passed_over_for_the_previous_one(tmp_path, caplog, moment):
    write_run(tmp_path)
    newest = tmp_path / "checkpoint_00000006"
    state = newest / "state.pt"
    if moment == "folder just created":
        shutil.rmtree(newest)
        newest.mkdir()
    elif moment == "state written, record not yet":
        (newest / run_folder.COMPLETE_FILE).unlink()
        (newest / "vocab.json").unlink()
    elif moment == "upload cut mid-file":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif moment == "record there, a file not yet":
        (newest / "config.yaml").unlink()
    else:
        damage(state)
    with caplog.at_level(logging.WARNING):
        assert resumed_iteration(tmp_path) == 4
    assert "checkpoint_00000006 passed over" in caplog.text


def test_between_two_checkpoints_the_earlier_one_is_the_newest(tmp_path):
    write_run(tmp_path, (2, 4))
    (tmp_path / "checkpoint_00000006.tmp-upload").mkdir()  # not a checkpoint name: ignored
    assert resumed_iteration(tmp_path) == 4


def damage(state):
    """The same size, other bytes: finished, then damaged."""
    damaged = bytearray(state.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    state.write_bytes(bytes(damaged))


def test_a_folder_whose_checkpoints_are_all_broken_is_an_error_listing_them(tmp_path):
    write_run(tmp_path, (2, 4))
    damage(tmp_path / "checkpoint_00000004" / "state.pt")
    (tmp_path / "checkpoint_00000002" / "state.pt").write_bytes((tmp_path / "checkpoint_00000002" / "state.pt").read_bytes() + b"x")
    with pytest.raises(ValueError, match=r"none of its 2 checkpoints is complete and readable \(checkpoint_00000004: "
                                         r"state.pt does not match its checksum.*checkpoint_00000002: state.pt is \d+ "
                                         r"bytes.*refusing to start the run over"):
        run_folder.resume_state(str(tmp_path))


def test_a_file_shorter_than_its_record_is_an_unfinished_upload_not_damage(tmp_path, caplog):
    """An upload cut off mid-file (or still going) leaves a file shorter than complete.json says: that
    checkpoint never finished, so a folder of such checkpoints starts over instead of refusing every restart."""
    write_run(tmp_path, (2, 4))
    for name in ("checkpoint_00000002", "checkpoint_00000004"):
        state = tmp_path / name / "state.pt"
        state.write_bytes(state.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        assert run_folder.resume_state(str(tmp_path)) is None
    assert "cut off before it was whole" in caplog.text and "the run starts over" in caplog.text


def test_a_folder_whose_checkpoints_never_finished_starts_over(tmp_path, caplog):
    """Ray's upload copies a folder's files in parallel: a host cut off mid-upload can leave
    complete.json on storage without state.pt (the multi-host rehearsal's cut-off host did). Nothing
    finished, nothing is lost by starting over; one damaged checkpoint among them is still an error."""
    write_run(tmp_path, (2, 4))
    (tmp_path / "checkpoint_00000004" / "state.pt").unlink()
    (tmp_path / "checkpoint_00000002" / run_folder.COMPLETE_FILE).unlink()
    with caplog.at_level(logging.WARNING):
        assert run_folder.resume_state(str(tmp_path)) is None
    assert "none of its 2 checkpoints finished (checkpoint_00000004: state.pt is missing" in caplog.text
    assert "the run starts over" in caplog.text
    write_run(tmp_path, (6,))
    damage(tmp_path / "checkpoint_00000006" / "state.pt")
    with pytest.raises(ValueError, match="none of its 3 checkpoints is complete and readable"):
        run_folder.resume_state(str(tmp_path))


def test_a_run_from_before_completion_records_resumes_from_a_checkpoint_that_loads(tmp_path, caplog):
    write_run(tmp_path, (2, 4))
    for name in ("checkpoint_00000002", "checkpoint_00000004"):
        (tmp_path / name / run_folder.COMPLETE_FILE).unlink()
    with caplog.at_level(logging.WARNING):
        assert resumed_iteration(tmp_path) == 4
    assert "an older maskx wrote it" in caplog.text
    state = tmp_path / "checkpoint_00000004" / "state.pt"
    state.write_bytes(state.read_bytes()[:-100])  # and not once it no longer loads
    assert resumed_iteration(tmp_path) == 2


@pytest.mark.integration
@pytest.mark.core
@pytest.mark.s3
def test_the_run_folder_on_s3_resumes_the_same_way(tmp_path, s3_endpoint):
    from maskx.datasets import storage

    write_run(tmp_path / "run")
    (tmp_path / "run" / "checkpoint_00000006" / "state.pt").write_bytes(b"cut")
    storage.s3_client().create_bucket(Bucket="runs")
    for path in sorted((tmp_path / "run").rglob("*")):
        if path.is_file():
            storage.put_file(str(shutil.copy(path, tmp_path / "upload")), f"s3://runs/r/{path.relative_to(tmp_path / 'run')}")
    url, state = run_folder.resume_state("s3://runs/r")
    assert url == "s3://runs/r/checkpoint_00000004" and state["iteration"] == 4


@pytest.mark.integration
@pytest.mark.core
@pytest.mark.s3
def test_the_best_model_on_s3_replaces_the_one_before_and_loads_as_a_checkpoint(tmp_path, s3_endpoint):
    """`best.json` names a whole `best_*` folder; a new best removes the old one; the driver's local
    copy holds a model's files; resuming never takes it (it holds no solver state)."""
    from maskx.datasets import storage

    storage.s3_client().create_bucket(Bucket="best")
    folder, vocab, config_yaml = "s3://best/r", build_vocabulary(COCO_CATEGORIES), dump_config(TrainConfig())
    for iteration, value in ((2, 0.1), (6, 0.3)):
        weights = {"weight": torch.full((2, 2), float(iteration))}
        run_folder.write_best(folder, run_folder.BestModel(iteration, "segm/setB/AP", value), weights=weights,
                              config_yaml=config_yaml, vocab=vocab, evaluation={"metrics": {"segm/setB/AP": value}})
    best = run_folder.read_best(folder)
    assert best == run_folder.BestModel(6, "segm/setB/AP", 0.3)
    assert storage.list_folder(folder) == (["best_00000006"], ["best.json"])
    local = run_folder.local_best(folder, best, str(tmp_path))
    assert sorted(os.listdir(local)) == ["complete.json", "config.yaml", "eval.json", "state.pt", "vocab.json"]
    assert torch.equal(run_folder.load_state(local)["model"]["weight"], torch.full((2, 2), 6.0))
    assert run_folder.load_complete_state(f"{folder}/best_00000006")["iteration"] == 6
    assert run_folder.resume_state(folder) is None


def test_a_checkpoint_whose_optimizer_had_other_parameter_groups_is_a_clear_error(tmp_path):
    """Checkpoints from before biases had their own group cannot continue exactly."""
    model = torch.nn.Linear(4, 2)
    older = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer = build_optimizer(model, SolverConfig())
    scheduler = build_lr_scheduler(optimizer, SolverConfig())
    contents = run_folder.checkpoint_contents(model, older, scheduler, run_folder.TrainState(2))
    assert len(optimizer.param_groups) != len(older.param_groups)
    with pytest.raises(ValueError, match="1 parameter groups.*model.init_from"):
        run_folder.restore(contents, model, optimizer, scheduler)


def claims_of(folder):
    """Two drivers claiming one run folder at once: how many got it."""
    import concurrent.futures

    def claim(run_id):
        try:
            run_folder.write_mlflow_run(folder, run_id, "http://tracking")
            return run_id
        except FileExistsError as exc:
            # The loser reads the winner's record at once: it must be whole, never half written.
            assert "another driver started a run in it just now (MLflow run run-" in str(exc)
            return None

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        won = [r for r in pool.map(claim, [f"run-{i}" for i in range(8)]) if r]
    return won


def test_a_new_run_never_continues_another(tmp_path):
    """Generated names differ within one second; a run folder is claimed by one MLflow run only."""
    names = {run_folder.new_run_name("tiny-cpu") for _ in range(50)}
    assert len(names) == 50 and all(name.startswith("tiny-cpu-") for name in names)
    for attempt in range(20):
        folder = str(tmp_path / f"run-{attempt}")
        won = claims_of(folder)
        assert len(won) == 1 and run_folder.read_mlflow_run(folder) == won[0]
        assert os.listdir(folder) == [run_folder.MLFLOW_RUN_FILE]


def test_a_run_folder_on_a_filesystem_without_hard_links_is_claimed_by_one_driver_too(tmp_path, monkeypatch):
    """FUSE mounts (s3fs, gcsfuse) refuse link(): the claim falls back to O_EXCL alone, still one winner,
    and the losers wait out the instant the record is empty instead of failing to read it."""
    import errno

    def no_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    for attempt in range(5):
        folder = str(tmp_path / f"run-{attempt}")
        won = claims_of(folder)
        assert len(won) == 1 and run_folder.read_mlflow_run(folder) == won[0]
        assert os.listdir(folder) == [run_folder.MLFLOW_RUN_FILE]  # the scratch copy removed


@pytest.mark.integration
@pytest.mark.core
@pytest.mark.s3
def test_a_run_folder_on_s3_is_claimed_by_one_driver(s3_endpoint):
    from maskx.datasets import storage

    storage.s3_client().create_bucket(Bucket="claims")
    won = claims_of("s3://claims/run")
    assert len(won) == 1 and run_folder.read_mlflow_run("s3://claims/run") == won[0]


def test_a_checkpoint_write_that_fails_leaves_no_scratch_folder(tmp_path, monkeypatch):
    import tempfile

    class FullDisk:
        def save(self, path):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = torch.nn.Linear(4, 2)
    optimizer = build_optimizer(model, SolverConfig())
    contents = run_folder.checkpoint_contents(model, optimizer, build_lr_scheduler(optimizer, SolverConfig()),
                                              run_folder.TrainState(2))
    with pytest.raises(OSError, match="No space left"):
        run_folder.write_checkpoint_to_scratch(contents, dump_config(TrainConfig()), FullDisk())
    assert list(tmp_path.iterdir()) == []
    folder = run_folder.write_checkpoint_to_scratch(contents, dump_config(TrainConfig()),
                                                    build_vocabulary(COCO_CATEGORIES))
    assert os.path.dirname(folder) == str(tmp_path) and "complete.json" in os.listdir(folder)
