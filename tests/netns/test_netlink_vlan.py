"""Netlink conformance of add_vlan / add_dummy (and macvlan children dying with
their parent): the same assertions against the real PyrouteNetlink (inside a
throwaway namespace) and the FakeNetlink.

The real-kernel cases of dummy links and 802.1q VLANs are ``kernel_lab`` tests:
they run inside the kernel lab VM on Debian's kernel (tests/vm), since this
machine's kernel has neither CONFIG_DUMMY nor CONFIG_VLAN_8021Q."""
import os

import pytest

from pynet import errors
from pynet.netlink import LinkExists, LinkNotFound, check_vlan_id
from pynet.netlink.fake import FakeKernel, FakeNetlink

pytestmark = [pytest.mark.netns]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
# the real kernel's case of a link type this machine's kernel may lack: in the VM
ON_DEBIAN_KERNEL = pytest.mark.parametrize(
    "env", ["fake", pytest.param("real", marks=[root_only, pytest.mark.kernel_lab])], indirect=True)


@pytest.fixture(params=["fake", pytest.param("real", marks=root_only)])
def env(request):
    if request.param == "fake":
        k = FakeKernel()
        return FakeNetlink(k), lambda: k.add_netns("/fake/ns0")
    host = request.getfixturevalue("host_ns")
    make = request.getfixturevalue("make_netns")
    return host.nl, lambda: make("c")


@ON_DEBIAN_KERNEL
def test_dummy(env):
    nl, _ = env
    nl.add_dummy("td0", mtu=1400, alias="pynet:conf:n1")
    d = nl.get_link("td0")
    assert (d.kind, d.mtu, d.alias, d.state) == ("dummy", 1400, "pynet:conf:n1", "down")
    with pytest.raises(LinkExists):
        nl.add_dummy("td0")
    assert nl.delete_link("td0") and not nl.link_exists("td0")


@ON_DEBIAN_KERNEL
def test_vlan_on_parent(env):
    nl, _ = env
    nl.add_veth("td0", "td0p")
    nl.add_vlan("td0.10", "td0", 10, alias="pynet:conf:n2")
    v = nl.get_link("td0.10")
    assert (v.kind, v.alias, v.state) == ("vlan", "pynet:conf:n2", "down")
    assert v.mac == nl.get_link("td0").mac            # a VLAN takes its parent's MAC
    with pytest.raises(LinkExists):
        nl.add_vlan("td0.10", "td0", 11)               # name taken
    with pytest.raises(LinkExists):
        nl.add_vlan("tdx", "td0", 10)                  # VLAN ID taken on this parent
    with pytest.raises(LinkNotFound):
        nl.add_vlan("nope.10", "nope", 10)
    for bad in (0, 4095, "x"):
        with pytest.raises(errors.InvalidParameter):
            nl.add_vlan("td0.99", "td0", bad)
    assert not nl.link_exists("td0.99")
    # children (vlan, macvlan) go with their parent
    nl.add_macvlan("tm0", "td0.10", mode="bridge")
    nl.delete_link("td0")
    assert not nl.link_exists("td0.10") and not nl.link_exists("tm0")


def test_macvlan_moved_away_dies_with_parent(env):
    nl, make = env
    other = make()
    nl.add_veth("td1", "td1p")
    nl.add_macvlan("tm1", "td1", mode="private", mac="02:42:0a:00:00:09")
    nl.move_to_netns("tm1", other, new_name="eth0")
    inner = nl.for_netns(other)
    try:
        assert inner.get_link("eth0").mac == "02:42:0a:00:00:09"
        nl.delete_link("td1")
        assert not inner.link_exists("eth0")
    finally:
        inner.close()


@pytest.mark.parametrize("vid,ok", [(1, True), ("4094", True), (0, False), (4095, False), ("-1", False)])
def test_check_vlan_id(vid, ok):
    if ok:
        assert check_vlan_id(vid) == int(vid)
    else:
        with pytest.raises(errors.InvalidParameter, match="VLAN ID"):
            check_vlan_id(vid)
