"""The macvlan driver against the fake kernel, alone and through the Controller."""
import pytest

from pynet import errors
from pynet.cnm.controller import Controller
from pynet.cnm.model import Endpoint, IPData, Network
from pynet.drivers.bridge import BridgeDriver, alias_for
from pynet.drivers.macvlan import (MacvlanDriver, dummy_parent_name, macvlan_name, parse_options,
                                   split_parent)
from pynet.ipam import Ipam
from pynet.netlink.fake import FakeKernel, FakeNetlink
from pynet.store.memory import MemoryStore
from pynet.sysctl import FakeSysctl
from tests.support.fakes import create_endpoint

NID = "36794d95504b02056972fff2493623c9b88c6f6b42395106ef6fe1ce6fd0bf62"
NID2 = "f58c8c31b762d745a0953231369b1a5951087ce479b7d3780b081209bf6dc734"
EID = "5c48ea5e9467d1c82916963b4ede619e760ce33890a4443baa0afca54d6fba7a"
EID2 = "2ac54e045f44eae2daec12c0977294b3cf5ffa502964fbbad97d4b574068f5fb"


@pytest.fixture
def kernel():
    k = FakeKernel()
    nl = FakeNetlink(k)
    nl.add_dummy("ext0")           # a parent pynet did not create
    nl.set_up("ext0")
    return k


@pytest.fixture
def nl(kernel):
    return FakeNetlink(kernel)


@pytest.fixture
def drv(nl):
    return MacvlanDriver(nl, FakeSysctl(), instance="t1")


def mknet(nid=NID, subnet="10.250.0.0/24", gw="10.250.0.1/24", v6=None, **kw):
    ipv6 = [IPData(pool=v6[0], gateway=v6[1])] if v6 else []
    kw.setdefault("driver", "macvlan")
    return Network(id=nid, ipv4=[IPData(pool=subnet, gateway=gw)], ipv6=ipv6,
                   enable_ipv6=bool(v6), **kw)


def create(drv, net, others=()):
    drv.validate_network(net, list(others))
    drv.create_network(net)
    return net


# -- options ----------------------------------------------------------------------
def test_names_fit_15_bytes():
    assert dummy_parent_name(NID) == "pd-36794d95504b"
    assert macvlan_name(EID) == "pm5c48ea5e946"


@pytest.mark.parametrize("parent,want", [
    ("eth1", ("eth1", None, "")), ("eth1.50", ("eth1", 50, "")), ("br.lan", ("br.lan", None, "lan")),
    ("a.b.7", ("a.b", 7, "")), ("eth1.4094", ("eth1", 4094, "")),
])
def test_split_parent(parent, want):
    assert split_parent(parent) == want


@pytest.mark.parametrize("parent", ["eth1.0", "eth1.4095", "eth1.99999"])
def test_vlan_id_out_of_range(parent):
    with pytest.raises(errors.InvalidOption, match="VLAN ID"):
        split_parent(parent)


def test_defaults_and_modes():
    cfg = parse_options(mknet(options={"parent": "ext0"}))
    assert cfg["mode"] == "bridge" and cfg["parent"] == "ext0" and not cfg["dummy"]
    for m in ("bridge", "private", "vepa", "passthru"):
        assert parse_options(mknet(options={"parent": "ext0", "macvlan_mode": m}))["mode"] == m
    with pytest.raises(errors.InvalidOption, match="macvlan_mode"):
        parse_options(mknet(options={"parent": "ext0", "macvlan_mode": "bogus"}))
    with pytest.raises(errors.InvalidOption, match="unknown macvlan option"):
        parse_options(mknet(options={"macvlan_typo": "1"}))
    with pytest.raises(errors.InvalidOption, match="loopback"):
        parse_options(mknet(options={"parent": "lo"}))
    with pytest.raises(errors.InvalidOption, match="parent interface"):
        parse_options(mknet(options={"parent": "x" * 16}))


def test_internal_ignores_parent_like_docker():
    cfg = parse_options(mknet(options={"parent": "ext0"}, internal=True))
    assert cfg["dummy"] and cfg["parent"] == dummy_parent_name(NID)


# -- networks ---------------------------------------------------------------------
def test_existing_parent_is_used_and_kept(drv, nl, kernel):
    net = create(drv, mknet(options={"parent": "ext0"}))
    assert net.driver_state["created"] is False
    assert kernel.summary() == {"ext0": "dummy"}
    drv.delete_network(net)
    assert kernel.summary() == {"ext0": "dummy"}


def test_no_parent_gives_an_isolated_dummy(drv, nl, kernel):
    net = create(drv, mknet())
    name = dummy_parent_name(NID)
    link = nl.get_link(name)
    assert link.kind == "dummy" and link.state == "up" and link.alias == alias_for("t1", NID)
    drv.delete_network(net)
    assert not nl.link_exists(name)
    drv.delete_network(net)          # twice is fine


def test_vlan_sub_interface_on_demand(drv, nl, kernel):
    net = create(drv, mknet(options={"parent": "ext0.10"}))
    link = nl.get_link("ext0.10")
    assert link.kind == "vlan" and link.state == "up" and net.driver_state["created"]
    assert kernel.namespaces[None].links["ext0.10"].extra["vlan_id"] == 10
    drv.delete_network(net)
    assert not nl.link_exists("ext0.10") and nl.link_exists("ext0")


def test_existing_vlan_sub_interface_is_kept(drv, nl):
    nl.add_vlan("ext0.20", "ext0", 20)
    net = create(drv, mknet(options={"parent": "ext0.20"}))
    assert net.driver_state["created"] is False
    drv.delete_network(net)
    assert nl.link_exists("ext0.20")


@pytest.mark.parametrize("opts,exc,match", [
    ({"parent": "nope0"}, errors.InvalidOption, "nope0 does not exist"),
    ({"parent": "nope0.10"}, errors.InvalidOption, "nope0 of VLAN sub-interface"),
    ({"parent": "ext0.5000"}, errors.InvalidOption, "VLAN ID"),
    ({"parent": "ext0.abc"}, errors.InvalidOption, "invalid VLAN ID 'abc'"),
    ({"parent": "ext0", "macvlan_mode": "fast"}, errors.InvalidOption, "macvlan_mode"),
])
def test_bad_input_changes_nothing(drv, kernel, opts, exc, match):
    before = kernel.summary()
    with pytest.raises(exc, match=match):
        create(drv, mknet(options=opts))
    assert kernel.summary() == before


def test_one_network_per_parent(drv, kernel):
    first = create(drv, mknet(options={"parent": "ext0"}))
    with pytest.raises(errors.Conflict, match="already used by macvlan network"):
        drv.validate_network(mknet(NID2, subnet="10.251.0.0/24", gw="10.251.0.1/24",
                                   options={"parent": "ext0"}), [first])
    # another VLAN of the same parent is another parent
    create(drv, mknet(NID2, subnet="10.251.0.0/24", gw="10.251.0.1/24",
                      options={"parent": "ext0.10"}), [first])


def test_create_failure_undoes_the_parent(drv, nl, kernel):
    kernel.fail("set_up", name="ext0.10")
    with pytest.raises(errors.KernelError):
        create(drv, mknet(options={"parent": "ext0.10"}))
    assert not nl.link_exists("ext0.10")


# -- endpoints --------------------------------------------------------------------
def test_endpoint_is_a_macvlan_child_with_docker_mac(drv, nl, kernel):
    net = create(drv, mknet(options={"parent": "ext0", "macvlan_mode": "private"}))
    ep = Endpoint(id=EID, network_id=NID, address="10.250.0.200/24")
    create_endpoint(drv, net, ep)
    assert ep.mac == "02:42:0a:fa:00:c8"
    link = kernel.namespaces[None].links[macvlan_name(EID)]
    assert link.kind == "macvlan" and link.extra["parent"].name == "ext0"
    assert link.extra["mode"] == "private" and link.mac == ep.mac
    info = drv.join(net, ep, "/var/run/netns/x")
    assert info.src_name == macvlan_name(EID) and info.dst_prefix == "eth"
    assert info.gateway == "10.250.0.1" and info.disable_gateway_service
    drv.leave(net, ep)
    drv.delete_endpoint(net, ep)
    assert not nl.link_exists(macvlan_name(EID))
    drv.delete_endpoint(net, ep)


def test_internal_and_dummy_networks_have_no_gateway(drv):
    for i, net in enumerate((mknet(internal=True), mknet(NID2, subnet="10.251.0.0/24",
                                                         gw="10.251.0.1/24"))):
        create(drv, net)
        ep = Endpoint(id=(EID, EID2)[i], network_id=net.id, address=net.ipv4[0].gateway[:-4] + "9/24")
        create_endpoint(drv, net, ep)
        info = drv.join(net, ep, "/x")
        assert info.gateway == "" and info.gateway_v6 == "" and info.disable_gateway_service


def test_ipv6_gateway(drv):
    net = create(drv, mknet(options={"parent": "ext0"}, v6=("fd00:1::/64", "fd00:1::1/64")))
    ep = Endpoint(id=EID, network_id=NID, address="10.250.0.5/24", address_v6="fd00:1::5/64")
    create_endpoint(drv, net, ep)
    info = drv.join(net, ep, "/x")
    assert info.gateway_v6 == "fd00:1::1"


def test_join_recreates_a_vanished_child(drv, nl):
    net = create(drv, mknet(options={"parent": "ext0"}))
    ep = Endpoint(id=EID, network_id=NID, address="10.250.0.5/24")
    create_endpoint(drv, net, ep)
    nl.delete_link(macvlan_name(EID))
    assert drv.join(net, ep, "/x").src_name == macvlan_name(EID)
    assert nl.link_exists(macvlan_name(EID))


def test_stale_child_of_another_owner_is_a_conflict(drv, nl):
    net = create(drv, mknet(options={"parent": "ext0"}))
    nl.add_dummy(macvlan_name(EID))
    with pytest.raises(errors.Conflict):
        create_endpoint(drv, net, Endpoint(id=EID, network_id=NID, address="10.250.0.5/24"))


def test_deleting_a_created_parent_takes_children(drv, nl):
    net = create(drv, mknet(options={"parent": "ext0.30"}))
    ep = Endpoint(id=EID, network_id=NID, address="10.250.0.5/24")
    create_endpoint(drv, net, ep)
    drv.delete_network(net)
    assert not nl.link_exists(macvlan_name(EID)) and not nl.link_exists("ext0.30")


# -- restore ----------------------------------------------------------------------
def test_restore_recreates_and_removes_orphans(drv, nl, kernel):
    net = create(drv, mknet(options={"parent": "ext0.10"}))
    ep = Endpoint(id=EID, network_id=NID, address="10.250.0.5/24")
    create_endpoint(drv, net, ep)
    nl.delete_link("ext0.10")                           # takes the child too
    nl.add_dummy("pd-orphan", alias=alias_for("t1", "gone"))
    nl.add_dummy("pd-other", alias=alias_for("t2", "gone"))   # another instance's: kept
    drv.restore([net], [ep])
    assert nl.link_exists("ext0.10") and nl.link_exists(macvlan_name(EID))
    assert not nl.link_exists("pd-orphan") and nl.link_exists("pd-other")


# -- through the Controller -------------------------------------------------------
@pytest.fixture
def ctl(nl):
    store = MemoryStore()
    drivers = {"bridge": BridgeDriver(nl, FakeSysctl(), instance="t1"),
               "macvlan": MacvlanDriver(nl, FakeSysctl(), instance="t1")}
    return Controller(store, Ipam(store, host_routes=lambda: []), drivers)


def test_controller_selects_macvlan_and_refuses_unknown_driver(ctl, kernel):
    net = ctl.create_network(NID, [IPData(pool="10.250.0.0/24", gateway="10.250.0.1/24")],
                             driver="macvlan", options={"parent": "ext0.10"})
    assert net.driver == "macvlan" and net.driver_state["parent"] == "ext0.10"
    with pytest.raises(errors.InvalidOption, match="unknown driver 'ipvlan'"):
        ctl.create_network(NID2, [IPData(pool="10.251.0.0/24")], driver="ipvlan")
    with pytest.raises(errors.Conflict):
        ctl.create_network(NID2, [IPData(pool="10.251.0.0/24")], driver="macvlan",
                           options={"parent": "ext0.10"})
    assert [n.id for n in ctl.networks()] == [NID]
    ep = ctl.create_endpoint(NID, EID, address="10.250.0.7/24")
    ctl.join(NID, EID, "/x")
    ctl.delete_network(NID, force_endpoints=True)
    assert kernel.summary() == {"ext0": "dummy"}
    assert ep.mac == "02:42:0a:fa:00:07"


def test_isolated_parent_falls_back_to_a_veth_without_dummy_support(drv, nl, kernel):
    kernel.fail("add_dummy", exc=errors.KernelError("create dummy x: Operation not supported"))
    net = create(drv, mknet())
    name = dummy_parent_name(NID)
    assert net.driver_state["parent_kind"] == "veth" and nl.get_link(name).kind == "veth"
    peer = net.driver_state["peer"]
    assert nl.get_link(peer).state == "up" and nl.get_link(name).state == "up"
    # the bridge driver's restore must not take it for an orphan veth of its own
    BridgeDriver(nl, FakeSysctl(), instance="t1").restore([], [])
    assert nl.link_exists(name)
    drv.restore([net], [])
    assert nl.link_exists(name)
    drv.restore([], [])                          # now it is an orphan of ours
    assert not nl.link_exists(name) and not nl.link_exists(peer)


def test_vlan_without_kernel_support_is_a_clear_error(drv, nl, kernel):
    kernel.fail("add_vlan", exc=errors.KernelError("create vlan: Operation not supported"))
    with pytest.raises(errors.KernelError, match="no 802.1q VLAN support"):
        create(drv, mknet(options={"parent": "ext0.10"}))
    assert kernel.summary() == {"ext0": "dummy"}
