import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .postgres import Postgres

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Every Ray instance this session starts (in this process or in the drivers it starts) runs token auth
# with one session token. Ray 2.60 turns token auth on for a local `ray.init()` and caches the mode in
# the process: a module that had a local instance, and a module after it that starts a
# `ray.cluster_utils.Cluster` without auth, left the second's TrainController unscheduled
# (ActorDiedError, "cancelled before it started running"), whatever order the lanes run the modules in.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", __import__("secrets").token_hex(16))
# Ray Train's controller polls its workers every 2 s by default, and a worker's report waits for that
# poll (a queue of one): each report, the start and the end of every run wait up to 2 s for nothing.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")

# Fixtures that start a service: a test that asks for one is an integration test, and says so.
SERVICE_FIXTURES = frozenset({"s3_endpoint", "s3_proxy", "team_server", "mlflow_server"})


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection reads the markers
def pytest_collection_modifyitems(config, items):
    """The two lanes (docs/testing.md). Every `integration` test that is not `core` is `slow`: a new
    service test joins the full lane (`make test-full`) unless someone decides it is the one proof of
    a capability, so the CI lane (`make test`, `-m "not slow"`) does not grow by itself."""
    unmarked = []
    for item in items:
        integration = item.get_closest_marker("integration") is not None
        if not integration and SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            unmarked.append(item.nodeid)
        if integration and item.get_closest_marker("core") is None:
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("core") is not None and not integration:
            unmarked.append(f"{item.nodeid} (core without integration)")
    if unmarked:
        raise pytest.UsageError("these tests start a service but are not marked integration: "
                                + ", ".join(unmarked))


# The only reasons a test may be skipped: what the machine legitimately lacks. Any other skip fails the
# session, since a skip on CI is a test that did not run.
DECLARED_SKIPS = (
    "the multi-host rehearsal runs this elastic run",  # test_fault_tolerance: the same run, where root
    "network namespaces need root",  # tests/multihost off root
    "cannot create a network namespace",
    "shared/data/",  # a checkout without the project's real samples beside it
)
_undeclared_skips: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not any(declared in reason for declared in DECLARED_SKIPS):
            _undeclared_skips.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    if _undeclared_skips and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if _undeclared_skips:
        terminalreporter.section("skipped for a reason the suite does not declare (tests/conftest.py)", red=True)
        for line in _undeclared_skips:
            terminalreporter.line(line)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def synth_paths(tmp_path_factory):
    from maskx.datasets.synth import write_synthetic

    return write_synthetic(str(tmp_path_factory.mktemp("synth")), train_images=24, val_images=10, vg_images=12, seed=3)


@pytest.fixture(scope="session")
def synth_shards(synth_paths, tmp_path_factory):
    """Synthetic COCO train/val and VG prepared with one vocabulary; returns their folders."""
    from maskx.datasets.prepare import prepare_coco, prepare_vg, prepare_vocabulary

    root = tmp_path_factory.mktemp("shards")
    vocab_path = str(root / "vocab.json")
    prepare_vocabulary(synth_paths["coco_train_annotations"], synth_paths["vg_objects"]).save(vocab_path)
    out = {"vocab": vocab_path}
    for split in ("train", "val"):
        out[f"coco_{split}"] = str(root / f"coco-{split}")
        prepare_coco(synth_paths[f"coco_{split}_annotations"], synth_paths[f"coco_{split}_images"], out[f"coco_{split}"],
                     vocab_path, shard_size=5, workers=1, progress=False)
    out["vg"] = str(root / "vg")
    prepare_vg(synth_paths["vg_image_data"], synth_paths["vg_objects"], synth_paths["vg_images"], out["vg"], vocab_path,
               shard_size=4, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API (moto's server mode) on 127.0.0.1, reached through AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    from maskx.datasets import storage

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    storage.s3_client.cache_clear()
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    storage.s3_client.cache_clear()


@pytest.fixture
def s3_proxy(s3_endpoint):
    """The S3 client's requests go through a proxy in front of moto that records them and injects the
    faults a test asks for (`s3_fault_proxy.py`)."""
    from maskx.datasets import storage

    from .s3_fault_proxy import FaultProxy

    proxy = FaultProxy(s3_endpoint)
    os.environ["AWS_ENDPOINT_URL"] = proxy.start()
    storage.s3_client.cache_clear()
    yield proxy
    os.environ["AWS_ENDPOINT_URL"] = s3_endpoint
    storage.s3_client.cache_clear()
    proxy.stop()


def wait_until(ready, what: str, still_running=lambda: True, details=lambda: "", timeout: float = 300.0,
               interval: float = 0.2):
    """Poll `ready()` until it returns something true, and return that. Fail, saying `what` and
    `details()`, when `still_running()` turns false (what we wait on died) or after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not (value := ready()):
        if not still_running():
            raise AssertionError(f"{what}: what we waited on stopped first. {details()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s. {details()}")
        time.sleep(interval)
    return value


def wait_for_http(url: str, process, timeout: float = 120.0) -> None:
    import urllib.request

    def answers():
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            return False

    wait_until(answers, f"{url} answering", lambda: process.poll() is None,
               lambda: f"{process.args[0]} exited with {process.returncode}", timeout, interval=0.5)


def start_mlflow_server(store, port):
    """`maskx mlflow-server` (real `mlflow server`, sqlite, proxied artifacts, 127.0.0.1 by default)."""
    import subprocess
    import sys

    log = open(os.path.join(store, f"server-{port}.log"), "a")
    process = subprocess.Popen([str(Path(sys.executable).parent / "maskx"), "mlflow-server", "--store", str(store),
                                "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_http(f"http://127.0.0.1:{port}/health", process)
    return process


def stop_mlflow_server(process):
    import signal

    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


TEAM_SERVER_NAME = "mlflow.mlflow.svc.cluster.local"  # the name cluster/mlflow-server.yaml's Service gives it


@dataclass
class TeamServer:
    """`maskx mlflow-server` as a team runs it: runs and registry in PostgreSQL, artifacts proxied to
    S3, logins. The session's clients are `user`; `other_user` has the default permission (READ)."""
    uri: str
    user: tuple[str, str]
    other_user: tuple[str, str]
    admin: tuple[str, str]
    postgres: "Postgres"
    artifacts_bucket: str
    s3_endpoint: str
    log: str


@pytest.fixture(scope="session")
def team_server(tmp_path_factory):
    """The team set-up, every part real: PostgreSQL 15 (its own data folder, a free port, a password),
    moto's S3 server for the artifacts, the MLflow server with MLflow's basic-auth app. The session's
    MLflow clients (this process, Ray workers started after it, `mlflow models serve`) log in as a user
    through MLflow's own MLFLOW_TRACKING_USERNAME/PASSWORD, as a team member would."""
    import secrets
    import subprocess
    import sys

    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    from .postgres import Postgres, available

    if not available():
        pytest.skip("PostgreSQL 15 is not installed here (/usr/lib/postgresql/15/bin)")
    s3_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port)
    moto.start()
    s3 = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}", "AWS_ACCESS_KEY_ID": "server-key",
          "AWS_SECRET_ACCESS_KEY": secrets.token_hex(8), "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], aws_access_key_id=s3["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=s3["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1").create_bucket(Bucket="team")
    database_password = secrets.token_hex(12)
    postgres = Postgres(free_port(), database_password).start()
    database = postgres.create_database("mlflow")
    store = tmp_path_factory.mktemp("team-mlflow-server")
    port, admin = free_port(), ("admin", secrets.token_hex(12))
    log_path = str(store / "server.log")
    # The server's own secrets come through its environment; none goes on the command line.
    environment = {**os.environ, **s3, "PGPASSWORD": database_password, "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1]}
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        environment.pop(name, None)
    process = subprocess.Popen([str(Path(sys.executable).parent / "maskx"), "mlflow-server", "--store", str(store),
                                "--port", str(port), "--backend-store-uri", database,
                                "--artifacts-destination", "s3://team/artifacts", "--auth",
                                "--allowed-hosts", TEAM_SERVER_NAME],
                               env=environment, stdout=open(log_path, "a"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    try:
        wait_for_http(f"{uri}/health", process)
        users = [("alice", secrets.token_hex(12)), ("bob", secrets.token_hex(12))]
        for username, password in users:
            requests.post(f"{uri}/api/2.0/mlflow/users/create", json={"username": username, "password": password},
                          auth=admin, timeout=30).raise_for_status()
        os.environ.update(MLFLOW_TRACKING_USERNAME=users[0][0], MLFLOW_TRACKING_PASSWORD=users[0][1])
        yield TeamServer(uri=uri, user=users[0], other_user=users[1], admin=admin, postgres=postgres,
                         artifacts_bucket="team", s3_endpoint=s3["AWS_ENDPOINT_URL"], log=log_path)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        stop_mlflow_server(process)
        postgres.remove()
        moto.stop()


@pytest.fixture(scope="session")
def mlflow_server(team_server):
    """The session's MLflow tracking server (the team set-up), as its URI; clients log in as its user."""
    return team_server.uri


def final_passes(paths):
    """From keys logs (`maskx train --record-keys-to`; every rank's file, from every host):
    iteration -> the keys of every rank of the pass the finished model kept (the latest (re)start
    that trained the iteration), and the (start time, world size) of each (re)start. Ranks of an
    earlier, larger group may have logged iterations a smaller group redid: those are not counted."""
    segments = []  # (start time, world size, rank, {iteration: keys})
    for path in sorted(map(str, paths)):
        rank = int(os.path.basename(path).removeprefix("rank").removesuffix(".txt"))
        for line in open(path):
            if not line.endswith("\n"):  # the line being written
                break
            parts = line.split()
            if parts[0] == "node":
                segments.append((float(parts[3]), int(parts[2]), rank, {}))
            else:
                segments[-1][3].setdefault(int(parts[0]), []).append(parts[1])
    final = {}
    for iteration in sorted({i for *_, passes in segments for i in passes}):
        having = [s for s in segments if iteration in s[3]]
        world_size = max(having, key=lambda s: s[0])[1]
        by_rank = [[s for s in having if s[2] == rank] for rank in range(world_size)]
        if not all(by_rank):  # read while the run writes: a rank has not logged it yet
            continue
        final[iteration] = sorted(k for passes in by_rank for k in max(passes, key=lambda s: s[0])[3][iteration])
    starts = {}  # one (re)start of the group: (time, world size) -> iterations its rank 0 trained
    for t, w, rank, passes in segments:
        if rank == 0:
            starts[(t, w)] = sorted(passes)
    return final, sorted(starts.items())


def canonical_keys(cfg, iterations):
    """iteration -> sorted keys of the run's canonical sample order, read here in one process (no Ray,
    no model) through the run's own set-up: what every layout of the run must train on."""
    import dataclasses

    from maskx.orchestrator.run_setup import set_up_run

    setup = set_up_run(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val=None)))  # the val set plays no part
    keys, epoch = {}, 0
    while len(keys) < iterations:
        # One rank reading every partition: the order is the plan's, whatever the world size.
        stream = setup.train_stream(world_size=1, rank=0, epoch=epoch)
        for step in stream.steps():
            keys[len(keys) + 1] = sorted(step.keys)
        epoch += 1
    return {i: k for i, k in keys.items() if i <= iterations}


@pytest.fixture(scope="session")
def predicting_model(synth_shards, tmp_path_factory):
    """vocabulary -> the folder of a checkpoint that predicts something (`tests/predicting.py`), what
    every test that compares predictions or AP runs on: trained here on the session's synthetic
    data for its vocabulary, with known logits for another. One of each a session, made when asked."""
    from maskx.datasets.vocab import Vocabulary

    from .predicting import write_known_logits_checkpoint, write_trained_checkpoint

    synth_vocab, made = Vocabulary.load(synth_shards["vocab"]), {}

    def checkpoint(vocab) -> str:
        key = tuple(c.name for c in vocab.classes)
        if key not in made:
            folder = str(tmp_path_factory.mktemp("predicting-model"))
            trained_here = key == tuple(c.name for c in synth_vocab.classes)
            made[key] = (write_trained_checkpoint(folder, [synth_shards["coco_train"], synth_shards["vg"]])
                         if trained_here else write_known_logits_checkpoint(folder, vocab))
        return made[key]

    return checkpoint
