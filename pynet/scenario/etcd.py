"""Real etcd members (Debian's ``etcd-server``): on 127.0.0.1 for tests, or one per
scenario host on the underlay (``NetnsEtcdCluster``: a scenario's cluster store, and the
overlay acceptance tests' lab, tests/support/overlay.py).

    with EtcdCluster(size=3, base_dir=tmp) as cluster:
        store = EtcdStore(cluster.endpoints)
        cluster.kill(0)          # SIGKILL one member
        cluster.restart(0)       # same data dir, rejoins

Every member gets two free ports (client, peer) and a data dir under ``base_dir``; ``stop()``
kills every member (SIGKILL: nothing to flush in a test) and removes the dirs, and runs from
``__exit__`` even when the test failed.  Waits are bounded (``START_TIMEOUT``); a member that
could not bind its port (another run took it between our probe and etcd's bind) is started again
on new ports, at most ``START_ATTEMPTS`` times.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Optional

from pynet.sysctl import run_in_netns

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
START_TIMEOUT = 30.0
START_ATTEMPTS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A loopback port nothing listens on (for "store unreachable")."""
    return free_port()


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: str
    proc: Optional[subprocess.Popen] = field(default=None, repr=False)

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    def __init__(self, size: int, base_dir: str, name: str = "pt"):
        self.size = size
        self.base_dir = base_dir
        self.name = name
        self.members: list[Member] = []

    # --- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> "EtcdCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self) -> None:
        last = None
        for attempt in range(START_ATTEMPTS):
            self._kill_all()
            self.members = self._new_members(attempt)
            for m in self.members:
                self._spawn(m, "new")
            try:
                self.wait_healthy()
                return
            except RuntimeError as e:
                last = e
        raise RuntimeError(f"etcd cluster did not start after {START_ATTEMPTS} attempts: {last}")

    def _new_members(self, attempt: int) -> list[Member]:
        return [Member(f"{self.name}-{i}", free_port(), free_port(),
                       os.path.join(self.base_dir, f"{self.name}-{attempt}-{i}"))
                for i in range(self.size)]

    def _argv(self, m: Member, state: str) -> list[str]:
        """The member's command line (a subclass may run it elsewhere, e.g. in a namespace)."""
        return [ETCD, "--name", m.name, "--data-dir", m.data_dir,
                "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", self._initial_cluster(), "--initial-cluster-state", state,
                "--initial-cluster-token", f"{self.name}-{os.getpid()}",
                "--logger", "zap", "--log-level", "warn"]

    def _initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def _spawn(self, m: Member, state: str) -> None:
        os.makedirs(m.data_dir, exist_ok=True)
        log = open(os.path.join(self.base_dir, f"{m.name}.log"), "ab")
        m.proc = subprocess.Popen(
            self._argv(m, state),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log.close()

    def _healthy(self, m: Member) -> bool:
        try:
            with urllib.request.urlopen(m.client_url + "/health", timeout=1.0) as r:
                return json.loads(r.read()).get("health") in ("true", True)
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def wait_healthy(self, members: Optional[list[Member]] = None, timeout: float = START_TIMEOUT) -> None:
        members = self.members if members is None else members
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [m.name for m in members if not m.alive]
            if dead:
                raise RuntimeError(f"etcd member(s) exited: {dead} (logs in {self.base_dir})")
            if all(self._healthy(m) for m in members):
                return
            time.sleep(0.1)
        raise RuntimeError(f"etcd members not healthy within {timeout}s (logs in {self.base_dir})")

    def kill(self, i: int) -> None:
        m = self.members[i]
        if m.alive:
            m.proc.send_signal(signal.SIGKILL)
            m.proc.wait(timeout=10)

    def restart(self, i: int) -> None:
        m = self.members[i]
        self.kill(i)
        self._spawn(m, "existing")

    def wait_all_healthy(self) -> None:
        self.wait_healthy()

    def _kill_all(self) -> None:
        for i in range(len(self.members)):
            try:
                self.kill(i)
            except (OSError, subprocess.TimeoutExpired):
                pass

    def stop(self) -> None:
        self._kill_all()
        for m in self.members:
            shutil.rmtree(m.data_dir, ignore_errors=True)

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def url(self) -> str:
        return "etcd://" + ",".join(f"127.0.0.1:{m.client_port}" for m in self.members)


# ------------------------------------------------------- members on an underlay
class NetnsMember(Member):
    """A member listening on a host namespace's underlay address."""

    def __init__(self, name, address, netns, data_dir):
        super().__init__(name, 2379, 2380, data_dir)
        self.address, self.netns = address, netns

    @property
    def client_url(self) -> str:
        return f"http://{self.address}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.address}:{self.peer_port}"


class NetnsEtcdCluster(EtcdCluster):
    """The cluster above, one member in each of the given host namespaces
    (entered with ``nsenter --net``, which execs etcd: the member's pid is
    etcd's), on the underlay."""

    def __init__(self, netns_paths: list[str], addresses: list[str], base_dir: str, name: str):
        super().__init__(len(netns_paths), base_dir, name)
        self._where = list(zip(netns_paths, addresses))

    def _new_members(self, attempt: int) -> list[Member]:
        # fixed ports: each member has its namespace and address to itself
        return [NetnsMember(f"{self.name}-{i}", addr, ns, os.path.join(self.base_dir, f"{self.name}-{attempt}-{i}"))
                for i, (ns, addr) in enumerate(self._where)]

    def _argv(self, m: Member, state: str) -> list[str]:
        return ["nsenter", f"--net={m.netns}", *super()._argv(m, state)]

    def _healthy(self, m: Member) -> bool:
        def probe():
            with urllib.request.urlopen(m.client_url + "/health", timeout=1.0) as r:
                return json.loads(r.read()).get("health") in ("true", True)
        try:
            return run_in_netns(m.netns, probe)
        except (OSError, ValueError):
            return False

    @property
    def pids(self) -> list[int]:
        return [m.proc.pid for m in self.members if m.proc is not None]

    def url(self, namespace: str = "") -> str:
        hosts = ",".join(f"{m.address}:{m.client_port}" for m in self.members)
        return f"etcd://{hosts}" + (f"/{namespace}" if namespace else "")
