"""The macvlan driver on the real kernel, through the Controller.

The "machine" is a throwaway namespace (``host_ns``); the macvlan parent is a
veth ``up0`` in it whose other end sits in an "external" namespace with an
address on the subnet (the external host on the parent's segment).  Containers
are further namespaces; the sandbox moves the macvlan child in, as dockerd does.
Every packet stays inside namespaces created here.

Kernel support: this machine's kernel lacks CONFIG_DUMMY and CONFIG_VLAN_8021Q
(the isolated parent falls back to a veth pair here).  The VLAN test is a
``kernel_lab`` test: it runs inside the kernel lab VM on Debian's kernel
(tests/vm), beside tests/vm/guest/test_macvlan_vlan.py (the dummy parent, the
veth fallback, and the clear error of a kernel without 802.1q).
"""
import os
import secrets

import pytest

from pynet import errors
from pynet.cnm import sandbox
from pynet.cnm.controller import Controller
from pynet.cnm.model import IPData
from pynet.drivers.macvlan import MacvlanDriver, dummy_parent_name, macvlan_name
from pynet.ipam import Ipam
from pynet.store.memory import MemoryStore

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def hexid() -> str:
    return secrets.token_hex(32)


class Lab:
    def __init__(self, host_ns, make_netns, prefix):
        self.host = host_ns
        self.make_netns = make_netns
        store = MemoryStore()
        self.drv = MacvlanDriver(host_ns.nl, host_ns.sysctl, instance=prefix)
        self.ctl = Controller(store, Ipam(store, host_routes=lambda: []), {"macvlan": self.drv})
        self.ext = make_netns("x")
        self.ext_nl = host_ns.nl.for_netns(self.ext)

    def external_segment(self, parent="up0", ext_if="eth0", addr=None):
        """A veth: ``parent`` in the host, ``ext_if`` in the external namespace."""
        nl = self.host.nl
        nl.add_veth(parent, "upx")
        nl.move_to_netns("upx", self.ext, new_name=ext_if)
        nl.set_up(parent)
        self.ext_nl.set_up("lo")
        self.ext_nl.set_up(ext_if)
        if addr:
            self.ext_nl.ensure_address(ext_if, addr)

    def network(self, subnet, gw, options=None, internal=False, v6=None):
        ipv6 = [IPData(pool=v6[0], gateway=v6[1])] if v6 else []
        return self.ctl.create_network(hexid(), [IPData(pool=subnet, gateway=gw)], ipv6,
                                       driver="macvlan", options=options or {},
                                       internal=internal, created_by="cli")

    def container(self, net, ip, ip6=""):
        eid = hexid()
        ep = self.ctl.create_endpoint(net.id, eid, address=ip, address_v6=ip6)
        ns = self.make_netns("c")
        info = self.ctl.join(net.id, eid, ns)
        sandbox.attach(ns, info.src_name, "eth0", [a for a in (ip, ip6) if a], mac=ep.mac,
                       gateway=info.gateway or None, gateway_v6=info.gateway_v6 or None,
                       netlink=self.host.nl)
        return ep, ns, info

    def close(self):
        self.ext_nl.close()


@pytest.fixture
def lab(host_ns, make_netns, prefix):
    lab = Lab(host_ns, make_netns, prefix)
    try:
        yield lab
    finally:
        lab.close()


def host_links(lab):
    return sorted(l.name for l in lab.host.nl.list_links())


def test_containers_reach_each_other_and_the_external_host(lab, ping):
    lab.external_segment(addr="10.71.0.100/24")
    net = lab.network("10.71.0.0/24", "10.71.0.100/24", options={"parent": "up0"})
    a, ns_a, info = lab.container(net, "10.71.0.2/24")
    b, ns_b, _ = lab.container(net, "10.71.0.3/24")
    assert info.src_name == macvlan_name(a.id) and info.gateway == "10.71.0.100"
    eth0 = sandbox.inspect(ns_a, "eth0")
    assert eth0.kind == "macvlan" and eth0.mac == "02:42:0a:47:00:02"
    assert ping(ns_a, "10.71.0.3") and ping(ns_b, "10.71.0.2")
    assert ping(ns_a, "10.71.0.100") and ping(lab.ext, "10.71.0.3")
    assert not ping(ns_a, "10.71.0.99", timeout=0.3)
    # removal: the children go, the parent pynet did not create stays
    lab.ctl.delete_network(net.id, force_endpoints=True)
    assert host_links(lab) == ["lo", "up0"]


def test_private_mode_isolates_children_but_not_the_segment(lab, ping):
    lab.external_segment(addr="10.72.0.100/24")
    net = lab.network("10.72.0.0/24", "10.72.0.1/24",
                      options={"parent": "up0", "macvlan_mode": "private"})
    _, ns_a, _ = lab.container(net, "10.72.0.2/24")
    _, ns_b, _ = lab.container(net, "10.72.0.3/24")
    assert ping(ns_a, "10.72.0.100")
    assert not ping(ns_a, "10.72.0.3", timeout=0.5)


def test_ipv6(lab, ping):
    lab.external_segment(addr="10.73.0.100/24")
    net = lab.network("10.73.0.0/24", "10.73.0.1/24", options={"parent": "up0"},
                      v6=("fd00:73::/64", "fd00:73::1/64"))
    _, ns_a, info = lab.container(net, "10.73.0.2/24", "fd00:73::2/64")
    _, ns_b, _ = lab.container(net, "10.73.0.3/24", "fd00:73::3/64")
    assert info.gateway_v6 == "fd00:73::1"
    assert ping(ns_a, "fd00:73::3", timeout=3.0)


def test_no_parent_and_internal_networks_are_isolated(lab, ping):
    lab.external_segment(addr="10.74.0.100/24")
    iso = lab.network("10.74.1.0/24", "10.74.1.1/24")                    # no parent
    internal = lab.network("10.74.2.0/24", "10.74.2.1/24", internal=True,
                           options={"parent": "up0"})                   # parent ignored
    for net, base in ((iso, "10.74.1"), (internal, "10.74.2")):
        parent = net.driver_state["parent"]
        assert parent == dummy_parent_name(net.id) and net.driver_state["created"]
        _, ns_a, info = lab.container(net, f"{base}.2/24")
        _, ns_b, _ = lab.container(net, f"{base}.3/24")
        assert info.gateway == ""
        assert ping(ns_a, f"{base}.3")
        assert sandbox.inspect(ns_a, "eth0").kind == "macvlan"
    # nothing of theirs reaches the segment of up0
    assert not ping(lab.ext, "10.74.2.2", timeout=0.3)
    for net in (iso, internal):
        lab.ctl.delete_network(net.id, force_endpoints=True)
    assert host_links(lab) == ["lo", "up0"]


def test_host_cannot_reach_its_own_children_over_the_parent(lab, ping):
    """The known macvlan limitation: the lower device and its macvlans do not
    talk to each other.  The external host reaches the child; the host with an
    address on the parent does not; a macvlan of the host's own does."""
    lab.external_segment(addr="10.75.0.100/24")
    lab.host.nl.ensure_address("up0", "10.75.0.1/24")
    net = lab.network("10.75.0.0/24", "10.75.0.254/24", options={"parent": "up0"})
    _, ns_a, _ = lab.container(net, "10.75.0.2/24")
    assert ping(lab.ext, "10.75.0.2")
    assert ping(lab.host.path, "10.75.0.100")          # the host reaches the segment ...
    assert not ping(lab.host.path, "10.75.0.2", timeout=0.5)   # ... but not its child
    # workaround: a macvlan of the host's own on the parent, with a /32 route
    lab.host.nl.remove_address("up0", "10.75.0.1/24")
    lab.host.nl.add_macvlan("hostmv", "up0", mode="bridge")
    lab.host.nl.ensure_address("hostmv", "10.75.0.250/24")
    lab.host.nl.set_up("hostmv")
    assert ping(lab.host.path, "10.75.0.2")


@pytest.mark.kernel_lab
def test_vlans_of_one_parent_are_isolated(lab, ping):
    lab.external_segment()
    # one namespace per VLAN segment: a single host on both VLANs answers ARP for either of its
    # addresses on either VLAN (Linux's weak host model), which proves nothing about the VLANs
    for vid in (10, 20):
        seg = lab.make_netns(f"s{vid}")
        lab.ext_nl.add_vlan(f"eth0.{vid}", "eth0", vid)
        lab.ext_nl.move_to_netns(f"eth0.{vid}", seg)
        seg_nl = lab.host.nl.for_netns(seg)
        try:
            seg_nl.ensure_address(f"eth0.{vid}", f"10.76.{vid}.100/24")
            seg_nl.set_up(f"eth0.{vid}")
        finally:
            seg_nl.close()
    lab.host.nl.add_vlan("up0.30", "up0", 30)        # one pynet did not create
    n10 = lab.network("10.76.10.0/24", "10.76.10.1/24", options={"parent": "up0.10"})
    n20 = lab.network("10.76.20.0/24", "10.76.20.1/24", options={"parent": "up0.20"})
    n30 = lab.network("10.76.30.0/24", "10.76.30.1/24", options={"parent": "up0.30"})
    _, ns_a, _ = lab.container(n10, "10.76.10.2/24")
    _, ns_b, _ = lab.container(n20, "10.76.20.2/24")
    assert ping(ns_a, "10.76.10.100") and ping(ns_b, "10.76.20.100")
    # L2 isolation: even told the other subnet is on-link, VLAN 10 never reaches VLAN 20
    inner = lab.host.nl.for_netns(ns_a)
    try:
        inner.add_route("10.76.20.0/24", ifname="eth0")
    finally:
        inner.close()
    assert not ping(ns_a, "10.76.20.2", timeout=0.5)
    assert not ping(ns_a, "10.76.20.100", timeout=0.5)
    for n in (n10, n20, n30):
        lab.ctl.delete_network(n.id, force_endpoints=True)
    assert host_links(lab) == ["lo", "up0", "up0.30"]


@pytest.mark.parametrize("options,exc,match", [
    ({"parent": "nope0"}, errors.InvalidOption, "nope0 does not exist"),
    ({"parent": "nope0.10"}, errors.InvalidOption, "nope0 of VLAN"),
    ({"parent": "up0.4095"}, errors.InvalidOption, "VLAN ID"),
    ({"parent": "up0", "macvlan_mode": "turbo"}, errors.InvalidOption, "macvlan_mode"),
])
def test_bad_input_changes_nothing(lab, options, exc, match):
    lab.external_segment()
    before = host_links(lab)
    with pytest.raises(exc, match=match):
        lab.network("10.77.0.0/24", "10.77.0.1/24", options=options)
    assert host_links(lab) == before and lab.ctl.networks() == []


def test_parent_already_used(lab):
    lab.external_segment()
    lab.network("10.78.0.0/24", "10.78.0.1/24", options={"parent": "up0"})
    before = host_links(lab)
    with pytest.raises(errors.Conflict, match="already used"):
        lab.network("10.78.1.0/24", "10.78.1.1/24", options={"parent": "up0"})
    assert host_links(lab) == before and len(lab.ctl.networks()) == 1


def test_restore_after_the_children_vanish(lab, ping):
    lab.external_segment(addr="10.79.0.100/24")
    net = lab.network("10.79.0.0/24", "10.79.0.1/24")
    eid = hexid()
    lab.ctl.create_endpoint(net.id, eid, address="10.79.0.2/24")
    parent = net.driver_state["parent"]
    lab.host.nl.delete_link(parent)                       # "reboot"
    lab.ctl.restore()
    assert lab.host.nl.link_exists(parent) and lab.host.nl.link_exists(macvlan_name(eid))
