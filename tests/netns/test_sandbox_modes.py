"""Sandbox modes on the real kernel: the "host" is a throwaway namespace with
a pynet bridge network; sandboxes are namespaces named ``<prefix>-...``.
The CLI part runs ``pynet`` under ``nsenter --net=<host ns>`` with its own
state dir and chain prefix, so its firewall lives in that namespace too."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pynet import errors
from pynet.cnm.controller import Controller
from pynet.cnm.model import IPData
from pynet.cnm.sandboxes import SandboxManager
from pynet.drivers.bridge import BridgeDriver
from pynet.ipam import GATEWAY_TYPE, LOCAL_DEFAULT, REQUEST_ADDRESS_TYPE, Ipam
from pynet.store.memory import MemoryStore

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

NID = "5e" * 32


@pytest.fixture
def mgr(host_ns, prefix):
    store = MemoryStore()
    ctl = Controller(store, Ipam(store, host_routes=lambda: []),
                     {"bridge": BridgeDriver(host_ns.nl, host_ns.sysctl, instance=prefix)})
    pool_id, cidr, _ = ctl.request_pool(LOCAL_DEFAULT, "10.81.0.0/24")
    gw = ctl.request_address(pool_id, "", {REQUEST_ADDRESS_TYPE: GATEWAY_TYPE})
    ctl.create_network(NID, [IPData(pool=cidr, gateway=gw, pool_id=pool_id)], name="front",
                       created_by="cli")
    m = SandboxManager(ctl, host_ns.nl, instance=f"{prefix}-s", host_netns=host_ns.path)
    try:
        yield m
    finally:
        for sb in m.ls():
            try:
                m.rm(sb.id, force=True)
            except errors.NotFound:
                pass
        ctl.delete_network(NID, force_endpoints=True)


def run(mgr, ref, *argv):
    p = mgr.exec(ref, list(argv), capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stderr
    return p.stdout


def links(out: str) -> list[str]:
    return sorted(line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line)


def test_modes(mgr, host_ns, ping):
    web = mgr.create("front")
    peer = mgr.create("front")
    side = mgr.create(f"container:{web.id}")
    hostnet = mgr.create("host")
    sealed = mgr.create("none")
    # host: the host's interfaces (the bridge of "front" is there)
    bridge = f"pn-{NID[:12]}"
    assert bridge in links(run(mgr, hostnet.id, "ip", "-o", "link"))
    # none: only lo, up
    assert links(run(mgr, sealed.id, "ip", "-o", "link")) == ["lo"]
    assert "UP" in run(mgr, sealed.id, "ip", "-o", "link", "show", "lo") or \
        "LOOPBACK,UP" in run(mgr, sealed.id, "ip", "-o", "link", "show", "lo")
    # container: the other sandbox's interfaces and addresses
    web_addr = run(mgr, web.id, "ip", "-o", "-4", "addr", "show", "eth0")
    assert run(mgr, side.id, "ip", "-o", "-4", "addr", "show", "eth0") == web_addr
    assert links(run(mgr, side.id, "ip", "-o", "link")) == ["eth0", "lo"]
    assert "10.81.0.2/24" in web_addr
    # traffic: peer reaches the shared address; host mode reaches web through the bridge
    assert ping(peer.key, "10.81.0.2") and ping(side.key, "10.81.0.3")
    assert ping(hostnet.key, "10.81.0.2")
    assert not ping(sealed.key, "10.81.0.2", timeout=0.3)
    # refusals, and nothing changed by them
    with pytest.raises(errors.InUse, match=side.id[:12]):
        mgr.rm(web.id)
    for sb in (side, hostnet):
        with pytest.raises(errors.InvalidParameter, match="cannot be connected to any other"):
            mgr.connect(sb.id, "front")
    with pytest.raises(errors.InvalidParameter, match="private \\(none\\) mode"):
        mgr.connect(sealed.id, "front")
    assert ping(peer.key, "10.81.0.2")
    removed = mgr.rm(web.id, force=True)
    assert set(removed) == {web.id, side.id} and not os.path.exists(web.key)
    mgr.rm(sealed.id)
    assert not os.path.exists(sealed.key)
    mgr.rm(hostnet.id)
    assert os.path.exists(host_ns.path)          # host mode never deletes the host


def pynet(host_ns, state_dir, name, *args, check=True):
    argv = ["nsenter", f"--net={host_ns.path}", sys.executable, "-m", "pynet",
            "--state-dir", str(state_dir), "--plugin-name", name,
            "--chain-prefix", name.replace("-", "").upper()[:10], *args]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check:
        assert p.returncode == 0, f"{args}: {p.stderr}"
    return p


def test_cli(host_ns, prefix, tmp_path):
    name = f"{prefix}-cli"
    st = tmp_path / "state"
    st.mkdir()
    try:
        sid = pynet(host_ns, st, name, "sandbox", "create", "--network", "none").stdout.strip()
        assert len(sid) == 64
        out = pynet(host_ns, st, name, "sandbox", "exec", sid[:12], "--", "ip", "-o", "link").stdout
        assert links(out) == ["lo"]
        side = pynet(host_ns, st, name, "sandbox", "create", "--network",
                     f"container:{sid[:12]}").stdout.strip()
        p = pynet(host_ns, st, name, "sandbox", "create", "--network", f"container:{sid}",
                  "-p", "8080:80", check=False)
        assert p.returncode == 1 and "port publishing" in p.stderr
        p = pynet(host_ns, st, name, "sandbox", "connect", side, "nosuch", check=False)
        assert p.returncode == 1 and "cannot be connected" in p.stderr
        p = pynet(host_ns, st, name, "sandbox", "create", "--network", "nosuch", check=False)
        assert p.returncode == 1 and "not found" in p.stderr
        p = pynet(host_ns, st, name, "sandbox", "rm", sid, check=False)
        assert p.returncode == 1 and side[:12] in p.stderr
        rows = json.loads(pynet(host_ns, st, name, "--json", "sandbox", "ls").stdout)
        assert {r["id"]: r["mode"] for r in rows} == {sid: "none", side: "container"}
        assert pynet(host_ns, st, name, "sandbox", "rm", "-f", sid).stdout.split() \
            == [side, sid]
        assert json.loads(pynet(host_ns, st, name, "--json", "sandbox", "ls").stdout) == []
        assert not Path(f"/var/run/netns/{name}-{sid[:12]}").exists()
    finally:
        subprocess.run(["nsenter", f"--net={host_ns.path}", sys.executable, "-m", "pynet",
                        "firewall", "flush", "--chain-prefix", name.replace("-", "").upper()[:10],
                        "--state-dir", "/nonexistent"], capture_output=True, timeout=60)
