"""The bridge driver on the real kernel: the "host" is a throwaway namespace,
each "container" another; the sandbox moves the container ends in.  Every
packet stays inside namespaces created here."""
import os
import secrets

import pytest

from pynet.cnm import sandbox
from pynet.cnm.model import Endpoint, IPData, Network
from pynet.drivers.bridge import BridgeDriver, alias_for
from tests.support.fakes import create_endpoint

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def hexid() -> str:
    return secrets.token_hex(32)


@pytest.fixture
def drv(host_ns):
    return BridgeDriver(host_ns.nl, host_ns.sysctl, instance="ptest")


def make_net(drv, subnet="10.61.0", mtu=None, v6=False, internal=False):
    opts = {"com.docker.network.driver.mtu": str(mtu)} if mtu else {}
    net = Network(id=hexid(), ipv4=[IPData(pool=f"{subnet}.0/24", gateway=f"{subnet}.1/24")],
                  ipv6=[IPData(pool="fd00:61::/64", gateway="fd00:61::1/64")] if v6 else [],
                  enable_ipv6=v6, internal=internal, options=opts)
    drv.validate_network(net, [])
    drv.create_network(net)
    return net


def container(drv, host_ns, make_netns, net, ip, ip6=""):
    """create_endpoint + join + what dockerd does after Join."""
    ep = Endpoint(id=hexid(), network_id=net.id, address=ip, address_v6=ip6)
    create_endpoint(drv, net, ep)
    info = drv.join(net, ep, "")
    ns = make_netns("c")
    sandbox.attach(ns, info.src_name, info.dst_prefix + "0", [a for a in (ip, ip6) if a],
                   mac=ep.mac, mtu=net.driver_state.get("mtu"), gateway=info.gateway,
                   gateway_v6=info.gateway_v6, netlink=host_ns.nl)
    ep.sandbox_key = ns
    return ep, ns


def test_containers_reach_gateway_and_each_other(drv, host_ns, make_netns, ping):
    net = make_net(drv)
    a, ns_a = container(drv, host_ns, make_netns, net, "10.61.0.2/24")
    b, ns_b = container(drv, host_ns, make_netns, net, "10.61.0.3/24")
    assert ping(ns_a, "10.61.0.1")
    assert ping(ns_a, "10.61.0.3")
    assert ping(ns_b, "10.61.0.2")
    assert not ping(ns_a, "10.61.0.99", timeout=0.3)            # nobody there
    eth0 = sandbox.inspect(ns_a, "eth0")
    assert eth0.mac == "02:42:0a:3d:00:02" and "10.61.0.2/24" in eth0.addresses
    assert host_ns.sysctl.get("net.ipv4.ip_forward") == "1"
    # teardown in CNM order leaves the host namespace empty
    for ep, ns in ((a, ns_a), (b, ns_b)):
        drv.leave(net, ep)
        sandbox.detach(ns, "eth0", netlink=host_ns.nl)
        drv.delete_endpoint(net, ep)
    drv.delete_network(net)
    drv.delete_network(net)
    assert [l.name for l in host_ns.nl.list_links()] == ["lo"]


def test_mtu_1400_is_honoured(drv, host_ns, make_netns, ping):
    net = make_net(drv, "10.62.0", mtu=1400)
    ep, ns = container(drv, host_ns, make_netns, net, "10.62.0.2/24")
    br = host_ns.nl.get_link(net.driver_state["bridge"])
    assert br.mtu == 1400 and host_ns.nl.get_link(ep.driver_state["host_veth"]).mtu == 1400
    assert sandbox.inspect(ns, "eth0").mtu == 1400
    assert ping(ns, "10.62.0.1", size=1400 - 28, df=True)       # fits exactly
    assert not ping(ns, "10.62.0.1", size=1400 - 27, df=True)   # one byte too many


def test_ipv6_gateway(drv, host_ns, make_netns, ping):
    net = make_net(drv, "10.63.0", v6=True)
    ep, ns = container(drv, host_ns, make_netns, net, "10.63.0.2/24", "fd00:61::2/64")
    assert ping(ns, "fd00:61::1")
    with host_ns.nl.for_netns(ns) as inner:
        routes = {(r.dst, r.gateway) for r in inner.list_routes(6)}
    assert ("default", "fd00:61::1") in routes


def test_restore_after_bridge_deleted(drv, host_ns, make_netns, ping):
    net = make_net(drv, "10.64.0", mtu=1400)
    a, ns_a = container(drv, host_ns, make_netns, net, "10.64.0.2/24")
    b, ns_b = container(drv, host_ns, make_netns, net, "10.64.0.3/24")
    unjoined = Endpoint(id=hexid(), network_id=net.id, address="10.64.0.4/24")
    create_endpoint(drv, net, unjoined)
    bridge = net.driver_state["bridge"]
    host_ns.nl.delete_link(bridge)                                # `ip link del`
    host_ns.nl.delete_link(unjoined.driver_state["host_veth"])
    assert not ping(ns_a, "10.64.0.3", timeout=0.3)
    drv.restore([net], [a, b, unjoined])
    br = host_ns.nl.get_link(bridge)
    assert br.alias == alias_for("ptest", net.id) and br.mtu == 1400
    assert "10.64.0.1/24" in br.addresses
    for ep in (a, b, unjoined):
        assert host_ns.nl.get_link(ep.driver_state["host_veth"]).master == bridge
    assert ping(ns_a, "10.64.0.3")
    assert ping(ns_b, "10.64.0.1")


def test_restore_removes_own_orphans_only(drv, host_ns):
    net = make_net(drv, "10.65.0")
    nl = host_ns.nl
    nl.ensure_bridge("pn-orphan0", alias=alias_for("ptest", hexid()))
    nl.add_veth("pvorphan0", "pcorphan0", alias=alias_for("ptest", hexid()))
    nl.ensure_bridge("pn-other0", alias=alias_for("ptest2", hexid()))
    nl.add_veth("pvother0", "pcother0", alias=alias_for("ptest2", hexid()))
    drv.restore([net], [])
    names = {l.name for l in nl.list_links()}
    assert "pn-orphan0" not in names and "pvorphan0" not in names and "pcorphan0" not in names
    assert {"pn-other0", "pvother0", "pcother0", net.driver_state["bridge"]} <= names


def test_internal_network(drv, host_ns, make_netns, ping):
    net = make_net(drv, "10.66.0", internal=True)
    ep, ns = container(drv, host_ns, make_netns, net, "10.66.0.2/24")
    assert ping(ns, "10.66.0.1")           # the gateway address exists, like Docker's
    with host_ns.nl.for_netns(ns) as inner:
        assert not any(r.dst == "default" for r in inner.list_routes(4))
