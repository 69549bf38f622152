"""The CNI conformance suite's fixtures (root).

Every test gets a throwaway "host" namespace (``<prefix>-h<hex>``): the
binaries, installed by ``pynet cni install`` into a temporary bin dir, are
executed inside it with ``nsenter --net`` (the mount namespace stays the
root's, so netns paths and the state dir resolve as for a real runtime);
bridges, veths, iptables rules and forwarding sysctls therefore all live in
that namespace and vanish with it.  Container namespaces are more throwaway
namespaces.  Nothing touches the root namespace.

``cni.call(plugin, command, conf, cid, ifname="eth0", netns=..., env=...)``
-> ``Res(rc, out (parsed JSON or None), raw)``.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REF_BIN = "/usr/lib/cni"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/cni/" in str(item.fspath):
            item.add_marker(pytest.mark.netns)
            item.add_marker(pytest.mark.root)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="needs root"))


@dataclass
class Res:
    rc: int
    out: object
    raw: str
    err: str = ""


@pytest.fixture(scope="session")
def bin_dir(tmp_path_factory):
    from pynet.cni.install import install

    d = tmp_path_factory.mktemp("cnibin")
    install(str(d), conf_dir=None)
    return str(d)


def _netns(prefix, tag, made):
    from pynet.cnm import sandbox

    name = f"{prefix}-{tag}{secrets.token_hex(2)}"
    path = sandbox.create_netns(name)
    made.append(name)
    return path


class Cni:
    def __init__(self, prefix, bin_dir, state_dir, host, made):
        self.prefix = prefix
        self.bin_dir = bin_dir
        self.state_dir = state_dir
        self.host = host
        self.made = made
        self.chain = "P" + prefix.upper().replace("-", "")[:8] + secrets.token_hex(1).upper()
        self.socket = os.path.join(state_dir, "pynet.sock")
        self.daemon = None
        self.daemon_log = os.path.join(state_dir, "daemon.log")
        self.cni_path = f"{bin_dir}:{REF_BIN}"

    # -- namespaces --------------------------------------------------------
    def container(self, tag="c") -> str:
        return _netns(self.prefix, tag, self.made)

    def in_host(self, *argv, check=True, **kw):
        return subprocess.run(["nsenter", f"--net={self.host}", *argv], capture_output=True, text=True,
                              timeout=60, check=check, **kw)

    # -- configuration -----------------------------------------------------
    def conf(self, version="1.1.0", name=None, subnet="10.250.0.0/24", plugin="pynet-bridge", **kw):
        c = {"cniVersion": version, "name": name or f"{self.prefix}-net", "type": plugin,
             "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
             "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": subnet}]]},
             "pynet": {"stateDir": self.state_dir, "chainPrefix": self.chain,
                       "instance": self.prefix, "socket": self.socket}}
        if plugin == "pynet-bridge":
            c["bridge"] = f"{self.prefix}-b0"
        c.update(kw)
        return c

    # -- execution ---------------------------------------------------------
    def env(self, command, cid="", ifname="eth0", netns="", extra=None):
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_PATH": self.cni_path}
        if cid is not None:
            env["CNI_CONTAINERID"] = cid
        if ifname is not None:
            env["CNI_IFNAME"] = ifname
        if netns is not None:
            env["CNI_NETNS"] = netns
        env.update(extra or {})
        return env

    def call(self, plugin, command, conf, cid="", ifname="eth0", netns="", env=None, raw_stdin=None,
             binary=None) -> Res:
        exe = binary or os.path.join(self.bin_dir if plugin.startswith("pynet-") else REF_BIN, plugin)
        data = raw_stdin if raw_stdin is not None else json.dumps(conf).encode()
        p = subprocess.run(["nsenter", f"--net={self.host}", exe], input=data,
                           env=self.env(command, cid, ifname, netns, env), capture_output=True, timeout=120)
        text = p.stdout.decode()
        try:
            out = json.loads(text) if text.strip() else None
        except ValueError:
            out = None
        return Res(p.returncode, out, text, p.stderr.decode())

    def add(self, conf, cid, netns, ifname="eth0", plugin="pynet-bridge", **kw) -> Res:
        r = self.call(plugin, "ADD", conf, cid, ifname, netns, **kw)
        assert r.rc == 0, (r.raw, r.err)
        return r

    def delete(self, conf, cid, netns, ifname="eth0", plugin="pynet-bridge", **kw) -> Res:
        r = self.call(plugin, "DEL", conf, cid, ifname, netns, **kw)
        assert r.rc == 0, (r.raw, r.err)
        assert r.raw.strip() == ""
        return r

    # -- state -------------------------------------------------------------
    def store(self):
        from pynet.root import open_state_dir
        return open_state_dir(self.state_dir)

    def reader(self):
        from pynet.cnm.controller import Controller
        from pynet.ipam import Ipam
        s = self.store()
        return Controller(s, Ipam(s), drivers={})

    def links(self, ns=None) -> list[str]:
        p = subprocess.run(["ip", "-n", os.path.basename(ns or self.host), "-o", "link"],
                           capture_output=True, text=True, timeout=10)
        return [line.split(":")[1].strip().split("@")[0] for line in p.stdout.splitlines()]

    def iptables(self, table="nat") -> str:
        return self.in_host("iptables-save", "-t", table).stdout

    # -- daemon ------------------------------------------------------------
    def start_daemon(self):
        env = dict(os.environ, PYNET_FIREWALL_RECHECK="0")
        log = open(self.daemon_log, "w")
        self.daemon = subprocess.Popen(
            ["nsenter", f"--net={self.host}", sys.executable, "-m", "pynet", "daemon",
             "--state-dir", self.state_dir, "--socket", self.socket, "--chain-prefix", self.chain,
             "--plugin-name", self.prefix], stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if os.path.exists(self.socket):
                return
            if self.daemon.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError("daemon did not start: " + Path(self.daemon_log).read_text()[-2000:])

    def stop_daemon(self):
        if self.daemon is not None and self.daemon.poll() is None:
            os.killpg(self.daemon.pid, signal.SIGTERM)
            try:
                self.daemon.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.daemon.pid, signal.SIGKILL)
                self.daemon.wait(5)
        self.daemon = None


@pytest.fixture
def cni(prefix, bin_dir, tmp_path):
    from pynet.cnm import sandbox

    made: list[str] = []
    state = tmp_path / "state"
    state.mkdir()
    host = _netns(prefix, "h", made)
    subprocess.run(["ip", "-n", os.path.basename(host), "link", "set", "lo", "up"], check=True)
    c = Cni(prefix, bin_dir, str(state), host, made)
    try:
        yield c
    finally:
        c.stop_daemon()
        for name in reversed(made):
            try:
                sandbox.delete_netns(name)
            except Exception:
                subprocess.run(["ip", "netns", "del", name], capture_output=True)


