"""The bridge driver against the fake kernel and sysctl."""
import pytest

from pynet import errors
from pynet.cnm.controller import Controller
from pynet.cnm.model import Endpoint, IPData, Network
from pynet.drivers.bridge import (BridgeDriver, alias_for, container_veth_name,
                                  default_bridge_name, host_veth_name, mac_from_ipv4)
from pynet.netlink.fake import FakeKernel, FakeNetlink
from pynet.store.memory import MemoryStore
from pynet.sysctl import FakeSysctl
from tests.support.fakes import create_endpoint

NID = "36794d95504b02056972fff2493623c9b88c6f6b42395106ef6fe1ce6fd0bf62"
NID2 = "f58c8c31b762d745a0953231369b1a5951087ce479b7d3780b081209bf6dc734"
EID = "5c48ea5e9467d1c82916963b4ede619e760ce33890a4443baa0afca54d6fba7a"
EID2 = "2ac54e045f44eae2daec12c0977294b3cf5ffa502964fbbad97d4b574068f5fb"


@pytest.fixture
def nl():
    return FakeNetlink(FakeKernel())


@pytest.fixture
def sysctl():
    return FakeSysctl()


@pytest.fixture
def drv(nl, sysctl):
    return BridgeDriver(nl, sysctl, instance="t1")


def mknet(nid=NID, subnet="10.250.0.0/24", gw="10.250.0.1/24", v6=None, **kw):
    ipv6 = [IPData(pool=v6[0], gateway=v6[1])] if v6 else []
    return Network(id=nid, ipv4=[IPData(pool=subnet, gateway=gw)], ipv6=ipv6,
                   enable_ipv6=bool(v6), **kw)


def create(drv, net, others=()):
    drv.validate_network(net, list(others))
    drv.create_network(net)
    return net


# -- naming -----------------------------------------------------------------------
def test_names_fit_15_bytes():
    assert default_bridge_name(NID) == "pn-36794d95504b" and len(default_bridge_name(NID)) == 15
    assert host_veth_name(EID) == "pv5c48ea5e946"
    assert container_veth_name(EID) == "pc5c48ea5e946"
    # non-hex ids (CNI "container-ifname" style) are hashed, still short and stable
    n = host_veth_name("my-pod/eth0")
    assert n.startswith("pv") and len(n) == 13 and n == host_veth_name("my-pod/eth0")


def test_mac_derivation_matches_docker():
    # seen on the wire: 10.250.0.200 -> 02:42:0a:fa:00:c8
    assert mac_from_ipv4("10.250.0.200/24") == "02:42:0a:fa:00:c8"
    assert mac_from_ipv4("172.18.0.2") == "02:42:ac:12:00:02"


# -- options -------------------------------------------------------------------
@pytest.mark.parametrize("opts, match", [
    ({"com.docker.network.driver.mtu": "abc"}, "not a number"),
    ({"com.docker.network.driver.mtu": "67"}, "between 68 and 65535"),
    ({"com.docker.network.driver.mtu": "70000"}, "between 68 and 65535"),
    ({"com.docker.network.bridge.enable_icc": "maybe"}, "expected true or false"),
    ({"com.docker.network.bridge.enable_ip_masquerade": "2"}, "expected true or false"),
    ({"com.docker.network.bridge.host_binding_ipv4": "1.2.3"}, "not an IP address"),
    ({"com.docker.network.bridge.frobnicate": "1"}, "unknown bridge option"),
    ({"pynet.bridge.nope": "1"}, "unknown bridge option"),
    ({"pynet.bridge.spoof_check": "sure"}, "expected true or false"),
    ({"com.docker.network.bridge.name": "a-very-long-bridge-name"}, "15"),
])
def test_invalid_options(drv, opts, match):
    with pytest.raises(errors.InvalidOption, match=match) as ei:
        drv.validate_network(mknet(options=opts), [])
    assert "\n" not in str(ei.value)


def test_options_parsed_into_driver_state(drv, nl):
    net = create(drv, mknet(options={
        "com.docker.network.bridge.name": "br-test", "com.docker.network.driver.mtu": "1400",
        "com.docker.network.bridge.enable_icc": "false",
        "com.docker.network.bridge.enable_ip_masquerade": "False",
        "com.docker.network.bridge.host_binding_ipv4": "127.0.0.1",
        "pynet.bridge.spoof_check": "true", "pynet.mode": "bridge", "probe.x": "ignored"}))
    st = net.driver_state
    assert st["bridge"] == "br-test" and st["created"] is True and st["mtu"] == 1400
    assert (st["enable_icc"], st["enable_ip_masquerade"], st["spoof_check"]) == (False, False, True)
    assert st["host_binding_ipv4"] == "127.0.0.1"
    br = nl.get_link("br-test")
    assert br.mtu == 1400 and br.state == "up" and br.alias == alias_for("t1", NID)


# -- validate ------------------------------------------------------------------
def test_validate_conflicts(drv, nl):
    a = create(drv, mknet(options={"com.docker.network.bridge.name": "br-x"}))
    with pytest.raises(errors.Conflict, match="already used"):
        drv.validate_network(mknet(NID2, options={"com.docker.network.bridge.name": "br-x"}), [a])
    nl.add_veth("notabr", "notabrp")
    with pytest.raises(errors.Conflict, match="veth"):
        drv.validate_network(mknet(NID2, options={"com.docker.network.bridge.name": "notabr"}), [a])
    # a bridge tagged by another pynet instance is not ours to take
    nl.ensure_bridge("br-other", alias=alias_for("t2", NID2))
    with pytest.raises(errors.Conflict, match="instance t2"):
        drv.validate_network(mknet(NID2, options={"com.docker.network.bridge.name": "br-other"}), [a])


# -- create network ------------------------------------------------------------
def test_create_network_v4(drv, nl, sysctl):
    net = create(drv, mknet())
    br = nl.get_link("pn-36794d95504b")
    assert br.kind == "bridge" and br.addresses == ["10.250.0.1/24"] and br.state == "up"
    assert sysctl.get("net.ipv4.ip_forward") == "1"


def test_create_network_ipv6(drv, nl, sysctl):
    create(drv, mknet(v6=("fd00:1::/64", "fd00:1::1/64")))
    br = nl.get_link("pn-36794d95504b")
    assert set(br.addresses) == {"10.250.0.1/24", "fd00:1::1/64"}
    assert sysctl.get("net.ipv6.conf.pn-36794d95504b.disable_ipv6") == "0"
    assert sysctl.get("net.ipv6.conf.all.forwarding") == "1"


def test_internal_network_has_gateway_address_but_no_forwarding(drv, nl, sysctl):
    create(drv, mknet(internal=True))
    assert nl.get_link("pn-36794d95504b").addresses == ["10.250.0.1/24"]
    assert ("net.ipv4.ip_forward" not in {k for _, k in sysctl.values})


def test_existing_bridge_is_used_not_owned(drv, nl):
    nl.ensure_bridge("br-user")
    net = create(drv, mknet(options={"com.docker.network.bridge.name": "br-user"}))
    assert net.driver_state["created"] is False
    assert nl.get_link("br-user").alias == ""
    drv.delete_network(net)
    assert nl.link_exists("br-user") and nl.get_link("br-user").addresses == []


def test_create_network_failure_removes_bridge(drv, nl):
    nl.kernel.fail("ensure_address")
    with pytest.raises(errors.KernelError):
        drv.create_network(mknet())
    assert nl.kernel.summary() == {}


# -- endpoints and join ----------------------------------------------------------
def test_endpoint_veth_mac_mtu_and_join(drv, nl):
    net = create(drv, mknet(options={"com.docker.network.driver.mtu": "1400"}))
    ep = Endpoint(id=EID, network_id=NID, address="10.250.0.200/24")
    create_endpoint(drv, net, ep)
    assert ep.mac == "02:42:0a:fa:00:c8"
    host, cont = nl.get_link("pv5c48ea5e946"), nl.get_link("pc5c48ea5e946")
    assert host.master == "pn-36794d95504b" and host.state == "up" and host.mtu == 1400
    assert host.alias == alias_for("t1", EID)
    assert cont.mac == "02:42:0a:fa:00:c8" and cont.mtu == 1400 and cont.master == ""
    info = drv.join(net, ep, "/var/run/docker/netns/x")
    assert (info.src_name, info.dst_prefix, info.gateway, info.gateway_v6) == \
        ("pc5c48ea5e946", "eth", "10.250.0.1", "")
    assert info.disable_gateway_service is False
    assert drv.oper_info(net, ep)["bridge"] == "pn-36794d95504b"


def test_endpoint_keeps_given_mac(drv, nl):
    net = create(drv, mknet())
    ep = Endpoint(id=EID, network_id=NID, address="10.250.0.5/24", mac="02:00:00:00:00:99")
    create_endpoint(drv, net, ep)
    assert nl.get_link("pc5c48ea5e946").mac == "02:00:00:00:00:99"


def test_join_internal_and_ipv6(drv):
    net = create(drv, mknet(internal=True))
    ep = Endpoint(id=EID, network_id=NID, address="10.250.0.2/24")
    create_endpoint(drv, net, ep)
    info = drv.join(net, ep, "/x")
    assert info.gateway == "" and info.gateway_v6 == "" and info.disable_gateway_service is True

    net6 = create(drv, mknet(NID2, subnet="10.251.0.0/24", gw="10.251.0.1/24",
                             v6=("fd00:2::/64", "fd00:2::1/64")))
    ep6 = Endpoint(id=EID2, network_id=NID2, address="10.251.0.2/24", address_v6="fd00:2::2/64")
    create_endpoint(drv, net6, ep6)
    info = drv.join(net6, ep6, "/x")
    assert (info.gateway, info.gateway_v6, info.disable_gateway_service) == \
        ("10.251.0.1", "fd00:2::1", False)


def test_join_recreates_a_vanished_pair_and_refuses_a_moved_one(drv, nl):
    net = create(drv, mknet())
    ep = Endpoint(id=EID, network_id=NID, address="10.250.0.2/24")
    create_endpoint(drv, net, ep)
    nl.delete_link("pv5c48ea5e946")
    assert drv.join(net, ep, "/x").src_name == "pc5c48ea5e946"
    assert nl.get_link("pv5c48ea5e946").master == "pn-36794d95504b"
    nl.kernel.add_netns("/c")
    nl.move_to_netns("pc5c48ea5e946", "/c", "eth0")
    with pytest.raises(errors.Conflict, match="already joined"):
        drv.join(net, ep, "/x")


def test_create_endpoint_failure_leaves_nothing(drv, nl):
    net = create(drv, mknet())
    nl.kernel.fail("set_master")
    with pytest.raises(errors.KernelError):
        create_endpoint(drv, net, Endpoint(id=EID, network_id=NID, address="10.250.0.2/24"))
    assert nl.kernel.summary() == {"pn-36794d95504b": "bridge"}


def test_create_endpoint_replaces_own_stale_veth_but_not_foreign(drv, nl):
    net = create(drv, mknet())
    nl.add_veth("pv5c48ea5e946", "pc5c48ea5e946", alias=alias_for("t1", EID))
    create_endpoint(drv, net, Endpoint(id=EID, network_id=NID, address="10.250.0.2/24"))
    assert nl.get_link("pv5c48ea5e946").master == "pn-36794d95504b"
    nl.add_veth("pv2ac54e045f4", "pc2ac54e045f4")
    with pytest.raises(errors.Conflict):
        create_endpoint(drv, net, Endpoint(id=EID2, network_id=NID, address="10.250.0.3/24"))


def test_delete_is_idempotent(drv, nl):
    net = create(drv, mknet())
    ep = Endpoint(id=EID, network_id=NID, address="10.250.0.2/24")
    create_endpoint(drv, net, ep)
    for _ in range(2):
        drv.leave(net, ep)
        drv.delete_endpoint(net, ep)
        drv.delete_network(net)
    assert nl.kernel.summary() == {}


# -- restore -----------------------------------------------------------------------
def test_restore_recreates_bridge_reenslaves_and_recreates_unjoined(drv, nl):
    net = create(drv, mknet(options={"com.docker.network.driver.mtu": "1400"}))
    joined = Endpoint(id=EID, network_id=NID, address="10.250.0.2/24")
    unjoined = Endpoint(id=EID2, network_id=NID, address="10.250.0.3/24")
    create_endpoint(drv, net, joined)
    create_endpoint(drv, net, unjoined)
    joined.sandbox_key = "/var/run/docker/netns/abc"
    nl.delete_link("pn-36794d95504b")                   # `ip link del`
    nl.delete_link("pv2ac54e045f4")                     # and the unjoined pair
    drv.restore([net], [joined, unjoined])
    br = nl.get_link("pn-36794d95504b")
    assert br.addresses == ["10.250.0.1/24"] and br.state == "up" and br.mtu == 1400
    assert br.alias == alias_for("t1", NID)
    assert nl.get_link("pv5c48ea5e946").master == "pn-36794d95504b"
    assert nl.get_link("pv2ac54e045f4").master == "pn-36794d95504b"
    assert nl.get_link("pc2ac54e045f4").mac == "02:42:0a:fa:00:03"


def test_restore_removes_own_orphans_only(drv, nl):
    net = create(drv, mknet())
    # orphans of this instance: a bridge and a veth of objects no longer stored
    nl.ensure_bridge("pn-deadbeef0000", alias=alias_for("t1", "deadbeef" * 8))
    nl.add_veth("pvdeadbeef000", "pcdeadbeef000", alias=alias_for("t1", "ee" * 32))
    # another instance's links and untagged links stay
    nl.ensure_bridge("pn-other", alias=alias_for("t2", "aa" * 32))
    nl.add_veth("pvother", "pcother", alias=alias_for("t2", "bb" * 32))
    nl.add_veth("user0", "user0p", alias="something else")
    drv.restore([net], [])
    assert set(nl.kernel.summary()) == {"pn-36794d95504b", "pn-other", "pvother", "pcother",
                                        "user0", "user0p"}


def test_instance_prefix_is_exact(nl, sysctl):
    """Instance 't1' must not treat links of instance 't10' as its own."""
    other = BridgeDriver(nl, sysctl, instance="t10")
    create(other, mknet())
    BridgeDriver(nl, sysctl, instance="t1").restore([], [])
    assert nl.link_exists("pn-36794d95504b")


# -- the real controller over the fake kernel ---------------------------------
def make_controller(nl, sysctl):
    return Controller(store=MemoryStore(), ipam=None,
                      drivers={"bridge": BridgeDriver(nl, sysctl, instance="t1")})


def test_controller_lifecycle_leaves_kernel_empty(nl, sysctl):
    c = make_controller(nl, sysctl)
    c.create_network(NID, [IPData(pool="10.250.0.0/24", gateway="10.250.0.1/24")],
                     options={"com.docker.network.driver.mtu": "1400"})
    ep = c.create_endpoint(NID, EID, address="10.250.0.2/24")
    assert ep.mac == "02:42:0a:fa:00:02"
    assert c.endpoint(NID, EID).mac == "02:42:0a:fa:00:02"      # stored for the front end
    info = c.join(NID, EID, "/var/run/docker/netns/abc")
    assert info.src_name == "pc5c48ea5e946" and info.gateway == "10.250.0.1"
    assert set(nl.kernel.summary()) == {"pn-36794d95504b", "pv5c48ea5e946", "pc5c48ea5e946"}
    c.leave(NID, EID)
    c.delete_endpoint(NID, EID)
    c.delete_network(NID)
    assert nl.kernel.summary() == {}
    assert c.networks() == [] and c.endpoints() == []


def test_controller_create_endpoint_failure_leaves_nothing(nl, sysctl):
    c = make_controller(nl, sysctl)
    c.create_network(NID, [IPData(pool="10.250.0.0/24", gateway="10.250.0.1/24")])
    nl.kernel.fail("set_up", name="pv5c48ea5e946")
    with pytest.raises(errors.KernelError):
        c.create_endpoint(NID, EID, address="10.250.0.2/24")
    assert nl.kernel.summary() == {"pn-36794d95504b": "bridge"}
    assert c.endpoints() == []
    c.delete_network(NID)
    assert nl.kernel.summary() == {}


def test_controller_create_network_failure_leaves_nothing(nl, sysctl):
    c = make_controller(nl, sysctl)
    nl.kernel.fail("set_up", name="pn-36794d95504b")
    with pytest.raises(errors.KernelError):
        c.create_network(NID, [IPData(pool="10.250.0.0/24", gateway="10.250.0.1/24")])
    assert nl.kernel.summary() == {} and c.networks() == []


def test_controller_restore_after_bridge_deleted(nl, sysctl):
    c = make_controller(nl, sysctl)
    c.create_network(NID, [IPData(pool="10.250.0.0/24", gateway="10.250.0.1/24")])
    c.create_endpoint(NID, EID, address="10.250.0.2/24")
    c.join(NID, EID, "/var/run/docker/netns/abc")
    nl.delete_link("pn-36794d95504b")
    c.restore()
    assert nl.get_link("pv5c48ea5e946").master == "pn-36794d95504b"


def test_bridge_import_is_lean():
    import subprocess
    import sys
    code = ("import sys, pynet.drivers.bridge, pynet.cnm.sandbox, pynet.netlink.pyroute; "
            "print(any(m.split('.')[0] in ('flask', 'scapy') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_overlays_restore_leaves_the_bridge_drivers_links(nl, sysctl, drv):
    """The overlay driver is built on this one: its restore (which the controller runs with the
    overlay's networks only, none here) must not take the bridge driver's links for its own
    orphans -- it did, and every pynet daemon restart removed every bridge network's bridge."""
    from pynet.drivers.overlay import OverlayDriver

    net = create(drv, mknet())
    bridge = net.driver_state["bridge"]
    assert nl.link_exists(bridge)
    OverlayDriver(nl, sysctl, instance="t1").restore([], [])
    assert nl.link_exists(bridge)
    drv.restore([], [])   # the bridge driver's own restore still removes its orphans
    assert not nl.link_exists(bridge)
