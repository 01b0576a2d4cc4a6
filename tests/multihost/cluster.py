"""A Ray cluster on test hosts (`hosts.py`) laid out as a real one: the S3 endpoint and PostgreSQL on a
storage host, the Ray head (token auth, dashboard) and a team's MLflow tracking server (PostgreSQL,
artifacts proxied to S3, logins: docs/cluster.md section 5) on the head host, worker hosts joining
with `ray start --address`, and a laptop that submits jobs with `ray job submit` as an MLflow user.
Shards, checkpoints and MLflow artifacts travel only through S3 and the tracking server."""
from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

from ..conftest import wait_until
from ..postgres import Postgres
from .hosts import REPO, Host, Network

BIN = Path(sys.executable).parent
S3_PORT, MLFLOW_PORT, GCS_PORT, DASHBOARD_PORT, POSTGRES_PORT = 9000, 5000, 6379, 8265, 5432
# A host cut off is declared dead after about 3 s instead of Ray's default 30 s or more.
HEALTH_CHECK = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3"}


def clean_environment() -> dict:
    """This process's environment without what would point a host at this machine's own services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_"))}
    env["PATH"] = f"{BIN}:{env['PATH']}"
    return env


class RehearsalCluster:
    def __init__(self, folder: Path):
        self.network = Network(folder)
        self.token = secrets.token_hex(16)
        self.storage = self.network.add_host("storage")
        self.head = self.network.add_host("head")
        self.laptop = self.network.add_host("laptop", private_tmp=False)
        self.workers: list[Host] = []
        self.s3 = f"http://{self.storage.address}:{S3_PORT}"
        self.tracking_uri = f"http://{self.head.address}:{MLFLOW_PORT}"
        self.dashboard = f"http://{self.head.address}:{DASHBOARD_PORT}"
        self.aws = {"AWS_ENDPOINT_URL": self.s3, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}
        self.postgres = None
        try:
            moto = self.storage.start([str(BIN / "moto_server"), "-H", self.storage.address, "-p", str(S3_PORT)],
                                      clean_environment(), "moto.log")
            self.wait_for_http(self.storage, f"{self.s3}/", moto)
            self.laptop.run([sys.executable, "-c", "import boto3; boto3.client('s3').create_bucket(Bucket='maskx')"],
                            dict(clean_environment(), **self.aws))
            self.database_password, self.admin_password = secrets.token_hex(12), secrets.token_hex(12)
            self.postgres = Postgres(POSTGRES_PORT, self.database_password, self.storage.address, self.storage.command)
            self.database = self.postgres.start().create_database("mlflow")
            self.start_head()
            self.user = self.create_user("alice")
        except BaseException:
            self.remove()
            raise

    def create_user(self, name: str) -> dict:
        """A user the admin makes from the laptop through MLflow's REST API; returns its login as MLflow's
        variables."""
        login = {"MLFLOW_TRACKING_USERNAME": name, "MLFLOW_TRACKING_PASSWORD": secrets.token_hex(12)}
        code = ("import os, requests\n"
                f"requests.post({self.tracking_uri + '/api/2.0/mlflow/users/create'!r}, timeout=30,\n"
                "              auth=('admin', os.environ['ADMIN_PASSWORD']),\n"
                "              json={'username': os.environ['MLFLOW_TRACKING_USERNAME'],\n"
                "                    'password': os.environ['MLFLOW_TRACKING_PASSWORD']}).raise_for_status()\n")
        self.laptop.run([sys.executable, "-c", code], dict(clean_environment(), ADMIN_PASSWORD=self.admin_password, **login))
        return login

    def env(self, **extra: str) -> dict:
        return dict(clean_environment(), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, **extra)

    def wait_for_http(self, host: Host, url: str, process=None, timeout: float = 120) -> None:
        """Until `url` answers on `host` (any HTTP status: the dashboard asks for its token)."""
        probe = [sys.executable, "-c", "import sys, urllib.request, urllib.error\n"
                 f"try: urllib.request.urlopen({url!r}, timeout=2)\n"
                 "except urllib.error.HTTPError: pass"]
        wait_until(lambda: host.run(probe, clean_environment(), check=False).returncode == 0, f"{url} answering",
                   lambda: process is None or process.poll() is None, lambda: "", timeout, interval=1)

    def start_head(self) -> None:
        """Ray head (no CPUs: training runs on worker hosts) and the MLflow server: its database on the
        storage host, artifacts in S3, its auth config and session key on the head's disk."""
        server_environment = dict(clean_environment(), **self.aws, PGPASSWORD=self.database_password,
                                  MLFLOW_AUTH_ADMIN_PASSWORD=self.admin_password)
        server = self.head.start([str(BIN / "maskx"), "mlflow-server", "--store", "/tmp/mlflow", "--host",
                                  self.head.address, "--port", str(MLFLOW_PORT), "--backend-store-uri", self.database,
                                  "--artifacts-destination", "s3://maskx/mlflow-artifacts", "--auth"],
                                 server_environment, "mlflow.log")
        self.head.run([str(BIN / "ray"), "start", "--head", f"--node-ip-address={self.head.address}",
                       f"--port={GCS_PORT}", f"--dashboard-host={self.head.address}",
                       f"--dashboard-port={DASHBOARD_PORT}", "--num-cpus=0", "--disable-usage-stats"],
                      self.env(**HEALTH_CHECK), timeout=240)
        self.wait_for_http(self.head, f"{self.tracking_uri}/health", server)
        self.wait_for_http(self.laptop, f"{self.dashboard}/api/version")  # the job server takes a while longer

    def add_worker(self) -> Host:
        host = self.network.add_host(f"worker{sum(name.startswith('worker') for name in self.network.hosts) + 1}")
        self.join(host)
        self.workers.append(host)
        return host

    def worker_disks(self) -> list[Host]:
        """Every worker host there ever was, lost ones included: their disks keep what they wrote."""
        return [host for name, host in self.network.hosts.items() if name.startswith("worker")]

    def join(self, host: Host) -> None:
        host.run([str(BIN / "ray"), "start", f"--address={self.head.address}:{GCS_PORT}",
                  f"--node-ip-address={host.address}", "--num-cpus=1", "--disable-usage-stats"],
                 self.env(), timeout=240)

    def restart(self) -> None:
        """The head is lost and the cluster torn down; then started again on the same machines."""
        for host in [self.head, *self.workers]:
            host.kill()
        for host in [self.head, *self.workers]:
            host.boot()
        self.start_head()
        for host in self.workers:
            self.join(host)

    def upload(self, folders: dict[str, str], bucket: str = "maskx") -> dict[str, str]:
        """The laptop puts local shard folders in S3; returns name -> s3:// URL."""
        urls = {name: f"s3://{bucket}/shards/{name}" for name in folders}
        # A copy (boto3's upload_file), not maskx's put_file, which moves: the folders are the session's.
        code = ("import os, sys, json, boto3\n"
                "s3 = boto3.client('s3')\n"
                f"for name, folder in json.loads(sys.argv[1]).items():\n"
                f"    for parent, _, files in os.walk(folder):\n"
                f"        for file in files:\n"
                f"            path = os.path.relpath(os.path.join(parent, file), folder)\n"
                f"            s3.upload_file(os.path.join(folder, path), {bucket!r}, f'shards/{{name}}/{{path}}')\n")
        self.laptop.run([sys.executable, "-c", code, json.dumps(folders)], dict(clean_environment(), **self.aws))
        return urls

    def submit(self, maskx_args: list[str], wait: bool = True, timeout: float = 900, env_vars: dict = {}):
        """`ray job submit` from the laptop to the head's dashboard: `maskx ...` with S3 and the tracking
        server (and the MLflow user's login) reached through the job's environment (and `env_vars`)."""
        runtime_env = {"env_vars": {**self.aws, "MLFLOW_TRACKING_URI": self.tracking_uri, **self.user, **env_vars}}
        args = [str(BIN / "ray"), "job", "submit", "--address", self.dashboard, "--working-dir", str(REPO),
                "--runtime-env-json", json.dumps(runtime_env), *([] if wait else ["--no-wait"]), "--",
                "maskx", *maskx_args]
        return self.laptop.run(args, self.env(), timeout=timeout, check=False)

    def query(self, code: str):
        """Run Python on the laptop with `client` (MLflow, logged in as the user) and `s3` (boto3) at hand;
        returns what it prints as JSON."""
        prelude = ("import json, boto3, mlflow\n"
                   f"client = mlflow.MlflowClient({self.tracking_uri!r})\n"
                   "s3 = boto3.client('s3')\n")
        environment = dict(clean_environment(), **self.aws, **self.user)
        done = self.laptop.run([sys.executable, "-c", prelude + code], environment, timeout=120)
        return json.loads(done.stdout.strip().splitlines()[-1])

    def job_log(self, chars: int = 4000) -> str:
        """The end of the newest job driver's log on the head, for failure messages."""
        logs = sorted((self.head.tmp / "ray").glob("session_*/logs/job-driver-*.log"), key=lambda p: p.stat().st_mtime)
        return f"\n--- {logs[-1].name} ---\n{logs[-1].read_text(errors='replace')[-chars:]}" if logs else "(no job log)"

    def remove(self) -> None:
        try:
            self.network.remove()
        finally:
            if self.postgres is not None:
                self.postgres.remove()
