"""The Controller on a MemoryStore with the fake driver and firewall
(tests/support/fakes.py): network and endpoint lifecycle, validation that
leaves nothing behind, host-port resolution, undo on driver failure."""
from __future__ import annotations


import pytest

from tests.support.fakes import FakeDriver, FakeFirewall

from pynet import errors  # noqa: E402
from pynet.cnm.controller import Controller, ephemeral_port_range  # noqa: E402
from pynet.cnm.model import IPData, PortMapping  # noqa: E402
from pynet.store.memory import MemoryStore  # noqa: E402

N1, N2 = "a" * 64, "b" * 64
E1, E2, E3 = "1" * 64, "2" * 64, "3" * 64


def v4(pool, gw="", **aux):
    return IPData(pool=pool, gateway=gw, aux_addresses=dict(aux))


@pytest.fixture
def store():
    return MemoryStore()


@pytest.fixture
def driver():
    return FakeDriver()


@pytest.fixture
def firewall():
    return FakeFirewall()


@pytest.fixture
def ctl(store, driver, firewall):
    from pynet.ipam import Ipam

    return Controller(store, Ipam(store, host_routes=lambda: []), {"bridge": driver},
                      firewall=firewall)


def keys(store):
    return [(r.key, r.value) for r in store.list("")]


@pytest.fixture
def net1(ctl):
    return ctl.create_network(N1, [v4("10.1.0.0/24", "10.1.0.1/24")], name="n1")


# ------------------------------------------------------------------ networks
def test_create_and_delete_network(ctl, store, driver, firewall):
    net = ctl.create_network(N1, [v4("10.1.0.0/24", "10.1.0.1/24")], name="n1",
                             options={"com.docker.network.driver.mtu": "1400"})
    assert net.driver_state["bridge"] == "br-" + N1[:12]
    assert ctl.network(N1).to_json() == net.to_json()
    assert ctl.network("n1").id == N1 and ctl.network("aaaa").id == N1
    assert "br-" + N1[:12] in driver.links
    assert firewall.synced
    ctl.delete_network(N1)
    assert keys(store) == [] and driver.links == set()
    ctl.delete_network(N1)  # unknown: already deleted


def test_network_exists_is_conflict(ctl, net1, store):
    before = keys(store)
    with pytest.raises(errors.NetworkExists):
        ctl.create_network(N1, [v4("10.9.0.0/24")])
    assert keys(store) == before


@pytest.mark.parametrize("ipv4,ipv6,exc", [
    ([v4("10.1.0.0/33")], [], errors.InvalidSubnet),
    ([v4("nonsense")], [], errors.InvalidSubnet),
    ([v4("fd00::/64")], [], errors.InvalidSubnet),
    ([], [v4("10.2.0.0/24")], errors.InvalidSubnet),
    ([v4("10.2.0.0/24", "10.3.0.1/24")], [], errors.InvalidAddress),
    ([v4("10.2.0.0/24", "10.2.0.1")], [], errors.InvalidAddress),
    ([v4("10.2.0.0/24", "10.2.0.1/24", h="10.4.0.1")], [], errors.InvalidAddress),
    ([v4("10.2.0.0/24", "10.2.0.1/24", h="bogus")], [], errors.InvalidAddress),
])
def test_invalid_subnets_leave_nothing(ctl, store, driver, ipv4, ipv6, exc):
    with pytest.raises(exc):
        ctl.create_network(N2, ipv4, ipv6)
    assert keys(store) == [] and driver.links == set() and driver.calls == []


def test_overlap_is_conflict_and_leaves_nothing(ctl, net1, store, driver):
    before, links = keys(store), set(driver.links)
    with pytest.raises(errors.PoolOverlap, match="overlaps"):
        ctl.create_network(N2, [v4("10.1.0.0/16", "10.1.0.1/16")])
    assert keys(store) == before and driver.links == links


def test_driver_validation_error_leaves_nothing(ctl, store, driver):
    with pytest.raises(errors.InvalidOption, match="MTU"):
        ctl.create_network(N2, [v4("10.2.0.0/24")], options={"com.docker.network.driver.mtu": "x"})
    with pytest.raises(errors.InvalidOption, match="unknown driver"):
        ctl.create_network(N2, [v4("10.2.0.0/24")], driver="macvlan")
    with pytest.raises(errors.InvalidParameter):
        ctl.create_network("", [v4("10.2.0.0/24")])
    assert keys(store) == [] and driver.links == set()


def test_undo_when_the_firewall_fails_after_create_network(ctl, store, driver, firewall):
    def boom(networks, endpoints, **kw):
        raise errors.KernelError("iptables-restore failed")
    firewall.sync = boom
    with pytest.raises(errors.KernelError):
        ctl.create_network(N2, [v4("10.2.0.0/24")])
    assert keys(store) == [] and driver.links == set()


def test_undo_when_the_driver_fails(ctl, store, driver):
    driver.fail_next["CreateNetwork"] = errors.KernelError("no bridge for you")
    with pytest.raises(errors.KernelError):
        ctl.create_network(N2, [v4("10.2.0.0/24")])
    assert keys(store) == [] and driver.links == set()


def test_delete_network_with_endpoints_is_in_use_unless_forced(ctl, net1, store, driver):
    ctl.create_endpoint(N1, E1, address="10.1.0.2/24")
    with pytest.raises(errors.InUse):
        ctl.delete_network(N1)
    assert ctl.endpoints(N1)
    ctl.delete_network(N1, force_endpoints=True)
    assert keys(store) == [] and driver.links == set()


# ----------------------------------------------------------------- endpoints
def test_endpoint_lifecycle(ctl, net1, store, driver):
    ep = ctl.create_endpoint(N1, E1, address="10.1.0.2/24")
    assert ep.mac == "02:42:0a:01:00:02"           # the driver chose one
    assert ctl.endpoint(N1, E1).mac == ep.mac
    info = ctl.join(N1, E1, "/var/run/docker/netns/x")
    assert info.gateway == "10.1.0.1" and info.src_name
    assert ctl.endpoint(N1, E1).sandbox_key == "/var/run/docker/netns/x"
    assert ctl.endpoint_oper_info(N1, E1)["veth"] == "veth" + E1[:7]
    ctl.leave(N1, E1)
    assert ctl.endpoint(N1, E1).sandbox_key == ""
    ctl.delete_endpoint(N1, E1)
    assert ctl.endpoints() == [] and driver.links == {"br-" + N1[:12]}
    ctl.delete_endpoint(N1, E1)  # again: already gone
    ctl.leave(N1, E1)


def test_mac_is_normalised_and_validated(ctl, net1):
    assert ctl.create_endpoint(N1, E1, address="10.1.0.2/24", mac="2-42-A-1-0-2").mac == "02:42:0a:01:00:02"
    with pytest.raises(errors.InvalidAddress):
        ctl.create_endpoint(N1, E2, address="10.1.0.3/24", mac="02:42:0a:01:00")


@pytest.mark.parametrize("address,address_v6", [
    ("10.9.0.2/24", ""),            # outside the subnet
    ("10.1.0.2", ""),               # not CIDR
    ("fd00::2/64", ""),             # wrong family
    ("", "fd00::2/64"),             # network has no v6 subnets -> only family is checked
])
def test_endpoint_address_validation(ctl, net1, store, driver, address, address_v6):
    before, links = keys(store), set(driver.links)
    if address_v6:
        ctl.create_endpoint(N1, E1, address_v6=address_v6)  # allowed: no v6 data to check against
        return
    with pytest.raises(errors.InvalidAddress):
        ctl.create_endpoint(N1, E1, address=address)
    assert keys(store) == before and driver.links == links


def test_endpoint_on_unknown_network_and_duplicates(ctl, net1, store):
    with pytest.raises(errors.NetworkNotFound):
        ctl.create_endpoint("f" * 64, E1, address="10.1.0.2/24")
    ctl.create_endpoint(N1, E1, address="10.1.0.2/24")
    with pytest.raises(errors.EndpointExists):
        ctl.create_endpoint(N1, E1, address="10.1.0.3/24")
    with pytest.raises(errors.EndpointNotFound):
        ctl.join(N1, E2, "/x")


def test_undo_on_driver_failure_in_create_endpoint(ctl, net1, store, driver):
    before, links = keys(store), set(driver.links)
    driver.fail_next["CreateEndpoint"] = errors.KernelError("veth refused")
    with pytest.raises(errors.KernelError):
        ctl.create_endpoint(N1, E1, address="10.1.0.2/24")
    assert keys(store) == before and driver.links == links


def test_undo_when_the_store_fails_after_create_endpoint(ctl, net1, store, driver):
    before, links = keys(store), set(driver.links)
    real_commit = store._commit

    def failing_commit(compares, ops, want=()):  # the endpoint record's commit fails
        if any(op[0] == "put" and "endpoints/" in op[1] for op in ops):
            raise errors.StoreUnavailable("the store went away")
        return real_commit(compares, ops, want)
    store._commit = failing_commit
    with pytest.raises(errors.StoreUnavailable):
        ctl.create_endpoint(N1, E1, address="10.1.0.2/24")
    store._commit = real_commit
    assert keys(store) == before and driver.links == links


def test_join_failure_records_nothing(ctl, net1, store, driver):
    ctl.create_endpoint(N1, E1, address="10.1.0.2/24")
    before = keys(store)
    driver.fail_next["Join"] = errors.KernelError("no")
    with pytest.raises(errors.KernelError):
        ctl.join(N1, E1, "/x")
    assert keys(store) == before


# --------------------------------------------------------------------- ports
def program(ctl, eid, *pms):
    return ctl.program_external_connectivity(N1, eid, ports=list(pms)).ports


@pytest.fixture
def two_eps(ctl, net1):
    ctl.create_endpoint(N1, E1, address="10.1.0.2/24")
    ctl.create_endpoint(N1, E2, address="10.1.0.3/24")
    ctl.create_endpoint(N1, E3, address="10.1.0.4/24")
    return ctl


def test_explicit_port(two_eps, firewall):
    [pm] = program(two_eps, E1, PortMapping("tcp", 80, 18088))
    assert (pm.host_port, pm.container_port, pm.proto) == (18088, 80, "tcp")
    assert ("tcp", 18088, 80) in firewall.published
    assert two_eps.endpoint(N1, E1).external


def test_port_zero_takes_the_ephemeral_range(two_eps):
    lo, hi = ephemeral_port_range()
    [a] = program(two_eps, E1, PortMapping("tcp", 80, 0))
    [b] = program(two_eps, E2, PortMapping("tcp", 80, 0))
    assert a.host_port == lo and b.host_port == lo + 1


def test_range_takes_the_first_free(two_eps):
    [a] = program(two_eps, E1, PortMapping("tcp", 81, 8000, 8002))
    [b] = program(two_eps, E2, PortMapping("tcp", 81, 8000, 8002))
    assert (a.host_port, b.host_port) == (8000, 8001)
    [c] = program(two_eps, E3, PortMapping("udp", 81, 8000, 8002))  # other protocol: free
    assert c.host_port == 8000


def test_held_port_is_port_in_use_and_changes_nothing(two_eps, store):
    program(two_eps, E1, PortMapping("tcp", 80, 18088))
    before = keys(store)
    with pytest.raises(errors.PortInUse, match="18088"):
        program(two_eps, E2, PortMapping("tcp", 80, 18088))
    assert keys(store) == before
    program(two_eps, E2, PortMapping("udp", 80, 18088))   # udp is a different port


def test_explicit_port_reads_its_own_reservations_only(two_eps, monkeypatch):
    """-p 8080:80 reads the reservations of host port 8080, not every port the host holds;
    a reservation of that port made between the read and the commit still conflicts (its
    key is in the range read), so the retry refuses it."""
    program(two_eps, E1, PortMapping("tcp", 80, 18090))
    read = []
    real = Controller._port_records
    raced = {"done": False}

    def spy(t, proto, port=None):
        read.append((proto, port))
        out = real(t, proto, port)
        if port == 18091 and not raced["done"]:
            raced["done"] = True   # another process publishes 18091 after this read
            two_eps.store.put("ports/tcp/18091/*", {"endpoint": f"{N1}/{E3}"})
        return out
    monkeypatch.setattr(Controller, "_port_records", staticmethod(spy))
    with pytest.raises(errors.PortInUse, match="18091"):
        program(two_eps, E2, PortMapping("tcp", 80, 18091))
    assert len(read) >= 2 and all(port == 18091 for _, port in read)  # read again on the retry
    [pm] = program(two_eps, E2, PortMapping("tcp", 80, 18092))
    assert pm.host_port == 18092


def test_exhausted_range_is_port_in_use(two_eps):
    program(two_eps, E1, PortMapping("tcp", 81, 8000, 8000))
    with pytest.raises(errors.PortInUse, match="8000"):
        program(two_eps, E2, PortMapping("tcp", 81, 8000, 8000))
    program(two_eps, E2, PortMapping("tcp", 81, 8000, 8001))
    with pytest.raises(errors.PortInUse, match="no free host port"):
        program(two_eps, E3, PortMapping("tcp", 81, 8000, 8001))


def test_host_ip_specific_bindings(two_eps):
    program(two_eps, E1, PortMapping("udp", 81, 18094, host_ip="127.0.0.1"))
    program(two_eps, E2, PortMapping("udp", 81, 18094, host_ip="127.0.0.2"))
    with pytest.raises(errors.PortInUse):     # all addresses includes 127.0.0.1
        program(two_eps, E3, PortMapping("udp", 81, 18094))
    with pytest.raises(errors.InvalidParameter):
        program(two_eps, E3, PortMapping("udp", 81, 18095, host_ip="not-an-ip"))


def test_revoke_frees_the_port(two_eps):
    program(two_eps, E1, PortMapping("tcp", 80, 18088))
    two_eps.revoke_external_connectivity(N1, E1)
    assert two_eps.endpoint(N1, E1).ports == [] and not two_eps.endpoint(N1, E1).external
    program(two_eps, E2, PortMapping("tcp", 80, 18088))


def test_firewall_failure_rolls_the_ports_back(two_eps, firewall, store):
    before = keys(store)
    real = firewall.sync
    state = {"n": 0}

    def flaky(networks, endpoints, **kw):
        state["n"] += 1
        if state["n"] == 1:
            raise errors.KernelError("iptables-restore: line 3 failed")
        real(networks, endpoints, **kw)
    firewall.sync = flaky
    with pytest.raises(errors.KernelError):
        program(two_eps, E1, PortMapping("tcp", 80, 18088))
    assert keys(store) == before
    assert not two_eps.endpoint(N1, E1).external


def test_requested_but_unprogrammed_ports_do_not_block(ctl, net1):
    # a container on two networks: both endpoints are created with its port
    # map, only the first is programmed
    pm = PortMapping("tcp", 80, 18088)
    ctl.create_endpoint(N1, E1, address="10.1.0.2/24", ports=[pm])
    ctl.create_endpoint(N1, E2, address="10.1.0.3/24", ports=[pm])
    program(ctl, E1, pm)


# ----------------------------------------------------------------- restore
def test_restore_recreates_the_kernel_side(ctl, net1, driver, firewall):
    ctl.create_endpoint(N1, E1, address="10.1.0.2/24")
    driver.links.clear()
    firewall.synced.clear()
    ctl.restore()
    assert driver.links == {"br-" + N1[:12], "veth" + E1[:7]}
    assert firewall.synced
