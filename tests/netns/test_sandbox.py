"""The sandbox (netns side of a join) on the real kernel."""
import json
import os
import subprocess

import pytest

from pynet import errors
from pynet.cnm import sandbox
from pynet.cnm.model import StaticRoute
from pynet.netlink import LinkNotFound

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def ipj(ns, *args):
    out = subprocess.run(["ip", "-n", os.path.basename(ns), "-j", *args], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out or "[]")


@pytest.fixture
def veth(host_ns):
    """A peer ("pt0" in the host namespace, bridged to a gateway address) and
    "pt0c", the end to move into a container."""
    nl = host_ns.nl
    nl.ensure_bridge("ptbr")
    nl.ensure_address("ptbr", "10.71.0.1/24")
    nl.ensure_address("ptbr", "fd00:71::1/64", nodad=True)
    nl.set_up("ptbr")
    nl.add_veth("pt0", "pt0c")
    nl.set_master("pt0", "ptbr")
    nl.set_up("pt0")
    return "pt0c"


def test_create_and_delete_netns(prefix):
    name = f"{prefix}-sbx"
    path = sandbox.create_netns(name)
    try:
        assert path == f"/var/run/netns/{name}" and os.path.exists(path)
        with pytest.raises(errors.Conflict):
            sandbox.create_netns(name)
    finally:
        assert sandbox.delete_netns(name) is True
    assert sandbox.delete_netns(name) is False
    assert not os.path.exists(path)


def test_create_netns_survives_a_child_that_does_not_answer(prefix, monkeypatch):
    """pyroute2's create forks a child and gives up when it does not answer in time (a loaded
    host): what the killed child left at the path is removed and the create tried again."""
    from pyroute2 import netns as pyroute2_netns

    real_create, calls = pyroute2_netns.create, []

    def slow_child(name, libc=None):
        calls.append(name)
        if len(calls) == 1:                      # the child made the mount point, then was killed
            open(sandbox.netns_path(name), "w").close()
            raise TimeoutError("no response from the child pid 1")
        return real_create(name, libc)

    monkeypatch.setattr(pyroute2_netns, "create", slow_child)
    name = f"{prefix}-sbt"
    path = sandbox.create_netns(name)
    try:
        assert len(calls) == 2
        out = subprocess.run(["ip", "-n", name, "-j", "link", "show", "lo"], capture_output=True,
                             text=True, check=True).stdout
        assert json.loads(out)[0]["ifname"] == "lo"
    finally:
        assert sandbox.delete_netns(name)
    assert not os.path.exists(path)


def test_attach_configures_everything(host_ns, make_netns, veth, ping):
    ns = make_netns("c")
    info = sandbox.attach(ns, veth, "eth0", ["10.71.0.2/24", "fd00:71::2/64"],
                          mac="02:42:0a:47:00:02", mtu=1450, gateway="10.71.0.1",
                          gateway_v6="fd00:71::1",
                          routes=[StaticRoute("10.80.0.0/16", "10.71.0.254"),
                                  StaticRoute("10.81.0.0/16", route_type=1),
                                  {"dst": "10.82.0.0/16", "gw": "10.71.0.254"}],
                          netlink=host_ns.nl)
    assert (info.name, info.mac, info.mtu, info.state) == ("eth0", "02:42:0a:47:00:02", 1450, "up")
    assert not host_ns.nl.link_exists(veth)
    links = {l["ifname"]: l for l in ipj(ns, "link")}
    assert "UP" in links["lo"]["flags"] and "UP" in links["eth0"]["flags"]
    addrs = {(a["local"], a["prefixlen"]) for l in ipj(ns, "addr", "show", "eth0") for a in l["addr_info"]}
    assert {("10.71.0.2", 24), ("fd00:71::2", 64)} <= addrs
    r4 = {(r["dst"], r.get("gateway", "")) for r in ipj(ns, "route")}
    assert {("default", "10.71.0.1"), ("10.80.0.0/16", "10.71.0.254"), ("10.81.0.0/16", ""),
            ("10.82.0.0/16", "10.71.0.254")} <= r4
    r6 = {(r["dst"], r.get("gateway", "")) for r in ipj(ns, "-6", "route")}
    assert ("default", "fd00:71::1") in r6
    assert ping(ns, "10.71.0.1") and ping(ns, "fd00:71::1")
    assert sandbox.inspect(ns, "eth0").mac == "02:42:0a:47:00:02"

    assert sandbox.detach(ns, "eth0", netlink=host_ns.nl) is True
    assert not host_ns.nl.link_exists("pt0")            # the peer went with it
    assert sandbox.detach(ns, "eth0", netlink=host_ns.nl) is False


def test_detach_tolerates_missing_netns_and_interface(host_ns, make_netns):
    ns = make_netns("c")
    assert sandbox.detach(ns, "eth0", netlink=host_ns.nl) is False
    assert sandbox.detach("/var/run/netns/pt-surely-missing", "eth0") is False
    assert sandbox.detach("", "eth0") is False


def test_attach_failure_leaves_nothing_behind(host_ns, make_netns, veth):
    ns = make_netns("c")
    with pytest.raises(errors.KernelError, match="unreachable"):
        sandbox.attach(ns, veth, "eth0", ["10.71.0.2/24"], gateway="10.99.0.1",
                       netlink=host_ns.nl)
    assert [l["ifname"] for l in ipj(ns, "link")] == ["lo"]
    assert not host_ns.nl.link_exists("pt0")


def test_attach_errors(host_ns, make_netns, veth):
    ns = make_netns("c")
    with pytest.raises(errors.SandboxNotFound):
        sandbox.attach("/var/run/netns/pt-surely-missing", veth, "eth0", [], netlink=host_ns.nl)
    with pytest.raises(LinkNotFound):
        sandbox.attach(ns, "ptnope", "eth0", [], netlink=host_ns.nl)
    sandbox.attach(ns, veth, "eth0", ["10.71.0.2/24"], netlink=host_ns.nl)
    host_ns.nl.add_veth("pt1", "pt1c")
    with pytest.raises(errors.Conflict, match="eth0 already exists"):
        sandbox.attach(ns, "pt1c", "eth0", [], netlink=host_ns.nl)
    assert host_ns.nl.link_exists("pt1c")             # untouched
