"""A multi-host rehearsal: `ray job submit -- maskx train` on a cluster of test hosts that share no disk
(`cluster.py`), and the faults of a real one: a worker host lost, a worker host cut off the network
past Ray's health check, the head lost; an elastic run that loses a host and grows back. Each run must train on exactly the samples an unbroken run
trains on, iteration by iteration, and log each metric step once, in one MLflow run."""
import os
from collections import defaultdict

import pytest

from maskx.orchestrator.config import load_config

from ..conftest import canonical_keys, final_passes, wait_until
from .cluster import RehearsalCluster
from .hosts import can_make_namespaces

pytestmark = [pytest.mark.integration, pytest.mark.multihost,
              pytest.mark.skipif(bool(can_make_namespaces()), reason=str(can_make_namespaces()))]

MAX_ITER = 8
TINY = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny-cpu.yaml")


@pytest.fixture(scope="module")
def rehearsal(synth_shards, tmp_path_factory):
    cluster = RehearsalCluster(tmp_path_factory.mktemp("hosts"))
    try:
        for _ in range(2):
            cluster.add_worker()
        shards = cluster.upload({name: synth_shards[key] for name, key in
                                 (("coco-train", "coco_train"), ("coco-val", "coco_val"), ("vg", "vg"))})
        yield cluster, shards
    finally:
        cluster.remove()
    assert all(os.path.exists(os.path.join(synth_shards[key], "manifest.json")) for key in ("coco_train", "coco_val", "vg"))


SHARD_CACHE = "/tmp/maskx-shard-cache"  # on each host's own /tmp


def train_args(shards, name, keys, overrides=()):
    return ["train", "--config", "configs/tiny-cpu.yaml", "--record-keys-to", f"/tmp/{keys}",
            f"data.train=[{{manifest: {shards['coco-train']}, weight: 1.0}}, {{manifest: {shards['vg']}, weight: 0.5}}]",
            # Micro-batches of one image (global batch 4): padding that depends on the layout plays no part.
            "data.val=null", "data.batch_size=1", "data.global_batch_size=4", "data.loader_workers=0",
            # Repeat-factor sampling on: every restart, resize and resume must also read each image's
            # repeats exactly (the copies come from S3 shards' image_classes.json).
            "data.repeat_threshold=0.3", f"solver.max_iter={MAX_ITER}",
            # Each host keeps the S3 shards it read on its own disk: restarts and resizes read them there.
            f"data.cache_dir={SHARD_CACHE}",
            "solver.warmup_iters=2", "log_every=2", "checkpoint.every=2", "checkpoint.num_to_keep=2",
            "scaling.num_workers=2", "scaling.placement_strategy=SPREAD", "checkpoint.storage_path=s3://maskx/runs",
            "mlflow.experiment=rehearsal", "mlflow.registered_model=null", f"name={name}", *overrides]


def passes(cluster, keys):
    """rank -> iteration -> the keys of each pass over it, gathered from every host's own /tmp (a
    restart redoes the iterations since its checkpoint, maybe on another host)."""
    seen = defaultdict(lambda: defaultdict(list))
    for host in cluster.worker_disks():
        folder = host.tmp / keys
        for name in sorted(os.listdir(folder)) if folder.exists() else []:
            rank = name.removesuffix(".txt")
            current = {}
            for line in open(folder / name):
                first, second = line.split()[:2]
                if first == "node":
                    for iteration, batch in current.items():
                        seen[rank][iteration].append(batch)
                    current = {}
                else:
                    current.setdefault(int(first), []).append(second)
            for iteration, batch in current.items():
                seen[rank][iteration].append(batch)
    return seen


def last_iteration(cluster, keys, rank="rank0"):
    runs = passes(cluster, keys).get(rank, {})
    return max(runs, default=0)


def assert_same_samples(cluster, keys, unbroken):
    """Every pass of every iteration trained on the unbroken run's samples, and no iteration is missing."""
    broken = passes(cluster, keys)
    assert sorted(broken) == sorted(unbroken)
    for rank, iterations in broken.items():
        assert sorted(iterations) == list(range(1, MAX_ITER + 1)), rank
        for iteration, batches in iterations.items():
            assert all(batch == unbroken[rank][iteration][0] for batch in batches), (rank, iteration, batches)
    return broken


def run_of(cluster, name):
    """The MLflow run of run `name-*`: its id, status and each metric's steps."""
    return cluster.query(
        "exp = client.get_experiment_by_name('rehearsal')\n"
        f"runs = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name.startswith('{name}-')]\n"
        "print(json.dumps([{'id': r.info.run_id, 'name': r.info.run_name, 'status': r.info.status,\n"
        "  'steps': {k: [m.step for m in client.get_metric_history(r.info.run_id, k)] for k in r.data.metrics}}\n"
        "  for r in runs]))")


def runs_by_kind(cluster):
    """Each MLflow run of the rehearsal by the first word of its name (`elastic`, `unbroken`, `cut`):
    its resize tags, its losses by step, and its world sizes with their timestamps."""
    return cluster.query(
        "exp = client.get_experiment_by_name('rehearsal')\n"
        "out = {}\n"
        "for r in client.search_runs([exp.experiment_id]):\n"
        "    history = lambda key: client.get_metric_history(r.info.run_id, key)\n"
        "    out[r.info.run_name.split('-')[0]] = {\n"
        "        'tags': {k: v for k, v in r.data.tags.items() if k.startswith('maskx.resize.')},\n"
        "        'loss': {m.step: m.value for m in history('loss/loss')},\n"
        "        'world_size': [(m.timestamp, m.value) for m in history('train/world_size')]}\n"
        "print(json.dumps(out))")


def assert_logged_once(run):
    assert run["status"] == "FINISHED"
    for key in ("loss/loss", "train/lr"):
        assert sorted(run["steps"][key]) == list(range(2, MAX_ITER + 1, 2)), (key, run["steps"][key])


@pytest.fixture(scope="module")
def unbroken(rehearsal):
    """(a) Two workers on two hosts train, evaluate and register; the samples each rank saw."""
    cluster, shards = rehearsal
    args = train_args(shards, "unbroken", "keys-unbroken",
                      [f"data.val={shards['coco-val']}", "mlflow.registered_model=maskx-rehearsal"])
    job = cluster.submit(args)
    assert job.returncode == 0, job.stdout[-6000:] + job.stderr[-3000:]
    seen = passes(cluster, "keys-unbroken")
    assert all(len(batches) == 1 for iterations in seen.values() for batches in iterations.values())
    return seen, job


def test_two_worker_hosts_train_evaluate_and_register(rehearsal, unbroken):
    cluster, _ = rehearsal
    seen, _ = unbroken
    assert sorted(seen) == ["rank0", "rank1"]
    hosts_used = [h.name for h in cluster.workers if (h.tmp / "keys-unbroken").exists()]
    assert len(hosts_used) == 2  # one worker per host: each read its shards from S3, not a shared disk
    for host in cluster.workers:  # ... into its own shard cache
        if host.name in hosts_used:
            assert list((host.tmp / SHARD_CACHE.removeprefix("/tmp/")).glob("*.tar")), host.name
    [run] = run_of(cluster, "unbroken")
    assert_logged_once(run)
    assert "segm/setB/AP" in run["steps"] and "bbox/setA/AP" in run["steps"]
    # The laptop loads the registered model: its files came through the tracking server, not a disk.
    registered = cluster.query(
        "from maskx.orchestrator.serving.inference import load_model\n"
        "v = client.get_model_version('maskx-rehearsal', '1')\n"
        f"loaded = load_model('models:/maskx-rehearsal/1', {cluster.tracking_uri!r})\n"
        "print(json.dumps({'run_id': v.run_id, 'artifacts': [a.path for a in client.list_artifacts(v.run_id)],\n"
        "                  'classes': loaded.vocab.num_classes}))")
    assert registered["run_id"] == run["id"] and registered["classes"] == 11
    assert {"eval", "overlays", "config.yaml"} <= set(registered["artifacts"])
    checkpoints = cluster.query(
        f"listed = s3.list_objects_v2(Bucket='maskx', Prefix='runs/{run['name']}/')\n"
        "print(json.dumps(sorted({o['Key'].split('/')[2] for o in listed['Contents']})))")
    assert {"checkpoint_00000006", "checkpoint_00000008"} <= set(checkpoints)


def host_of_rank(cluster, keys, rank):
    return next(h for h in cluster.workers if (h.tmp / keys / f"{rank}.txt").exists())


def finished(cluster, name):
    return wait_until(lambda: next((r for r in run_of(cluster, name) if r["status"] == "FINISHED"), None),
                      f"run {name} finished", timeout=600, interval=3, details=cluster.job_log)


def submit_past_the_first_checkpoint(cluster, shards, name, keys) -> list[str]:
    """A job submitted without waiting, once it trains past its checkpoint at iteration 4; its args."""
    args = train_args(shards, name, keys)
    job = cluster.submit(args, wait=False)
    assert job.returncode == 0, job.stdout + job.stderr
    wait_until(lambda: last_iteration(cluster, keys) >= 5, "iteration 5 past the checkpoint at 4",
               details=cluster.job_log)
    return args


ELASTIC_ITER = 50  # Ray sees a new node within ~20 s (its resource view refreshes on a tick): room to grow


def test_an_elastic_run_loses_a_host_goes_on_alone_and_grows_back_on_a_new_one(rehearsal, unbroken, synth_shards):
    """scaling.num_workers=[1, 2] (runtime env as cluster/runtime_env_elastic.yaml): rank 1's host is
    killed after the checkpoint at 4; the run goes on at once on the one host left; a new host joins
    (what the autoscaler does for a lost spot node) and the run grows back to two workers. Every
    iteration trained on the run's canonical samples, with the same global batch; each metric step
    logged once; the MLflow run says each resize; the losses equal the unbroken two-host run's (to
    1e-6 before the loss, 1e-3 after it)."""
    cluster, shards = rehearsal
    elastic = ["scaling.num_workers=[1, 2]", "scaling.elastic_resize_monitor_interval_s=3", f"solver.max_iter={ELASTIC_ITER}"]
    job = cluster.submit(train_args(shards, "elastic", "keys-elastic", elastic), wait=False,
                         env_vars={"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "20"})
    assert job.returncode == 0, job.stdout + job.stderr
    wait_until(lambda: last_iteration(cluster, "keys-elastic") >= 5, "iteration 5 past the checkpoint at 4",
               details=cluster.job_log)
    lost = host_of_rank(cluster, "keys-elastic", "rank1")
    lost.kill()
    cluster.workers.remove(lost)

    def keys_logs():
        return [path for host in cluster.workers + [lost] for path in (host.tmp / "keys-elastic").glob("*.txt")]

    wait_until(lambda: final_passes(keys_logs())[1][-1][0][1] == 1, "the restart on the one host left", timeout=300,
               details=cluster.job_log)
    replacement = cluster.add_worker()
    run = finished(cluster, "elastic")
    final, starts = final_passes(keys_logs())
    assert [w for (_, w), _ in starts] == [2, 1, 2], starts
    assert starts[1][1], starts  # the one host trained before the new one joined
    assert (replacement.tmp / "keys-elastic").exists()
    cfg = load_config(TINY, [f"data.train=[{{manifest: {synth_shards['coco_train']}, weight: 1.0}}, "
                             f"{{manifest: {synth_shards['vg']}, weight: 0.5}}]", "data.batch_size=1",
                             "data.global_batch_size=4", "data.loader_workers=0", "data.repeat_threshold=0.3",
                             "scaling.num_workers=[1, 2]"])
    assert final == canonical_keys(cfg, ELASTIC_ITER)
    assert sorted(run["steps"]["loss/loss"]) == list(range(2, ELASTIC_ITER + 1, 2))
    details = runs_by_kind(cluster)
    elastic, steady = details["elastic"], details["unbroken"]
    sizes = [value for _, value in sorted(elastic["world_size"])]
    assert [v for i, v in enumerate(sizes) if i == 0 or v != sizes[i - 1]] == [2.0, 1.0, 2.0], sizes
    resizes = [elastic["tags"][k] for k in sorted(elastic["tags"])]
    assert len(resizes) == 2 and ": 2 -> 1 workers" in resizes[0] and ": 1 -> 2 workers" in resizes[1], resizes
    assert "after a failure" in resizes[0] and "global batch 4 kept" in resizes[0]
    # The iterations redone at one worker: the unbroken run's losses but for the order of floating-point
    # sums. With two-image micro-batches they differed by 1.6% and 0.9% (2026-11-30): a micro-batch pads
    # its images to the largest, and which images share one depends on the layout (docs/training.md).
    gaps = {int(step): abs(elastic["loss"][step] - value) / value for step, value in steady["loss"].items()}
    print(f"elastic rehearsal: loss gaps to the unbroken run {gaps}")
    assert sorted(gaps) == list(range(2, MAX_ITER + 1, 2)) and max(gaps.values()) < 1e-3, gaps
    assert gaps[2] < 1e-6 and gaps[4] < 1e-6, gaps  # before the loss: the same run


def test_a_worker_host_cut_off_past_the_health_check_is_replaced_and_logs_nothing_twice(rehearsal, unbroken):
    cluster, shards = rehearsal
    submit_past_the_first_checkpoint(cluster, shards, "cut-off", "keys-cut")
    # Rank 0's host: the one that logs metrics, and that would log stale ones when it comes back.
    cut = host_of_rank(cluster, "keys-cut", "rank0")
    cut.cut()
    cluster.workers.remove(cut)
    replacement = cluster.add_worker()
    try:
        wait_until(lambda: (replacement.tmp / "keys-cut").exists(), "the run restarted on the new host", timeout=300,
                   details=cluster.job_log)
    finally:
        cut.reconnect()  # long past the health check: Ray declared the host dead
    run = finished(cluster, "cut-off")
    assert_same_samples(cluster, "keys-cut", unbroken[0])
    assert_logged_once(run)
    # Restarted at the same world size from its S3 checkpoint: the unbroken run's losses, to the bit
    # (0.0 measured on 2026-11-30).
    losses = {kind: run["loss"] for kind, run in runs_by_kind(cluster).items()}
    gaps = {step: abs(losses["cut"][step] - value) / value for step, value in losses["unbroken"].items()}
    assert len(gaps) == MAX_ITER // 2 and max(gaps.values()) < 1e-6, gaps
    # The cut-off host learned it was declared dead and left the cluster.
    wait_until(lambda: not any("raylet" in name for name in process_names(cut)), "the cut-off raylet exits", timeout=120)


def process_names(host):
    names = []
    for pid in host.pids():
        try:
            names.append(open(f"/proc/{pid}/cmdline").read())
        except OSError:
            pass
    return names


def test_the_head_lost_then_resume_continues_from_s3_in_the_same_mlflow_run(rehearsal, unbroken):
    cluster, shards = rehearsal
    args = submit_past_the_first_checkpoint(cluster, shards, "head-lost", "keys-head")
    [interrupted] = run_of(cluster, "head-lost")
    cluster.restart()  # every process of the cluster killed, then started again

    resumed = cluster.submit(args + ["--resume", interrupted["name"]])
    assert resumed.returncode == 0, resumed.stdout[-6000:] + resumed.stderr[-3000:]
    assert "resuming from s3://maskx/runs/" in resumed.stdout
    [run] = run_of(cluster, "head-lost")
    assert run["id"] == interrupted["id"]
    assert_logged_once(run)
    assert_same_samples(cluster, "keys-head", unbroken[0])
