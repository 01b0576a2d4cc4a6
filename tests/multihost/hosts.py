"""Hosts for a multi-host rehearsal on one machine (needs root).

Each host is a Linux network namespace with one veth link to a switch (a bridge in a namespace of its
own), its own address, and its own `/tmp` and `/dev/shm` (a mount namespace): processes on two hosts
share nothing but the network and the read-only software (this repository and its `.venv`, as a
machine image would). Cutting a host's link on the switch is a network partition; killing every
process in its namespace is a lost machine. Nothing is configured outside the namespaces made here,
and `Network.remove` takes all of it away.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
SUBNET = "10.213.7"


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def can_make_namespaces() -> Optional[str]:
    """None when this process may create network namespaces, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"mxprobe{os.getpid()}"
    try:
        ip("netns", "add", probe)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"cannot create a network namespace: {getattr(exc, 'stderr', exc)}".strip()
    ip("netns", "del", probe)
    return None


class Host:
    """One test host. `private_tmp=False` (a user's laptop) keeps this machine's files in view."""

    def __init__(self, network: "Network", name: str, index: int, private_tmp: bool = True):
        self.name, self.namespace = name, f"{network.prefix}-{name}"
        self.address = f"{SUBNET}.{index}"
        self.port = f"{network.prefix}p{index}"  # its link's end on the switch
        self.switch = network.switch
        self.folder = network.folder / name  # its disk, as the test sees it
        self.private_tmp = private_tmp
        self.anchor: Optional[subprocess.Popen] = None
        self.processes: list[subprocess.Popen] = []
        ip("netns", "add", self.namespace)
        ip("-n", self.switch, "link", "add", self.port, "type", "veth", "peer", "name", "eth0", "netns", self.namespace)
        ip("-n", self.switch, "link", "set", self.port, "master", "br0", "up")
        ip("-n", self.namespace, "addr", "add", f"{self.address}/24", "dev", "eth0")
        ip("-n", self.namespace, "link", "set", "eth0", "up")
        ip("-n", self.namespace, "link", "set", "lo", "up")
        self.boot()

    @property
    def tmp(self) -> Path:
        """This host's `/tmp`, seen from the test."""
        return self.folder / "tmp"

    def boot(self) -> None:
        """Start the process that holds the host's mount namespace (its private /tmp and /dev/shm)."""
        if not self.private_tmp:
            return
        self.tmp.mkdir(parents=True, exist_ok=True)
        script = []
        if REPO.is_relative_to("/tmp"):  # the software stays in view when this checkout lives in /tmp
            inside = self.tmp / REPO.relative_to("/tmp")
            inside.mkdir(parents=True, exist_ok=True)
            script.append(f"mount --bind {REPO} {inside}")
        script += [f"mount --rbind {self.tmp} /tmp", "mount -t tmpfs -o size=4g tmpfs /dev/shm", "echo ready",
                   "exec sleep infinity"]
        self.anchor = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, "unshare", "--mount", "--propagation", "private", "--",
             "sh", "-ec", " && ".join(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        line = self.anchor.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"host {self.name}: could not set up its /tmp: {line} {self.anchor.stdout.read()}")

    def command(self, args: list[str]) -> list[str]:
        if not self.private_tmp:
            return ["ip", "netns", "exec", self.namespace, *args]
        return ["nsenter", f"--target={self.anchor.pid}", "--mount", "--net", f"--wd={REPO}", "--", *args]

    def start(self, args: list[str], env: dict, log_name: str) -> subprocess.Popen:
        """A long-running process on this host, its output in `folder/log_name`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / log_name, "a")
        process = subprocess.Popen(self.command(args), env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=REPO)
        self.processes.append(process)
        return process

    def run(self, args: list[str], env: dict, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(self.command(args), env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        if check and done.returncode != 0:
            raise AssertionError(f"on {self.name}: {' '.join(args)[:300]} exited {done.returncode}:\n"
                                 f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
        return done

    def pids(self) -> list[int]:
        return [int(p) for p in ip("netns", "pids", self.namespace).split()]

    def kill(self) -> None:
        """The machine is lost: every process on it dies at once (its disk stays, as a VM's volume)."""
        for _ in range(20):  # processes forking while we kill: until none is left
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for process in self.processes + ([self.anchor] if self.anchor else []):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.processes, self.anchor = [], None

    def cut(self) -> None:
        """Its link goes down at the switch: nothing reaches it or leaves it; its processes run on."""
        ip("-n", self.switch, "link", "set", self.port, "down")

    def reconnect(self) -> None:
        ip("-n", self.switch, "link", "set", self.port, "up")


def remove_stale_namespaces() -> None:
    """Namespaces a killed test run left (`mx<PID>-*` whose process is gone): their processes and links."""
    for line in ip("netns", "list").splitlines():
        name = line.split()[0]
        owner = name[2:].split("-")[0]
        if name.startswith("mx") and owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            for pid in ip("netns", "pids", name).split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


class Network:
    """A switch and the hosts on it; `remove` kills every process on them and deletes every namespace."""

    def __init__(self, folder: Path):
        remove_stale_namespaces()
        self.prefix = f"mx{os.getpid()}"
        self.folder = folder
        self.switch = f"{self.prefix}-switch"
        self.hosts: dict[str, Host] = {}
        self._next_index = 1
        ip("netns", "add", self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")

    def add_host(self, name: str, private_tmp: bool = True) -> Host:
        host = Host(self, name, self._next_index, private_tmp)
        self._next_index += 1
        self.hosts[name] = host
        return host

    def remove(self) -> None:
        for host in self.hosts.values():
            try:
                host.kill()
            finally:
                subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.switch], capture_output=True)
