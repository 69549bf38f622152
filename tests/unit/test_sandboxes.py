"""SandboxManager (host / none / container / netns modes) against the fake kernel."""
import pytest

from pynet import errors
from pynet.cnm.controller import Controller
from pynet.cnm.model import IPData, PortMapping
from pynet.cnm.sandboxes import ERR_NONE, ERR_PUBLISH, ERR_SHARED, SandboxManager
from pynet.drivers.bridge import BridgeDriver
from pynet.drivers.macvlan import MacvlanDriver
from pynet.ipam import GATEWAY_TYPE, LOCAL_DEFAULT, REQUEST_ADDRESS_TYPE, Ipam
from pynet.netlink.fake import FakeKernel, FakeNetlink
from pynet.store.memory import MemoryStore
from pynet.sysctl import FakeSysctl

NID = "36794d95504b02056972fff2493623c9b88c6f6b42395106ef6fe1ce6fd0bf62"


@pytest.fixture
def kernel():
    return FakeKernel()


@pytest.fixture
def ctl(kernel):
    nl = FakeNetlink(kernel)
    store = MemoryStore()
    return Controller(store, Ipam(store, host_routes=lambda: []),
                      {"bridge": BridgeDriver(nl, FakeSysctl(), instance="t1"),
                       "macvlan": MacvlanDriver(nl, FakeSysctl(), instance="t1")})


@pytest.fixture
def mgr(ctl, kernel):
    return SandboxManager(ctl, FakeNetlink(kernel), instance="t1", host_netns="/fake/host",
                          create_netns=lambda name: kernel.add_netns(f"/fake/{name}"),
                          delete_netns=kernel.delete_netns)


@pytest.fixture
def net(ctl):
    pool_id, cidr, _ = ctl.request_pool(LOCAL_DEFAULT, "10.250.0.0/24")
    gw = ctl.request_address(pool_id, "", {REQUEST_ADDRESS_TYPE: GATEWAY_TYPE})
    return ctl.create_network(NID, [IPData(pool=cidr, gateway=gw, pool_id=pool_id)],
                              name="front", created_by="cli")


def test_none_has_only_loopback(mgr, kernel):
    sb = mgr.create("none")
    assert sb.mode == "none" and sb.key.startswith("/fake/t1-")
    assert list(kernel.ns(sb.key).links) == ["lo"] and kernel.ns(sb.key).links["lo"].up
    with pytest.raises(errors.InvalidParameter, match="private \\(none\\) mode"):
        mgr.connect(sb.id, "front")
    mgr.rm(sb.id)
    assert sb.key not in kernel.namespaces and mgr.ls() == []


def test_network_mode_connects_and_rm_cleans_up(mgr, ctl, kernel, net):
    sb = mgr.create("front")
    assert sb.mode == "netns" and len(sb.endpoints) == 1
    ep = ctl.endpoints(net.id)[0]
    assert ep.ifname == "eth0" and ep.container_id == sb.id and ep.address == "10.250.0.2/24"
    eth0 = kernel.ns(sb.key).links["eth0"]
    assert eth0.up and str(eth0.addresses[0]) == "10.250.0.2/24"
    assert [r.gateway for r in kernel.ns(sb.key).routes] == ["10.250.0.1"]
    mgr.rm(sb.id[:8])
    assert ctl.endpoints() == [] and sb.key not in kernel.namespaces
    assert list(ctl.ipam.allocated(net.ipv4[0].pool_id)) == ["10.250.0.1"]   # released


def test_host_and_container_modes(mgr, net):
    host = mgr.create("host")
    assert host.mode == "host" and host.key == "/fake/host"
    web = mgr.create("front")
    side = mgr.create(f"container:{web.id[:10]}")
    assert side.mode == "container" and side.key == web.key and side.shares == web.id
    chained = mgr.create(f"container:{side.id}")
    assert chained.shares == web.id                    # joins the namespace's owner
    for sb in (host, side):
        with pytest.raises(errors.InvalidParameter, match="cannot be connected to any other"):
            mgr.connect(sb.id, "front")
    assert ERR_SHARED.startswith("container sharing network namespace")
    with pytest.raises(errors.InvalidParameter, match="port publishing"):
        mgr.create(f"container:{web.id}", publish=[PortMapping("tcp", 80, 8080)])
    assert ERR_PUBLISH.startswith("conflicting options")


def test_rm_refused_while_shared_unless_forced(mgr, kernel, net):
    web = mgr.create("front")
    a, b = mgr.create(f"container:{web.id}"), mgr.create(f"container:{web.id}")
    with pytest.raises(errors.InUse) as e:
        mgr.rm(web.id)
    assert a.id[:12] in str(e.value) and b.id[:12] in str(e.value)
    assert len(mgr.ls()) == 3 and web.key in kernel.namespaces   # nothing changed
    mgr.rm(a.id)                                      # a sharer goes freely
    removed = mgr.rm(web.id, force=True)
    assert set(removed) == {web.id, b.id} and mgr.ls() == []
    assert web.key not in kernel.namespaces


def test_bad_input_changes_nothing(mgr, ctl, kernel):
    before = set(kernel.namespaces)
    with pytest.raises(errors.NetworkNotFound):
        mgr.create("nosuchnet")
    with pytest.raises(errors.SandboxNotFound):
        mgr.create("container:feedface")
    with pytest.raises(errors.SandboxNotFound):
        mgr.rm("feedface")
    assert set(kernel.namespaces) == before and mgr.ls() == []


def test_docker_network_without_pynet_pool_is_refused(mgr, ctl, kernel):
    ctl.create_network("ab" * 32, [IPData(pool="10.251.0.0/24", gateway="10.251.0.1/24")])
    before = set(kernel.namespaces)
    with pytest.raises(errors.InvalidParameter, match="no pynet-owned address pool"):
        mgr.create("abab")
    assert set(kernel.namespaces) == before and mgr.ls() == [] and ctl.endpoints() == []


def test_docker_network_on_pynet_ipam_allocates_from_that_pool(mgr, ctl):
    pool_id, cidr, _ = ctl.request_pool(LOCAL_DEFAULT, "10.252.0.0/24")
    gw = ctl.request_address(pool_id, "", {REQUEST_ADDRESS_TYPE: GATEWAY_TYPE})
    ctl.create_network("cd" * 32, [IPData(pool=cidr, gateway=gw)])     # Docker: no pool_id
    sb = mgr.create("cdcd")
    assert ctl.endpoints()[0].address == "10.252.0.2/24"
    mgr.rm(sb.id)


def test_failed_attach_undoes_everything(mgr, ctl, kernel, net):
    kernel.fail("move_to_netns")
    before = set(kernel.namespaces)
    with pytest.raises(errors.KernelError):
        mgr.create("front")
    assert set(kernel.namespaces) == before and mgr.ls() == [] and ctl.endpoints() == []
    assert list(ctl.ipam.allocated(net.ipv4[0].pool_id)) == ["10.250.0.1"]


def test_publish_on_netns_mode(mgr, ctl, net):
    sb = mgr.create("front", publish=[PortMapping("tcp", 80, 18080)])
    ep = ctl.endpoints(net.id)[0]
    assert ep.external and ep.ports[0].host_port == 18080
    mgr.rm(sb.id)
    assert ctl.endpoints() == []


def test_second_network_gets_eth1_and_no_second_default_route(mgr, ctl, kernel, net):
    pool_id, cidr, _ = ctl.request_pool(LOCAL_DEFAULT, "10.253.0.0/24")
    gw = ctl.request_address(pool_id, "", {REQUEST_ADDRESS_TYPE: GATEWAY_TYPE})
    ctl.create_network("ef" * 32, [IPData(pool=cidr, gateway=gw, pool_id=pool_id)],
                       name="back", created_by="cli")
    sb = mgr.create("front")
    mgr.connect(sb.id, "back")
    assert set(kernel.ns(sb.key).links) == {"lo", "eth0", "eth1"}
    with pytest.raises(errors.Conflict, match="already connected"):
        mgr.connect(sb.id, "back")
    mgr.rm(sb.id)
    assert ctl.endpoints() == []


def test_error_messages_are_dockers():
    assert ERR_NONE.startswith("container cannot be connected to multiple networks")
