"""The fake kernel answers as the kernel does for what pynet relies on."""
import pytest

from pynet import errors
from pynet.cnm import sandbox
from pynet.netlink import LinkExists, LinkNotFound, NetnsNotFound, check_mac
from pynet.netlink.fake import FakeKernel, FakeNetlink


@pytest.fixture
def nl():
    return FakeNetlink(FakeKernel())


def test_bridge_is_idempotent_and_kind_checked(nl):
    a = nl.ensure_bridge("br0", mtu=1400, alias="pynet:t:n1")
    b = nl.ensure_bridge("br0")
    assert a.index == b.index and b.kind == "bridge" and b.mtu == 1400 and b.alias == "pynet:t:n1"
    nl.add_veth("v0", "v0p")
    with pytest.raises(LinkExists):
        nl.ensure_bridge("v0")


def test_names_limited_to_15_bytes(nl):
    with pytest.raises(errors.InvalidParameter, match="15"):
        nl.add_veth("x" * 16, "y")
    with pytest.raises(errors.InvalidParameter):
        nl.ensure_bridge("a/b")


def test_veth_pair_dies_together_and_names_are_unique(nl):
    nl.add_veth("v0", "v0p", mtu=1400, peer_mac="02:42:0a:00:00:02", alias="tag")
    assert nl.get_link("v0p").mac == "02:42:0a:00:00:02"
    assert nl.get_link("v0").peer == "v0p" and nl.get_link("v0").mtu == 1400
    with pytest.raises(LinkExists):
        nl.add_veth("v1", "v0p")
    assert not nl.link_exists("v1")
    assert nl.delete_link("v0p") is True
    assert not nl.link_exists("v0")
    assert nl.delete_link("v0") is False
    with pytest.raises(LinkNotFound):
        nl.delete_link("v0", missing_ok=False)


def test_master_rules(nl):
    nl.ensure_bridge("br0")
    nl.add_veth("v0", "v0p")
    nl.set_master("v0", "br0")
    assert nl.get_link("v0").master == "br0"
    with pytest.raises(errors.KernelError):
        nl.set_master("v0p", "v0")          # only a bridge can be a master
    with pytest.raises(LinkNotFound):
        nl.set_master("v0", "nope")
    nl.delete_link("br0")
    assert nl.get_link("v0").master == ""   # deleting the bridge releases its ports


def test_addresses_idempotent(nl):
    nl.ensure_bridge("br0")
    assert nl.ensure_address("br0", "10.1.0.1/24") is True
    assert nl.ensure_address("br0", "10.1.0.1/24") is False
    assert nl.get_addresses("br0") == ["10.1.0.1/24"]
    assert nl.remove_address("br0", "10.1.0.1/24") is True
    assert nl.remove_address("br0", "10.1.0.1/24") is False
    with pytest.raises(LinkNotFound):
        nl.ensure_address("nope", "10.1.0.1/24")
    with pytest.raises(errors.InvalidAddress):
        nl.ensure_address("br0", "10.1.0.1")


def test_move_to_netns_drops_state_and_renames(nl):
    k = nl.kernel
    k.add_netns("/run/netns/c1")
    nl.ensure_bridge("br0")
    nl.add_veth("v0", "v0p")
    nl.set_master("v0p", "br0")
    nl.ensure_address("v0p", "10.1.0.2/24")
    nl.set_up("v0p")
    nl.move_to_netns("v0p", "/run/netns/c1", new_name="eth0")
    assert not nl.link_exists("v0p")
    inner = nl.for_netns("/run/netns/c1")
    eth0 = inner.get_link("eth0")
    assert (eth0.master, eth0.addresses, eth0.state) == ("", [], "down")
    assert nl.get_link("v0").peer == ""          # the peer is elsewhere now
    with pytest.raises(NetnsNotFound):
        nl.move_to_netns("v0", "/run/netns/missing")
    with pytest.raises(errors.KernelError):
        nl.move_to_netns("br0", "/run/netns/c1")  # bridges cannot move
    nl.add_veth("v1", "v1p")
    with pytest.raises(LinkExists):
        nl.move_to_netns("v1p", "/run/netns/c1", new_name="eth0")
    # deleting the namespace takes the host end of the pair along
    k.delete_netns("/run/netns/c1")
    assert not nl.link_exists("v0")
    with pytest.raises(NetnsNotFound):
        nl.for_netns("/run/netns/c1")


def test_rename_refused_while_up(nl):
    nl.add_veth("v0", "v0p")
    nl.set_up("v0")
    with pytest.raises(errors.KernelError, match="busy"):
        nl.rename("v0", "v9")
    nl.set_down("v0")
    nl.rename("v0", "v9")
    assert nl.get_link("v9").peer == "v0p"


def test_routes_need_a_connected_gateway(nl):
    nl.add_veth("v0", "v0p")
    nl.ensure_address("v0", "10.1.0.2/24")
    with pytest.raises(errors.KernelError, match="unreachable"):
        nl.add_route("default", gateway="10.1.0.1")     # link is down: no connected route
    nl.set_up("v0")
    nl.add_route("default", gateway="10.1.0.1", ifname="v0")
    nl.add_route("10.9.0.0/16", gateway="10.1.0.1")
    with pytest.raises(errors.KernelError, match="unreachable"):
        nl.add_route("10.8.0.0/16", gateway="10.3.0.1")
    routes = {(r.dst, r.gateway, r.ifname) for r in nl.list_routes()}
    assert routes == {("10.1.0.0/24", "", "v0"), ("default", "10.1.0.1", "v0"),
                      ("10.9.0.0/16", "10.1.0.1", "v0")}
    nl.delete_link("v0")
    assert nl.list_routes() == []


def test_list_links_by_alias_prefix(nl):
    nl.ensure_bridge("br0", alias="pynet:a:n1")
    nl.ensure_bridge("br1", alias="pynet:b:n2")
    nl.ensure_bridge("br2")
    assert [l.name for l in nl.list_links("pynet:a:")] == ["br0"]
    assert {l.name for l in nl.list_links()} == {"lo", "br0", "br1", "br2"}
    assert nl.get_link("br0")["alias"] == "pynet:a:n1"   # dict-ish access


def test_failure_injection(nl):
    nl.kernel.fail("set_up", name="br0")
    nl.ensure_bridge("br0")
    with pytest.raises(errors.KernelError, match="injected"):
        nl.set_up("br0")
    nl.set_up("br0")


def test_check_mac():
    assert check_mac("2:42:A:0:0:1") == "02:42:0a:00:00:01"
    with pytest.raises(errors.InvalidAddress):
        check_mac("02:42:0a:00:00")


# -- the sandbox over the fake --------------------------------------------------
def test_sandbox_attach_and_detach_on_fake(nl):
    nl.kernel.add_netns("/run/netns/c1")
    nl.ensure_bridge("br0")
    nl.ensure_address("br0", "10.1.0.1/24")
    nl.set_up("br0")
    nl.add_veth("pv1", "pc1")
    info = sandbox.attach("/run/netns/c1", "pc1", "eth0", ["10.1.0.2/24", "fd00::2/64"],
                          mac="02:42:0a:01:00:02", mtu=1400, gateway="10.1.0.1",
                          gateway_v6="fd00::1", routes=[{"dst": "10.50.0.0/16", "gw": "10.1.0.1"}],
                          netlink=nl)
    assert info.name == "eth0" and info.mac == "02:42:0a:01:00:02" and info.mtu == 1400
    inner = nl.for_netns("/run/netns/c1")
    assert inner.get_link("lo").state == "up" and inner.get_link("eth0").state == "up"
    assert set(inner.get_addresses("eth0")) == {"10.1.0.2/24", "fd00::2/64"}
    assert ("default", "10.1.0.1") in {(r.dst, r.gateway) for r in inner.list_routes(4)}
    assert ("default", "fd00::1") in {(r.dst, r.gateway) for r in inner.list_routes(6)}
    assert ("10.50.0.0/16", "10.1.0.1") in {(r.dst, r.gateway) for r in inner.list_routes(4)}
    with pytest.raises(errors.Conflict):
        nl.add_veth("pv2", "pc2") or sandbox.attach("/run/netns/c1", "pc2", "eth0", [], netlink=nl)
    assert sandbox.detach("/run/netns/c1", "eth0", netlink=nl) is True
    assert not nl.link_exists("pv1")
    assert sandbox.detach("/run/netns/c1", "eth0", netlink=nl) is False
    assert sandbox.detach("/run/netns/gone", "eth0", netlink=nl) is False
    assert sandbox.detach("", "eth0", netlink=nl) is False


def test_sandbox_attach_failure_leaves_nothing(nl):
    nl.kernel.add_netns("/run/netns/c1")
    nl.add_veth("pv1", "pc1")
    with pytest.raises(errors.KernelError, match="unreachable"):
        sandbox.attach("/run/netns/c1", "pc1", "eth0", ["10.1.0.2/24"], gateway="10.9.9.9",
                       netlink=nl)
    assert nl.kernel.summary("/run/netns/c1") == {}
    assert nl.kernel.summary() == {}
    with pytest.raises(errors.SandboxNotFound):
        sandbox.attach("/run/netns/missing", "pc1", "eth0", [], netlink=nl)
