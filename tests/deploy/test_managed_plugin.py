"""Issue 14 item 1 acceptance: pynet as a Docker managed plugin on the real (shared) dockerd.

deploy/plugin/build makes the plugin (a debootstrap rootfs with pynet and its locked
dependencies; cached by input hashes, so only the first run on a machine pays the cold build),
and the module's fixture creates it as ``<prefix>-mp:<prefix>`` with this run's own chain prefix
and its own state directory, then enables it.  Through it: the bridge acceptance (two containers
reach each other by name, a published port reaches a container from an "outside" namespace the
test makes, removal leaves no link, rule, network or store record), ``docker plugin disable -f``
and ``enable`` keep running containers connected, and an upgrade to a new build (disable, rm,
create from the new directory, the same settings, enable: ``docker plugin upgrade`` needs a
registry, which this machine has not) keeps the store.

Everything is removed at the end even on failure, and a plugin left by a crashed run (its
prefix's lock free) is removed at the start.  Subnets 10.225-10.227.K.0/24 and the outside
10.224.K.0/24, K derived from the run prefix; host ports 29000 + 8K + i.
"""
from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.test_docker_bridge import addr_on, ping, run_container, start_tcp_server, tcp_get
from tests.support import harness

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "deploy" / "plugin" / "build"
STATE_ROOT = Path("/var/lib/pynet-tests")  # outlives a crashed run, so its plugin can be cleaned
SUFFIX = "-mp"

# a cold build is debootstrap + pip: minutes, once per machine (the whole module's budget)
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def _k(prefix: str) -> int:
    return int(prefix[2:], 16) % 250 + 2


class Plugin:
    """One managed plugin ``<name>:<tag>`` and what the test needs to drive and clean it."""

    def __init__(self, docker: harness.Docker, name: str, tag: str):
        self.docker = docker
        self.name = name                   # the instance name pynet tags its links with
        self.ref = f"{name}:{tag}"         # what Docker calls it: -d / --ipam-driver
        self.chain_prefix = harness.chain_prefix_for(name)
        self.state_dir = STATE_ROOT / name
        self.settings = [f"PYNET_PLUGIN_NAME={name}", f"PYNET_CHAIN_PREFIX={self.chain_prefix}",
                         f"state.source={self.state_dir}", "PYNET_FIREWALL_RECHECK=2"]

    def run(self, *args, check=True, timeout=300):
        return self.docker.run("plugin", *args, check=check, timeout=timeout)

    def exists(self) -> bool:
        """True/False from dockerd; raises when dockerd does not answer (another run restarting
        the shared dockerd must not make a teardown believe the plugin is gone)."""
        r = self.run("inspect", self.ref, check=False)
        if r.returncode == 0:
            return True
        if re.search(r"not found|no such plugin", (r.stderr + r.stdout).lower()):
            return False
        raise harness.CommandError(r.returncode, r.args, r.stdout, r.stderr)

    def inspect(self) -> dict:
        return json.loads(self.run("inspect", self.ref).stdout)[0]

    def install(self, plugin_dir: str | Path) -> None:
        """create from a build directory, the run's settings, enable."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.run("create", self.ref, str(plugin_dir))
        self.run("set", self.ref, *self.settings)
        self.run("enable", self.ref)

    def remove(self) -> None:
        self.run("disable", "-f", self.ref, check=False)
        self.run("rm", "-f", self.ref, check=False)

    def log_tail(self, lines: int = 60) -> str:
        """The plugin's lines from dockerd's log (dockerd logs a plugin's stderr)."""
        try:
            pid = harness.sh("pidof", "dockerd").stdout.split()[0]
            log = Path(os.readlink(f"/proc/{pid}/fd/2"))
            ids = {self.inspect()["Id"]} if self.exists() else set()
            text = log.read_text(errors="replace").splitlines()
        except (OSError, IndexError, subprocess.SubprocessError):
            return "(dockerd's log not found)"
        mine = [ln for ln in text if self.name in ln or any(i in ln for i in ids)]
        return "\n".join(mine[-lines:])


def wait_for_dockerd(seconds: int = 90) -> None:
    """Another run may be restarting the shared dockerd: wait for it (never start one here)."""
    for _ in range(seconds // 3):
        if harness.dockerd_up():
            return
        time.sleep(3)
    raise RuntimeError(f"dockerd did not answer for {seconds} s")


def objects_named(docker: harness.Docker, prefix: str) -> list[str]:
    return [n for n in docker.container_names() + docker.network_names() if n.startswith(prefix)]


def teardown_plugin(p: Plugin) -> list[str]:
    """Containers and networks of the plugin (through it, so it releases what it holds), the
    plugin, then whatever a dead plugin could not remove: its rules, its links, its state."""
    errors = []
    wait_for_dockerd()
    if p.exists():
        if not p.inspect().get("Enabled"):
            p.state_dir.mkdir(parents=True, exist_ok=True)
            p.run("enable", p.ref, check=False)
        try:
            harness.cleanup_docker(p.docker, [p.name])
        except Exception as e:  # noqa: BLE001
            errors.append(f"docker cleanup: {e}")
        p.remove()
        if p.exists():
            errors.append(f"plugin {p.ref} still there")
    err = harness.flush_firewall(p.chain_prefix)
    if err:
        errors.append(f"firewall flush {p.chain_prefix}: {err}")
    harness.cleanup_links(list(harness.daemon_links(p.name)))
    shutil.rmtree(p.state_dir, ignore_errors=True)
    return errors


def remove_stale_plugins(docker: harness.Docker, current: str) -> list[str]:
    """Plugins ``ptXXXX-mp`` of runs that are gone (a crashed run cannot remove its own)."""
    refs = docker.run("plugin", "ls", "--format", "{{.Name}}").stdout.split()
    gone = harness.stale_prefixes(refs, current)
    removed = []
    for ref in refs:
        name, _, tag = ref.partition(":")
        if name.split("-", 1)[0] in gone and name.endswith(SUFFIX):
            teardown_plugin(Plugin(docker, name, tag or "latest"))
            removed.append(ref)
    dirs = [d.name for d in STATE_ROOT.iterdir()] if STATE_ROOT.is_dir() else []
    for name in dirs:  # a state dir whose plugin went, but not the dir
        if name.split("-", 1)[0] in harness.stale_prefixes([name], current):
            shutil.rmtree(STATE_ROOT / name, ignore_errors=True)
    return removed


@pytest.fixture(scope="module")
def docker(prefix):
    if not harness.is_root():
        pytest.fail("the managed plugin test needs root (debootstrap, dockerd, netlink, iptables)")
    harness.ensure_dockerd()
    d = harness.Docker()
    removed = remove_stale_plugins(d, prefix)
    if removed:
        print(f"\n[pynet] removed managed plugins of earlier runs: {' '.join(removed)}")
    return d


@pytest.fixture(scope="module")
def plugin_dir() -> Path:
    """The built plugin (rootfs/ + config.json): deploy/plugin/build, cached by its inputs."""
    p = harness.sh("bash", BUILD, timeout=850)
    d = Path(p.stdout.strip().splitlines()[-1])
    assert (d / "config.json").is_file() and (d / "rootfs" / "opt" / "pynet" / "bin" / "pynet").exists(), d
    return d


@pytest.fixture(scope="module")
def image(docker) -> str:
    """The busybox test image the suite builds (scripts/lib/docker.sh)."""
    return harness.ensure_test_image()


@pytest.fixture(scope="module")
def plugin(docker, plugin_dir, image, prefix, request):
    # a tag of the run's own, not latest: Docker names the networks' driver by the whole reference
    p = Plugin(docker, f"{prefix}{SUFFIX}", tag=prefix)
    try:
        p.install(plugin_dir)
        yield p
    finally:
        if any(getattr(i, "rep_call", None) is not None and i.rep_call.failed
               for i in request.session.items if i.module is request.module):
            print(f"\n----- {p.ref} log, last lines -----\n{p.log_tail()}")
        errors = teardown_plugin(p)
        assert not errors, errors


@pytest.fixture
def clean(plugin):
    """Per test: the plugin's containers and networks go even when the test fails."""
    yield plugin
    harness.cleanup_docker(plugin.docker, [plugin.name])


@pytest.fixture
def outside(prefix):
    """An "outside" host: namespace ``<prefix>-mo`` with a veth to the root namespace
    (10.224.K.1 on the host side, 10.224.K.2 inside, default route to the host)."""
    k = _k(prefix)
    ns, veth = f"{prefix}-mo", f"{prefix}-mo0"
    host_ip, out_ip = f"10.224.{k}.1", f"10.224.{k}.2"
    try:
        harness.sh("ip", "netns", "add", ns)
        harness.sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "mo1", "netns", ns)
        harness.sh("ip", "addr", "add", f"{host_ip}/24", "dev", veth)
        harness.sh("ip", "link", "set", veth, "up")
        o = ["ip", "netns", "exec", ns]
        harness.sh(*o, "ip", "link", "set", "lo", "up")
        harness.sh(*o, "ip", "addr", "add", f"{out_ip}/24", "dev", "mo1")
        harness.sh(*o, "ip", "link", "set", "mo1", "up")
        harness.sh(*o, "ip", "route", "add", "default", "via", host_ip)
        yield {"ns": ns, "host_ip": host_ip}
    finally:
        harness.sh("ip", "link", "del", veth, check=False)
        harness.sh("ip", "netns", "del", ns, check=False)


FETCH = ("import socket, sys\n"
         "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n"
         "print(s.recv(200).decode().strip())\n")


def fetch_from_outside(outside, port: int, attempts: int = 5) -> str:
    """What a TCP connection from the outside namespace to the host's address:port reads."""
    last = ""
    for _ in range(attempts):  # busybox nc serves one connection per loop round
        p = harness.sh("ip", "netns", "exec", outside["ns"], sys.executable, "-c", FETCH,
                       outside["host_ip"], str(port), check=False, timeout=30)
        last = (p.stdout + p.stderr).strip()
        if p.returncode == 0 and last.startswith("pong"):
            return last
        time.sleep(0.5)
    return last


def docker_verbs_served(plugin: Plugin) -> dict:
    """{(method, result): count} from the plugin's metrics socket, which config.json puts on the
    state mount so the host reaches it (the plugin's /run is its own)."""
    from prometheus_client.parser import text_string_to_metric_families

    conn = harness.UnixHTTPConnection(plugin.state_dir / "metrics.sock", timeout=30)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read().decode()
    finally:
        conn.close()
    assert resp.status == 200, body
    return {(s.labels["method"], s.labels["result"]): s.value
            for fam in text_string_to_metric_families(body) for s in fam.samples
            if s.name == "pynet_docker_requests_total"}


def network(plugin: Plugin, name: str, subnet: str) -> dict:
    plugin.docker.run("network", "create", "-d", plugin.ref, "--ipam-driver", plugin.ref,
                      "--subnet", subnet, name)
    return plugin.docker.inspect(name, "network")


def held(plugin: Plugin) -> dict:
    h = harness.pynet_holdings(plugin.state_dir)
    return {"networks": sorted(n["id"] for n in h["networks"]),
            "endpoints": sorted(e["id"] for e in h["endpoints"]),
            "pools": sorted(p["pool"] for p in h["pools"])}


# --------------------------------------------------------------------------- the plugin itself

def test_plugin_is_created_and_enabled_as_declared(plugin):
    info = plugin.inspect()
    assert info["Enabled"] is True
    cfg = info["Config"]
    assert set(cfg["Interface"]["Types"]) == {"docker.networkdriver/1.0", "docker.ipamdriver/1.0"}
    assert cfg["Interface"]["Socket"] == "pynet.sock"
    assert cfg["Network"]["Type"] == "host"
    assert {"CAP_NET_ADMIN", "CAP_SYS_ADMIN"} <= set(cfg["Linux"]["Capabilities"])
    env = dict(e.split("=", 1) for e in info["Settings"]["Env"])
    assert env["PYNET_PLUGIN_NAME"] == plugin.name and env["PYNET_CHAIN_PREFIX"] == plugin.chain_prefix
    mounts = {m["Name"]: m for m in info["Settings"]["Mounts"]}
    assert mounts["state"]["Source"] == str(plugin.state_dir)
    # its store is on the host, in the state mount
    assert (plugin.state_dir / "pynet.db").exists()


# --------------------------------------------------------------------------- bridge acceptance

def test_bridge_acceptance_through_the_plugin(clean, image, outside, prefix):
    p, d, k = clean, clean.docker, _k(prefix)
    before_links = harness.daemon_links(p.name)
    net = f"{p.name}-n1"
    info = network(p, net, f"10.225.{k}.0/24")
    assert info["Driver"] == p.ref and info["IPAM"]["Driver"] == p.ref
    assert docker_verbs_served(p)[("NetworkDriver.CreateNetwork", "ok")] == 1
    a, b = f"{p.name}-a", f"{p.name}-b"
    port = 29000 + 8 * k
    run_container(d, image, a, net)
    run_container(d, image, b, net, "-p", f"{port}:8080")
    # two containers reach each other, by address and by name (Docker's embedded DNS)
    ping(d, a, addr_on(d, b, net)["IPAddress"])
    ping(d, a, b)
    ping(d, b, a)
    start_tcp_server(d, b)
    assert tcp_get(d, a, b) == f"pong-{b}"
    # the published port, from a namespace outside (through the host's address)
    assert fetch_from_outside(outside, port) == f"pong-{b}"
    assert harness.daemon_links(p.name).keys() - before_links.keys()  # a bridge and veths
    assert harness.firewall_lines(p.chain_prefix)
    # rm leaves nothing: no links, no rules, no networks, no records
    d.run("rm", "-f", a, b)
    d.run("network", "rm", net)
    assert harness.daemon_links(p.name) == before_links
    assert harness.firewall_lines(p.chain_prefix) == []
    assert [n for n in d.network_names() if n.startswith(p.name)] == []
    assert held(p) == {"networks": [], "endpoints": [], "pools": []}
    keys = harness.object_keys(harness.pynet_holdings(p.state_dir)["keys"])
    assert {key for key in keys if not key.startswith("meta")} == set()


# --------------------------------------------------------------------------- disable / enable

def test_disable_and_enable_keep_running_containers_connected(clean, image, outside, prefix):
    p, d, k = clean, clean.docker, _k(prefix)
    net = f"{p.name}-n2"
    network(p, net, f"10.226.{k}.0/24")
    a, b = f"{p.name}-a", f"{p.name}-b"
    port = 29000 + 8 * k + 1
    run_container(d, image, a, net)
    run_container(d, image, b, net, "-p", f"{port}:8080")
    start_tcp_server(d, b)
    ip_b = addr_on(d, b, net)["IPAddress"]
    assert fetch_from_outside(outside, port) == f"pong-{b}"

    p.run("disable", "-f", p.ref)
    assert p.inspect()["Enabled"] is False
    ping(d, a, ip_b)
    ping(d, a, b)
    assert tcp_get(d, a, ip_b) == f"pong-{b}"
    assert fetch_from_outside(outside, port) == f"pong-{b}"

    p.run("enable", p.ref)
    ping(d, a, b)
    assert fetch_from_outside(outside, port) == f"pong-{b}"
    # and it serves again: a new container joins and reaches the old ones
    c = f"{p.name}-c"
    run_container(d, image, c, net)
    ping(d, c, a)
    assert tcp_get(d, c, b) == f"pong-{b}"


# --------------------------------------------------------------------------- upgrade

def new_build(plugin_dir: Path, into: Path) -> Path:
    """Another build of the plugin: the same tree with a different build key (so a different
    rootfs, and a new plugin ID), as the next version's deploy/plugin/build would give."""
    into.mkdir()
    shutil.copy(plugin_dir / "config.json", into / "config.json")
    harness.sh("cp", "-al", plugin_dir / "rootfs", into / "rootfs")  # hard links: no copy of the tree
    key = into / "rootfs" / "opt" / "pynet" / ".build-key"
    key.unlink(missing_ok=True)  # a hard link: replaced, never written through
    key.write_text("upgrade-test\n")
    return into


def test_upgrade_keeps_the_store(clean, image, plugin_dir, prefix, tmp_path):
    p, d, k = clean, clean.docker, _k(prefix)
    net = f"{p.name}-n3"
    info = network(p, net, f"10.227.{k}.0/24")
    a, b = f"{p.name}-a", f"{p.name}-b"
    run_container(d, image, a, net)
    run_container(d, image, b, net, "--ip", f"10.227.{k}.77")
    before = held(p)
    assert info["Id"] in before["networks"] and len(before["endpoints"]) == 2
    old_id = p.inspect()["Id"]

    upgraded = new_build(plugin_dir, tmp_path / "v2")
    p.run("disable", "-f", p.ref)
    p.run("rm", "-f", p.ref)
    p.install(upgraded)
    assert p.inspect()["Id"] != old_id
    assert held(p) == before  # the store outlived the old plugin
    ping(d, a, f"10.227.{k}.77")
    ping(d, a, b)
    # the new plugin knows the old network: joins, address allocation and removal work
    c = f"{p.name}-c"
    run_container(d, image, c, net, "--ip", f"10.227.{k}.78")
    ping(d, c, b)
    with pytest.raises(harness.CommandError, match="(?i)address.*(in use|already)|allocated"):
        run_container(d, image, f"{p.name}-dup", net, "--ip", f"10.227.{k}.77")
    d.run("rm", "-f", a, b, c, f"{p.name}-dup", check=False)
    d.run("network", "rm", net)
    assert held(p) == {"networks": [], "endpoints": [], "pools": []}
    assert harness.daemon_links(p.name) == {}


# --------------------------------------------------------------------------- a crashed run's plugin

def test_a_crashed_runs_plugin_is_removed_by_the_next_run(docker, image, plugin_dir):
    """What the module fixture does at start: a plugin (enabled, with a network and a container)
    whose run is gone goes with everything it made.  The "crashed run" is a prefix taken and
    released at once, so no live run owns it."""
    lock = harness.RunLock.acquire_new()
    dead = lock.prefix
    lock.release()
    p = Plugin(docker, f"{dead}{SUFFIX}", tag=dead)
    try:
        p.install(plugin_dir)
        k = _k(dead)
        network(p, f"{p.name}-n4", f"10.227.{k}.0/24")
        run_container(docker, image, f"{p.name}-a", f"{p.name}-n4")
        assert harness.daemon_links(p.name)
        assert p.ref in remove_stale_plugins(docker, current="pt0000")
        assert not p.exists()
        assert objects_named(docker, p.name) == []
        assert harness.daemon_links(p.name) == {}
        assert harness.firewall_lines(p.chain_prefix) == []
        assert not p.state_dir.exists()
    finally:
        teardown_plugin(p)
