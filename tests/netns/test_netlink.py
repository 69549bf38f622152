"""Netlink conformance: the same assertions against the real PyrouteNetlink
(inside a throwaway namespace) and the FakeNetlink, so the fake keeps
answering as the kernel does."""
import os

import pytest

from pynet import errors
from pynet.netlink import LinkExists, LinkNotFound, NetnsNotFound
from pynet.netlink.fake import FakeKernel, FakeNetlink

pytestmark = [pytest.mark.netns]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture(params=["fake", pytest.param("real", marks=root_only)])
def env(request):
    """(netlink in a "host" namespace, a function making a second namespace)"""
    if request.param == "fake":
        k = FakeKernel()
        n = iter(range(100))
        return FakeNetlink(k), lambda: k.add_netns(f"/fake/ns{next(n)}")
    host = request.getfixturevalue("host_ns")
    make = request.getfixturevalue("make_netns")
    return host.nl, lambda: make("c")


def test_bridge_veth_master_up(env):
    nl, _ = env
    br = nl.ensure_bridge("tbr0", mtu=1400, alias="pynet:conf:n1")
    assert br.kind == "bridge" and br.mtu == 1400 and br.alias == "pynet:conf:n1"
    assert nl.ensure_bridge("tbr0").index == br.index            # idempotent
    nl.add_veth("tv0", "tv0p", mtu=1400, peer_mac="02:42:0a:00:00:02", alias="pynet:conf:e1")
    nl.set_master("tv0", "tbr0")
    nl.set_up("tv0")
    nl.set_up("tbr0")
    v = nl.get_link("tv0")
    assert (v.kind, v.master, v.mtu, v.state, v.alias, v.peer) == \
        ("veth", "tbr0", 1400, "up", "pynet:conf:e1", "tv0p")
    p = nl.get_link("tv0p")
    assert (p.mac, p.state, p.master) == ("02:42:0a:00:00:02", "down", "")
    assert [l.name for l in nl.list_links(alias_prefix="pynet:conf:")] == ["tbr0", "tv0"]
    nl.set_master("tv0", None)
    assert nl.get_link("tv0").master == ""
    nl.set_mtu("tv0", 1300)
    nl.set_mac("tv0", "02:00:00:00:00:01")
    assert (nl.get_link("tv0").mtu, nl.get_link("tv0").mac) == (1300, "02:00:00:00:00:01")


def test_errors(env):
    nl, _ = env
    nl.ensure_bridge("tbr0")
    nl.add_veth("tv0", "tv0p")
    with pytest.raises(LinkExists):
        nl.add_veth("tv0", "tv1p")
    with pytest.raises(LinkExists):
        nl.ensure_bridge("tv0")                        # not a bridge
    with pytest.raises(LinkNotFound):
        nl.get_link("tnope")
    with pytest.raises(LinkNotFound):
        nl.set_up("tnope")
    with pytest.raises(LinkNotFound):
        nl.delete_link("tnope", missing_ok=False)
    assert nl.delete_link("tnope") is False
    with pytest.raises(errors.InvalidParameter):
        nl.ensure_bridge("t" * 16)
    with pytest.raises(errors.KernelError):
        nl.set_master("tv0p", "tv0")                   # a veth is no master
    with pytest.raises(LinkNotFound):
        nl.set_master("tv0", "tnope")
    assert nl.delete_link("tv0p") is True              # the pair dies together
    assert not nl.link_exists("tv0")


def test_addresses(env):
    nl, _ = env
    nl.ensure_bridge("tbr0")
    assert nl.ensure_address("tbr0", "10.31.0.1/24") is True
    assert nl.ensure_address("tbr0", "10.31.0.1/24") is False
    assert "10.31.0.1/24" in nl.get_link("tbr0").addresses
    assert nl.remove_address("tbr0", "10.31.0.1/24") is True
    assert nl.remove_address("tbr0", "10.31.0.1/24") is False
    assert "10.31.0.1/24" not in nl.get_addresses("tbr0")


def test_move_rename_and_routes(env):
    nl, new_ns = env
    ns = new_ns()
    nl.ensure_bridge("tbr0")
    nl.add_veth("tv0", "tv0p")
    nl.ensure_address("tv0p", "10.31.0.2/24")
    nl.set_master("tv0p", "tbr0")
    nl.move_to_netns("tv0p", ns, new_name="eth0")
    assert not nl.link_exists("tv0p")
    inner = nl.for_netns(ns)
    try:
        e = inner.get_link("eth0")
        assert (e.kind, e.master, e.addresses, e.state) == ("veth", "", [], "down")
        assert nl.get_link("tv0").peer == ""
        inner.ensure_address("eth0", "10.31.0.2/24")
        with pytest.raises(errors.KernelError):
            inner.add_route("10.40.0.0/16", gateway="10.31.0.1")     # eth0 down: unreachable
        inner.set_up("eth0")
        inner.add_route("default", gateway="10.31.0.1", ifname="eth0")
        inner.add_route("10.40.0.0/16", gateway="10.31.0.1")
        inner.add_route("10.40.0.0/16", gateway="10.31.0.1")          # replace: idempotent
        with pytest.raises(errors.KernelError):
            inner.add_route("10.41.0.0/16", gateway="10.99.0.1")
        routes = {(r.dst, r.gateway, r.ifname) for r in inner.list_routes(4)}
        assert {("default", "10.31.0.1", "eth0"), ("10.40.0.0/16", "10.31.0.1", "eth0"),
                ("10.31.0.0/24", "", "eth0")} <= routes
        assert inner.delete_route("10.40.0.0/16") is True
        assert inner.delete_route("10.40.0.0/16") is False
        inner.set_down("eth0")
        inner.rename("eth0", "eth7")
        assert inner.link_exists("eth7")
    finally:
        inner.close()
    with pytest.raises(NetnsNotFound):
        nl.move_to_netns("tv0", "/var/run/netns/pt-surely-missing")
    with pytest.raises(NetnsNotFound):
        nl.for_netns("/var/run/netns/pt-surely-missing")
    with pytest.raises(errors.KernelError):
        nl.move_to_netns("tbr0", ns)                    # bridges stay where they are


def test_vxlan_fdb_and_neighbours(env):
    """The overlay's verbs: a nolearning proxy VXLAN device, its permanent
    FDB entries (one per MAC, the all-zero flood MAC once per VTEP) and
    neighbour entries; replace and delete are idempotent."""
    nl, _ = env
    nl.add_vxlan("tvx0", 4242, port=4789, local="198.18.99.1", learning=False, proxy=True, mtu=1450,
                 alias="pynet-overlay:conf:n1")
    info = nl.vxlan_info("tvx0")
    assert (info["vni"], info["port"], info["learning"], info["proxy"]) == (4242, 4789, False, True)
    v = nl.get_link("tvx0")
    assert (v.kind, v.mtu, v.alias) == ("vxlan", 1450, "pynet-overlay:conf:n1")
    mac = "02:42:0a:0b:00:05"
    nl.fdb_replace("tvx0", mac, "198.18.99.2")
    nl.fdb_replace("tvx0", mac, "198.18.99.3")             # moves: one entry per MAC
    nl.fdb_replace("tvx0", nl.FLOOD_MAC, "198.18.99.2")
    nl.fdb_replace("tvx0", nl.FLOOD_MAC, "198.18.99.3")    # flood: one per VTEP
    nl.fdb_replace("tvx0", nl.FLOOD_MAC, "198.18.99.3")    # again: no change, no error
    assert nl.fdb_list("tvx0") == [(nl.FLOOD_MAC, "198.18.99.2"), (nl.FLOOD_MAC, "198.18.99.3"),
                                   (mac, "198.18.99.3")]
    nl.neigh_replace("tvx0", "10.11.0.5", mac)
    nl.neigh_replace("tvx0", "10.11.0.5", "02:42:0a:0b:00:06")
    # the agent's path: the ifindex looked up once, passed to each entry
    assert nl.link_index("tvx0") == v.index and nl.link_index("tnope") is None
    nl.neigh_replace("tvx0", "10.11.0.7", "02:42:0a:0b:00:07", index=v.index)
    assert nl.neigh_list("tvx0") == [("10.11.0.5", "02:42:0a:0b:00:06"), ("10.11.0.7", "02:42:0a:0b:00:07")]
    assert nl.fdb_delete("tvx0", nl.FLOOD_MAC, "198.18.99.2") is True
    assert nl.fdb_delete("tvx0", nl.FLOOD_MAC, "198.18.99.2") is False    # gone already
    assert nl.neigh_delete("tvx0", "10.11.0.5") is True
    assert nl.neigh_delete("tvx0", "10.11.0.5") is False
    assert nl.fdb_list("tvx0") == [(nl.FLOOD_MAC, "198.18.99.3"), (mac, "198.18.99.3")]
    assert nl.neigh_list("tvx0") == [("10.11.0.7", "02:42:0a:0b:00:07")]
    with pytest.raises(LinkNotFound):
        nl.fdb_list("tnope")
    nl.delete_link("tvx0")
    assert not nl.link_exists("tvx0")


@root_only
def test_missing_netns_is_not_created(host_ns):
    from pynet.netlink.pyroute import PyrouteNetlink
    path = host_ns.path + "-missing"
    with pytest.raises(NetnsNotFound):
        PyrouteNetlink(path).link_exists("lo")
    assert not os.path.exists(path)


@root_only
def test_sysctl_in_netns(host_ns):
    from pynet.sysctl import Sysctl
    here = Sysctl().get("net.ipv4.ip_forward")
    host_ns.sysctl.set("net.ipv4.ip_forward", 1)
    assert host_ns.sysctl.get("net/ipv4/ip_forward") == "1"
    assert Sysctl().get("net.ipv4.ip_forward") == here   # the root namespace is untouched
    with pytest.raises(errors.NotFound):
        host_ns.sysctl.get("net.ipv4.conf.tnope.forwarding")



def test_link_mac_is_get_links_mac_without_its_addresses(env):
    """``link_mac``: the MAC ``get_link`` reports, by one link query (the CNI ADD result names
    the host's bridge and veth by MAC; ``get_link`` would dump every address of the host)."""
    nl, _ = env
    nl.add_veth("tm0", "tm0p", peer_mac="02:42:0a:00:00:07")
    nl.ensure_address("tm0", "10.77.7.1/24")
    assert nl.link_mac("tm0p") == "02:42:0a:00:00:07" == nl.get_link("tm0p").mac
    assert nl.link_mac("tm0") == nl.get_link("tm0").mac
    with pytest.raises(LinkNotFound):
        nl.link_mac("tm-none")
