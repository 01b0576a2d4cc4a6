"""Multi-node training on one machine (`ray.cluster_utils.Cluster`: a head with no CPUs and two
1-CPU worker nodes) and the faults a long run on spot nodes meets: a worker node killed mid-run,
a corrupted latest checkpoint."""
import os
import tarfile
import threading
import time

import pytest

from orchestrator import engine
from orchestrator.config import load_config
from orchestrator.trainer import train

pytestmark = pytest.mark.integration

TINY = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny-cpu.yaml")
MAX_ITER = 8


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def spread_config(synth_shards, tmp, name):
    return load_config(TINY, [
        f"data.train=[{{manifest: {synth_shards['coco_train']}, weight: 1.0}}, {{manifest: {synth_shards['vg']}, weight: 0.5}}]",
        "data.val=null", "data.batch_size=2", "data.loader_workers=0", f"solver.max_iter={MAX_ITER}",
        "solver.warmup_iters=2", "log_every=2", "checkpoint.every=2", "checkpoint.num_to_keep=2",
        "scaling.num_workers=2", "scaling.placement_strategy=SPREAD", f"checkpoint.storage_path={tmp}/ray_results",
        f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db", "mlflow.registered_model=null", f"name={name}"])


def consumed(folder):
    """rank -> {iteration: keys}, the last occurrence of each iteration winning (what the model saw), and
    rank -> the nodes the rank ran on, one per (re)start."""
    samples, nodes = {}, {}
    for name in sorted(os.listdir(folder)):
        per_iteration, starts = {}, []
        for line in open(os.path.join(folder, name)):
            first, second = line.split()
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


@pytest.fixture(scope="module")
def unbroken_run(cluster, synth_shards, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unbroken")
    result = train(spread_config(synth_shards, tmp, "unbroken"), record_keys_to=str(tmp / "keys"))
    return result, consumed(str(tmp / "keys"))


def shard_of_key(synth_shards):
    from datasets.shard_format import load_manifest

    shard_of = {}
    for source in ("coco_train", "vg"):
        for url in load_manifest(synth_shards[source]).shard_urls():
            with tarfile.open(url) as tar:
                shard_of.update({name.split(".")[0]: url for name in tar.getnames()})
    return shard_of


def test_one_worker_per_node_each_streaming_its_own_shards(cluster, unbroken_run, synth_shards):
    _, workers = cluster
    result, (samples, nodes) = unbroken_run
    assert engine.load_checkpoint(result.checkpoint)["iteration"] == MAX_ITER
    assert sorted(n for starts in nodes.values() for n in starts) == sorted(w.node_id for w in workers)
    shard_of = shard_of_key(synth_shards)
    # Shards are split by world rank within a pass over a source (later passes reshuffle, and a rank
    # that used up its share cycles on): the first iterations come from disjoint shards.
    rank0, rank1 = ({shard_of[k] for i in (1, 2) for k in samples[r][i]} for r in ("rank0.txt", "rank1.txt"))
    assert rank0 and rank1 and not rank0 & rank1


def test_a_killed_worker_node_resumes_from_the_checkpoint_losing_and_repeating_no_sample(cluster, unbroken_run,
                                                                                           synth_shards, tmp_path):
    ray_cluster, workers = cluster
    cfg = spread_config(synth_shards, tmp_path, "broken")
    outcome = {}

    def run():
        try:
            outcome["result"] = train(cfg, record_keys_to=str(tmp_path / "keys"))
        except Exception as exc:  # shown by the asserts below
            outcome["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    deadline = time.time() + 300
    while not list((tmp_path / "ray_results").glob("broken-*/checkpoint_00000004")):
        assert runner.is_alive() and time.time() < deadline, outcome
        time.sleep(0.2)
    # A spot node goes away mid-run; the autoscaler would bring a replacement, as here.
    ray_cluster.remove_node(workers[1], allow_graceful=False)
    replacement = ray_cluster.add_node(num_cpus=1)
    runner.join(timeout=600)
    workers[1] = replacement

    result = outcome["result"]
    assert engine.load_checkpoint(result.checkpoint)["iteration"] == MAX_ITER
    samples, nodes = consumed(str(tmp_path / "keys"))
    assert any(len(starts) == 2 for starts in nodes.values()), nodes  # the group really restarted
    assert replacement.node_id in {n for starts in nodes.values() for n in starts}
    _, (expected, _) = unbroken_run
    # Per rank and iteration, the samples the finished model saw are exactly the unbroken run's.
    assert samples == expected


def test_a_corrupted_latest_checkpoint_falls_back_to_the_previous_one(unbroken_run, tmp_path, caplog):
    import shutil

    import ray.train

    from orchestrator.train_loop import _load_latest_readable

    result, _ = unbroken_run
    run_folder = tmp_path / "run"
    shutil.copytree(result.run_folder, run_folder)
    latest = run_folder / os.path.basename(result.checkpoint)
    (latest / engine.CHECKPOINT_FILE).write_bytes(b"half a file")
    with caplog.at_level("WARNING"):
        contents = _load_latest_readable(ray.train.Checkpoint(str(latest)))
    assert contents["iteration"] == MAX_ITER - 2
    assert f"checkpoint {latest}/state.pt: unreadable" in caplog.text
    assert "resuming from" in caplog.text and "checkpoint_00000006" in caplog.text
