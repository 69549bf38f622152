"""reconcile_runtime: what a runtime no longer holds is forgotten, and only that."""
from __future__ import annotations


import pytest

from tests.support.fakes import FakeDriver, FakeFirewall

from pynet.cnm.controller import Controller  # noqa: E402
from pynet.cnm.model import IPData  # noqa: E402
from pynet.ipam import Ipam  # noqa: E402
from pynet.store.memory import MemoryStore  # noqa: E402

N1, N2, N3 = "a" * 64, "b" * 64, "c" * 64
E1, E2, E3 = "1" * 64, "2" * 64, "3" * 64
GW = {"RequestAddressType": "com.docker.network.gateway"}


@pytest.fixture
def store():
    return MemoryStore()


@pytest.fixture
def ctl(store):
    return Controller(store, Ipam(store, host_routes=lambda: []), {"bridge": FakeDriver()},
                      firewall=FakeFirewall())


def test_networks_and_endpoints_docker_forgot_are_removed(ctl):
    ctl.create_network(N1, [IPData("10.1.0.0/24", "10.1.0.1/24")])
    ctl.create_network(N2, [IPData("10.2.0.0/24", "10.2.0.1/24")])
    ctl.create_network(N3, [IPData("10.3.0.0/24", "10.3.0.1/24")], created_by="cni")
    ctl.create_endpoint(N1, E1, "10.1.0.2/24")
    ctl.create_endpoint(N1, E2, "10.1.0.3/24")
    ctl.create_endpoint(N1, E3, "10.1.0.4/24", container_id="pod1", ifname="eth0")  # a CNI attachment
    done = ctl.reconcile_runtime({N1: {E1}}, [], requester="docker")
    assert done["networks"] == [N2] and done["endpoints"] == [E2]
    assert {n.id for n in ctl.networks()} == {N1, N3}          # the CNI network is not Docker's
    assert {e.id for e in ctl.endpoints()} == {E1, E3}


def test_pools_and_addresses_docker_does_not_hold_are_released(ctl):
    pid, _, _ = ctl.request_pool("LocalDefault", "10.5.0.0/24", requester="docker")
    gw = ctl.request_address(pid, "", GW, holder="docker").split("/")[0]
    a = ctl.request_address(pid, holder="docker").split("/")[0]
    lost = ctl.request_address(pid, holder="docker").split("/")[0]
    leaked, _, _ = ctl.request_pool("LocalDefault", "10.6.0.0/24", requester="docker")
    other, _, _ = ctl.request_pool("LocalDefault", "10.7.0.0/24")   # not requested by Docker
    # Docker does not list an automatic gateway: the controller remembers it
    done = ctl.reconcile_runtime({}, [("10.5.0.0/24", "", {a})], requester="docker")
    assert done["pools"] == [leaked]
    assert done["addresses"] == [lost]
    assert sorted(ctl.ipam.allocated(pid)) == sorted([gw, a])
    assert {p["id"] for p in ctl.ipam.list_pools()} == {pid, other}


def test_nothing_released_when_everything_is_held(ctl):
    pid, _, _ = ctl.request_pool("LocalDefault", "10.5.0.0/24", requester="docker")
    ctl.request_address(pid, "", GW, holder="docker")
    a = ctl.request_address(pid, holder="docker").split("/")[0]
    before = ctl.store.list("")
    done = ctl.reconcile_runtime({}, [("10.5.0.0/24", "", {a})], requester="docker")
    assert not any(done.values())
    assert ctl.store.list("") == before
