"""A real PostgreSQL 15 server for a test: its own data folder, a free port, password (scram)
authentication over TCP, stopped (or killed) and started again on the same folder.

PostgreSQL refuses to run as root, and CI is root: there it runs as `nobody`, in a folder it owns.
By default it listens on 127.0.0.1 of this machine; `on_host` (a rehearsal host's `command`) runs it
on a test host of tests/multihost, listening on that host's address."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from typing import Callable, Optional

BIN = "/usr/lib/postgresql/15/bin"
USER = "mlflow"  # the database role the MLflow server connects as
# Runs a command as `nobody` without a fork in between (signals reach the server itself) and after
# entering a test host's namespaces, which takes root.
AS_SERVER_USER = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def available() -> bool:
    return os.path.exists(os.path.join(BIN, "postgres"))


class Postgres:
    def __init__(self, port: int, password: str, address: str = "127.0.0.1",
                 on_host: Callable[[list[str]], list[str]] = lambda command: command):
        self.port, self.password, self.address, self.on_host = port, password, address, on_host
        # Not under /tmp: a rehearsal host has a private /tmp, and /var/tmp is the same path on every host.
        self.folder = tempfile.mkdtemp(prefix="maskx-postgres-", dir="/var/tmp")
        self.data = os.path.join(self.folder, "data")
        self.log = os.path.join(self.folder, "server.log")
        password_file = os.path.join(self.folder, "password")
        with open(password_file, "w") as f:
            f.write(password)
        if os.geteuid() == 0:
            for path in (self.folder, password_file):
                shutil.chown(path, "nobody", "nogroup")
        self._run(["initdb", "-D", self.data, "-U", USER, f"--pwfile={password_file}", "--auth-host=scram-sha-256",
                   "--auth-local=trust", "--encoding=UTF8", "--no-sync"])
        os.remove(password_file)
        if address != "127.0.0.1":  # initdb lets in loopback only: the hosts on the server's own subnet too
            with open(os.path.join(self.data, "pg_hba.conf"), "a") as f:
                f.write("host all all samenet scram-sha-256\n")
        self.process: Optional[subprocess.Popen] = None

    def _command(self, tool: str, args: list[str]) -> list[str]:
        as_server_user = AS_SERVER_USER if os.geteuid() == 0 else []
        return self.on_host([*as_server_user, os.path.join(BIN, tool), *args])

    def _run(self, command: list[str]) -> None:
        subprocess.run(self._command(command[0], command[1:]), check=True, capture_output=True, cwd=self.folder)

    def start(self) -> "Postgres":
        """The server in the foreground of its own process group (killable as a whole), once it answers."""
        log = open(self.log, "a")
        self.process = subprocess.Popen(
            self._command("postgres", ["-D", self.data, "-p", str(self.port), "-c", f"listen_addresses={self.address}",
                                       "-c", f"unix_socket_directories={self.folder}"]),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.folder)
        deadline = time.monotonic() + 60
        while subprocess.run(self._command("pg_isready", ["-h", self.address, "-p", str(self.port)]),
                             capture_output=True).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start: {open(self.log).read()[-2000:]}")
            time.sleep(0.2)
        return self

    def create_database(self, name: str) -> str:
        """A database owned by the MLflow role; returns its URI (the password goes in PGPASSWORD)."""
        self._run(["createdb", "-h", self.folder, "-p", str(self.port), "-U", USER, name])
        return f"postgresql://{USER}@{self.address}:{self.port}/{name}"

    def stop(self, kill: bool = False) -> None:
        """A fast shutdown (SIGINT), or with `kill` SIGKILL to the server and all its backends: a crash
        (the next start recovers from the write-ahead log)."""
        import signal

        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL if kill else signal.SIGINT)
        self.process.wait(timeout=60)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
