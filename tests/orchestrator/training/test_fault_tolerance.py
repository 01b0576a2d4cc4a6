"""Multi-node training on one machine (`ray.cluster_utils.Cluster`: a head with no CPUs and two
1-CPU worker nodes) and the faults a long run on spot nodes meets: a worker node killed mid-run,
a corrupted latest checkpoint; elastic runs that shrink and grow, and resumes at another world size."""
import os
import re
import shutil
import tempfile
import threading
import time

import pytest

from maskx.orchestrator import run_folder
from maskx.orchestrator.config import load_config
from maskx.orchestrator.training.trainer import train

from ...conftest import canonical_keys, final_passes, wait_until
from ...multihost.hosts import can_make_namespaces

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

TINY = os.path.join(os.path.dirname(__file__), "..", "..", "..", "configs", "tiny-cpu.yaml")
MAX_ITER = 8


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    # As cluster/runtime_env_elastic.yaml: an attempt to start a group the cluster can no longer place
    # (Ray's resource view refreshes every ~20 s) gives up after 20 s, not 60, and the run shrinks.
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "20"
    os.environ["RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S"] = "1"  # Ray Train's watcher of node drains (default 5)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()
    del os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"], os.environ["RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S"]


def spread_config(synth_shards, tmp, name, overrides=()):
    return load_config(TINY, spread_overrides(synth_shards, tmp, name, overrides))


def spread_overrides(synth_shards, tmp, name, overrides=()):
    sources = [f"data.train=[{{manifest: {synth_shards['coco_train']}, weight: 1.0}}, {{manifest: {synth_shards['vg']}, weight: 0.5}}]"] \
        if synth_shards else []
    return sources + [
        "data.val=null", "data.loader_workers=0", f"solver.max_iter={MAX_ITER}",
        "solver.warmup_iters=2", "log_every=2", "checkpoint.every=2", "checkpoint.num_to_keep=3",
        # Global batch 4 in 6 partitions: up to 6 workers can continue a run. Micro-batches of one image:
        # a micro-batch pads its images to the largest, so with two the padding (and the losses, ~1%)
        # would depend on which images the layout puts together (docs/training.md).
        "data.batch_size=1", "data.global_batch_size=4", "data.partitions=6",
        # Repeat-factor sampling on: every resume and resize below must also read each image's repeats exactly.
        "data.repeat_threshold=0.3",
        "scaling.num_workers=2", "scaling.placement_strategy=SPREAD", f"checkpoint.storage_path={tmp}/ray_results",
        # The cluster's "hosts" are processes of this machine: its temp folder is one they all see.
        f"scaling.shared_paths=[{tempfile.gettempdir()}]",
        f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db", "mlflow.registered_model=null", f"name={name}", *overrides]


def consumed(folder):
    """rank -> {iteration: keys}, the last occurrence of each iteration winning (what the model saw), and
    rank -> the nodes the rank ran on, one per (re)start."""
    samples, nodes = {}, {}
    for name in sorted(os.listdir(folder)):
        per_iteration, starts = {}, []
        for line in open(os.path.join(folder, name)):
            first, second = line.split()[:2]
            if first == "node":
                starts.append(second)
                redone = set()
            else:
                iteration = int(first)
                if iteration not in redone:  # a restart redoes iterations: keep the new pass only
                    per_iteration[iteration] = []
                    redone.add(iteration)
                per_iteration[iteration].append(second)
        samples[name], nodes[name] = per_iteration, starts
    return samples, nodes


def train_in_background(cfg, keys_folder, callbacks=()):
    """`train` in a thread; the outcome dict gets its `result` or its `error`."""
    outcome = {}

    def run():
        try:
            outcome["result"] = train(cfg, record_keys_to=str(keys_folder), callbacks=list(callbacks))
        except Exception as exc:  # shown by the test's asserts
            outcome["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    return runner, outcome


@pytest.fixture(scope="module")
def unbroken_run(cluster, synth_shards, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unbroken")
    result = train(spread_config(synth_shards, tmp, "unbroken"), record_keys_to=str(tmp / "keys"))
    return result, consumed(str(tmp / "keys"))


def test_one_worker_per_node_each_streaming_its_own_partitions(cluster, unbroken_run):
    import mlflow

    _, workers = cluster
    result, (samples, nodes) = unbroken_run
    assert run_folder.load_state(result.checkpoint)["iteration"] == MAX_ITER
    assert sorted(n for starts in nodes.values() for n in starts) == sorted(w.node_id for w in workers)
    # Each rank reads its own partitions (rank 0: 0, 2, 4; rank 1: 1, 3, 5), which split the shards,
    # or a shard's samples where there are fewer shards than partitions: no rank reads another's
    # samples (an image's repeats stay in its partition).
    rank0, rank1 = ([k for i in (1, 2) for k in samples[r][i]] for r in ("rank0.txt", "rank1.txt"))
    assert len(rank0) == len(rank1) == 4 and not set(rank0) & set(rank1)
    # Repeat-factor sampling (data.repeat_threshold) shows what it does in the run's MLflow run.
    client = mlflow.MlflowClient(result.tracking_uri)
    assert {a.path for a in client.list_artifacts(result.mlflow_run_id, "data")} == {
        "data/class_frequency.png", "data/class_frequency.json", "data/classes.png"}
    png = client.download_artifacts(result.mlflow_run_id, "data/class_frequency.png", tempfile.mkdtemp())
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    params = client.get_run(result.mlflow_run_id).data.params
    assert params["data.repeat_threshold"] == "0.3" and int(params["data.repeat.images_above_one"]) > 0


def test_a_run_on_several_hosts_with_local_paths_fails_before_it_starts(cluster, synth_shards, tmp_path):
    cfg = spread_config(synth_shards, tmp_path, "local-paths", ["scaling.shared_paths=[]"])
    with pytest.raises(ValueError, match=r"this Ray cluster has several hosts.*checkpoint.storage_path .*data.train.0.manifest"):
        train(cfg)
    assert not (tmp_path / "ray_results").exists()  # nothing started: no run folder, no MLflow run


def test_a_corrupted_latest_checkpoint_falls_back_to_the_previous_one(unbroken_run, tmp_path, caplog):
    import shutil

    result, _ = unbroken_run
    folder = tmp_path / "run"
    shutil.copytree(result.run_folder, folder)
    latest = folder / os.path.basename(result.checkpoint)
    (latest / run_folder.STATE_FILE).write_bytes(b"half a file")
    with caplog.at_level("INFO"):
        url, contents = run_folder.resume_state(str(folder), offered=str(latest))
    assert contents["iteration"] == MAX_ITER - 2 and url.endswith("checkpoint_00000006")
    assert f"checkpoint {latest} passed over: state.pt is 11 bytes" in caplog.text
    assert "resuming from" in caplog.text and "Ray offered checkpoint_00000008" in caplog.text


def test_the_mlflow_server_down_mid_run_and_at_the_end(cluster, synth_shards, damaged_shards, tmp_path, monkeypatch):
    """The tracking server goes down mid-run: training goes on and, once it is back, what it missed
    catches up. It dies again right after the last checkpoint: the run ends with a message naming the
    checkpoint and the --resume command, and that command, once the server is back, trains nothing,
    logs the evaluation and the model and registers it, in the same MLflow run. One of the run's shards
    is damaged mid-way: its lost samples are skipped, counted and logged like every other metric."""
    import signal

    import mlflow
    import ray.train

    from ...conftest import free_port, start_mlflow_server, stop_mlflow_server

    class StopServerAtLastReport(ray.train.UserCallback):  # runs in Ray Train's controller, after the report
        def __init__(self, pid_file: str, iteration: int):
            self.pid_file, self.iteration = pid_file, iteration

        def after_report(self, run_context, metrics, checkpoint):
            if checkpoint is not None and metrics[0].get("iteration") == self.iteration:
                while not os.path.exists(self.pid_file):  # the server restarted after the outage mid-run
                    time.sleep(0.1)
                pid = int(open(self.pid_file).read())
                os.killpg(pid, signal.SIGTERM)
                while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
                    time.sleep(0.1)

    def start_server():
        server = start_mlflow_server(store, port)
        (tmp_path / "server.pid").write_text(str(server.pid))
        return server

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail in seconds, not after minutes of retries
    store, port = tmp_path / "mlflow", free_port()
    store.mkdir()
    server = start_server()
    uri = f"http://127.0.0.1:{port}"
    cfg = spread_config({**synth_shards, "coco_train": damaged_shards}, tmp_path, "outage",
                        [f"mlflow.tracking_uri={uri}", "log_every=1", f"data.val={synth_shards['coco_val']}",
                         "mlflow.registered_model=maskx-outage", "data.max_skipped_fraction=0.5",
                         "mlflow.eval_figures=false", "mlflow.eval_images=0"])
    runner, outcome = train_in_background(cfg, tmp_path / "keys", [StopServerAtLastReport(str(tmp_path / "server.pid"), MAX_ITER)])
    client = mlflow.MlflowClient(uri)

    def runs_with_two_losses():
        experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        return runs if runs and len(client.get_metric_history(runs[0].info.run_id, "loss/loss")) >= 2 else None

    runs = wait_until(runs_with_two_losses, "two logged loss values", runner.is_alive, lambda: outcome)
    run_id = runs[0].info.run_id
    (tmp_path / "server.pid").unlink()
    stop_mlflow_server(server)
    keys = tmp_path / "keys" / "rank0.txt"
    # Training goes on while MLflow is down.
    wait_until(lambda: max((int(line.split()[0]) for line in open(keys) if not line.startswith("node")), default=0) >= 5,
               "iteration 5 with MLflow down", runner.is_alive, lambda: outcome)
    server = start_server()  # restarted on the same store; down again after the last checkpoint
    runner.join(timeout=600)
    assert "error" in outcome, outcome
    assert re.search(r"trained to the end \(checkpoint .*checkpoint_00000008\).*could not be logged to MLflow.*"
                     r"`maskx train --config \.\.\. --resume outage-", str(outcome["error"])), outcome
    server.wait()
    run_name = str(outcome["error"]).split("--resume ")[1].split("`")[0]

    server = start_server()
    try:
        resumed = train(cfg, resume=run_name, record_keys_to=str(tmp_path / "keys-resumed"))
        trained = [line for line in open(tmp_path / "keys-resumed" / "rank0.txt") if not line.startswith("node")]
        assert trained == []  # nothing trained again: only logged
        assert resumed.mlflow_run_id == run_id and resumed.model_version == "1"
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.info.run_name == run_name
        assert "segm/setB/AP" in run.data.metrics
        steps = sorted(m.step for m in client.get_metric_history(run_id, "loss/loss"))
        assert steps == list(range(1, MAX_ITER + 1))  # the values logged while it was down caught up, once each
        assert max(m.value for m in client.get_metric_history(run_id, "data/skipped_samples")) > 0
        assert client.get_model_version("maskx-outage", "1").run_id == run_id
    finally:
        stop_mlflow_server(server)


@pytest.fixture
def damaged_shards(synth_shards, tmp_path):
    """The COCO train shards with one truncated mid-way (what an interrupted upload leaves)."""
    import shutil

    folder = tmp_path / "coco-train-damaged"
    shutil.copytree(synth_shards["coco_train"], folder)
    shard = sorted(folder.glob("*.tar"))[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    return str(folder)


def all_ranks(samples):
    """rank -> {iteration: keys} as `consumed` gives it, to iteration -> sorted keys of every rank."""
    merged = {}
    for per_iteration in samples.values():
        for iteration, keys in per_iteration.items():
            merged.setdefault(iteration, []).extend(keys)
    return {i: sorted(k) for i, k in sorted(merged.items())}


def metric_history(result, key):
    import mlflow

    return sorted(mlflow.MlflowClient(result.tracking_uri).get_metric_history(result.mlflow_run_id, key),
                  key=lambda m: (m.step, m.timestamp))


ELASTIC_ITER = 50  # Ray sees a new node within ~20 s (its resource view refreshes on a tick): room to grow


# The same run, asserts and bounds as tests/multihost/test_rehearsal.py's elastic run, which goes through
# `ray job submit` on hosts that share no disk: where that one can run (root, as CI), this one would
# spend another two and a half minutes proving nothing more.
@pytest.mark.skipif(can_make_namespaces() is None, reason="the multi-host rehearsal runs this elastic run")
def test_an_elastic_run_goes_on_with_one_worker_and_grows_back(cluster, unbroken_run, synth_shards, tmp_path):
    """scaling.num_workers=[1, 2]: a worker node is lost after the checkpoint at 4; the run goes on at
    once on the one node left (no replacement yet); a node joins and the run grows back to two. The
    finished model trained each iteration on exactly the samples of the run's canonical order (each
    sample of each epoch once), with the same global batch, and its losses equal the unbroken run's."""
    import mlflow

    ray_cluster, workers = cluster
    cfg = spread_config(synth_shards, tmp_path, "elastic", ["scaling.num_workers=[1, 2]", f"solver.max_iter={ELASTIC_ITER}",
                                                            "scaling.elastic_resize_monitor_interval_s=3"])
    expected = canonical_keys(spread_config(synth_shards, tmp_path, "elastic"), ELASTIC_ITER)
    runner, outcome = train_in_background(cfg, tmp_path / "keys")
    keys = tmp_path / "keys"
    wait_until(lambda: list((tmp_path / "ray_results").glob("elastic-*/checkpoint_00000004")),
               "the checkpoint at iteration 4", runner.is_alive, lambda: outcome)
    lost_at = time.time()
    ray_cluster.remove_node(workers[1], allow_graceful=False)
    # Add a node as soon as the run has restarted on the one left; Ray grows the group back once it
    # sees the node (its resource view refreshes every ~20 s) and its monitor looks again.
    wait_until(lambda: final_passes(keys.glob('*.txt'))[1][-1][0][1] == 1, "the restart on one worker", runner.is_alive,
               lambda: outcome, timeout=300)
    joined_at = time.time()
    workers[1] = ray_cluster.add_node(num_cpus=1)
    runner.join(timeout=600)
    assert "result" in outcome, outcome
    result = outcome["result"]

    final, starts = final_passes(keys.glob('*.txt'))
    assert [w for (_, w), _ in starts] == [2, 1, 2], starts  # shrank to one, grew back to two
    assert starts[1][1], starts  # one worker trained before the group grew: it did not wait for a node
    assert final == expected  # every iteration: the canonical samples, once each
    _, (unbroken, _) = unbroken_run
    assert all_ranks(unbroken) == {i: k for i, k in expected.items() if i <= MAX_ITER}
    world_sizes = sorted(metric_history(result, "train/world_size"), key=lambda m: m.timestamp)
    changes = [m for i, m in enumerate(world_sizes) if i == 0 or m.value != world_sizes[i - 1].value]
    assert [m.value for m in changes] == [2.0, 1.0, 2.0], [(m.step, m.value) for m in world_sizes]
    tags = mlflow.MlflowClient(result.tracking_uri).get_run(result.mlflow_run_id).data.tags
    resizes = [tags[k] for k in sorted(tags) if k.startswith("maskx.resize.")]
    assert len(resizes) == 2 and ": 2 -> 1 workers" in resizes[0] and ": 1 -> 2 workers" in resizes[1], resizes
    assert "after a failure" in resizes[0] and "global batch 4 kept" in resizes[0]
    losses = metric_history(result, "loss/loss")
    # Iterations redone after each restart are not logged to MLflow a second time.
    assert [m.step for m in losses] == list(range(2, ELASTIC_ITER + 1, 2))
    ours = {m.step: m.value for m in losses}
    theirs = {m.step: m.value for m in metric_history(unbroken_run[0], "loss/loss")}
    gaps = [abs(ours[s] - theirs[s]) / theirs[s] for s in sorted(theirs)]
    timeline = (f"elastic timeline: node lost after the checkpoint at 4; 1 worker training from iteration "
                f"{changes[1].step}, {changes[1].timestamp / 1000 - lost_at:.1f} s after the loss, trained "
                f"{starts[1][1][0]}..{starts[1][1][-1]}; node added {joined_at - lost_at:.1f} s after the loss; "
                f"2 workers again from iteration {changes[2].step}, {changes[2].timestamp / 1000 - joined_at:.1f} s "
                f"after it joined; loss gaps to the unbroken run {[f'{g:.1e}' for g in gaps]}")
    print(timeline)
    # A step's gradient, its reported losses and each image's sampled anchors and RoIs do not depend on the
    # layout (docs/training.md): what is left is the order of floating-point sums (was < 0.2 before).
    assert max(gaps) < 1e-3, timeline


PREEMPTED_ITER = 14


def test_a_preemption_notice_commits_a_checkpoint_and_the_restart_goes_on_from_it(cluster, synth_shards, tmp_path):
    """A worker node gets a preemption notice: Ray's drain of the node with a deadline, what the
    autoscaler sends for a spot reclaim (`ray drain-node`). The ranks commit a checkpoint at the next
    check although `checkpoint.every` is far off; the node goes; at the deadline Ray Train restarts the
    group (on a new node) from that checkpoint: the restart's first iteration is the one after it,
    and every iteration trained on the run's canonical samples."""
    import subprocess
    import sys

    ray_cluster, workers = cluster
    overrides = ["checkpoint.every=100", "checkpoint.preemption_check_every=1", f"solver.max_iter={PREEMPTED_ITER}"]
    cfg = spread_config(synth_shards, tmp_path, "preempted", overrides)
    runner, outcome = train_in_background(cfg, tmp_path / "keys")
    rank1 = tmp_path / "keys" / "rank1.txt"
    wait_until(lambda: rank1.exists() and len(rank1.read_text().splitlines()) > 3, "rank 1 training",
               runner.is_alive, lambda: outcome)
    node_id = rank1.read_text().split()[1]
    drained_after = max(int(line.split()[0]) for line in rank1.read_text().splitlines() if not line.startswith("node"))
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    subprocess.run([ray, "drain-node", "--address", ray_cluster.address, "--node-id", node_id,
                    "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot reclaim (test)",
                    "--deadline-remaining-seconds", "20"], check=True, capture_output=True, timeout=60)
    committed = wait_until(lambda: list((tmp_path / "ray_results").glob("preempted-*/checkpoint_*/complete.json")),
                           "the checkpoint on the notice", runner.is_alive, lambda: outcome, timeout=120, interval=0.2)
    noticed = int(committed[0].parent.name.removeprefix("checkpoint_"))
    lost = next(i for i, w in enumerate(workers) if w.node_id == node_id)
    ray_cluster.remove_node(workers[lost], allow_graceful=False)  # the reclaim
    workers[lost] = ray_cluster.add_node(num_cpus=1)  # the autoscaler's replacement
    runner.join(timeout=600)
    assert "result" in outcome, outcome

    final, starts = final_passes((tmp_path / "keys").glob("*.txt"))
    print(f"preemption: drained after iteration {drained_after}, checkpoint at {noticed}, "
          f"restart trained {starts[-1][1][0]}..{starts[-1][1][-1]}")
    assert [w for (_, w), _ in starts] == [2, 2], starts
    # The checkpoint answers the notice: taken after the drain, not one that happened to be there.
    assert drained_after <= noticed < PREEMPTED_ITER and starts[1][1][0] == noticed + 1, (drained_after, noticed, starts)
    _, nodes = consumed(str(tmp_path / "keys"))
    restarted_on = {starts_of_rank[-1] for starts_of_rank in nodes.values()}
    assert workers[lost].node_id in restarted_on and node_id not in restarted_on, (nodes, node_id)
    assert final == canonical_keys(spread_config(synth_shards, tmp_path, "preempted"), PREEMPTED_ITER)


def test_a_two_worker_checkpoint_resumes_exactly_at_three_workers(cluster, unbroken_run, synth_shards, tmp_path):
    """`maskx train --resume` with scaling.num_workers changed (4 GPUs yesterday, 6 today): the same
    samples per iteration as the unbroken two-worker run, the same global batch. (Resuming at fewer
    workers is what the elastic run above does after losing its node.)"""
    world_size = 3
    ray_cluster, _ = cluster
    result, (expected, _) = unbroken_run
    # The unbroken run as it stood at its checkpoint at 4: its folder and its MLflow store, copied.
    source_tmp = os.path.dirname(os.path.dirname(result.run_folder))
    folder = tmp_path / "ray_results" / result.run_name
    shutil.copytree(result.run_folder, folder)
    for later in ("checkpoint_00000006", "checkpoint_00000008"):
        shutil.rmtree(folder / later)
    (folder / "checkpoint_manager_snapshot.json").unlink()  # Ray's record of them; maskx reads the folder
    shutil.copy(os.path.join(source_tmp, "mlflow.db"), tmp_path / "mlflow.db")
    extra = ray_cluster.add_node(num_cpus=1) if world_size == 3 else None
    try:
        cfg = spread_config(synth_shards, tmp_path, "unbroken", [f"scaling.num_workers={world_size}"])
        resumed = train(cfg, resume=result.run_name, record_keys_to=str(tmp_path / "keys"))
    finally:
        if extra is not None:
            ray_cluster.remove_node(extra)
    final, starts = final_passes((tmp_path / "keys").glob("*.txt"))
    assert [w for (_, w), _ in starts] == [world_size]
    assert final == {i: k for i, k in all_ranks(expected).items() if i > 4}
    contents = run_folder.load_state(resumed.checkpoint)
    assert contents["iteration"] == MAX_ITER and contents["world_size"] == world_size
    assert contents["data_plan"] == {"global_batch": 4, "partitions": 6}
