"""What an overlay leaves behind, and who collects it (issue 11: "Cleanup", Build 6).

On the stateful fakes (two hosts, one memory store as the cluster store): the address a daemon
took from the cluster's block IPAM for dockerd but never recorded locally (SIGKILLed in between)
is reclaimed by the owning host's restart; the records of a host whose state dir was wiped (it
comes back under a new host ID at the same VTEP address) are collected.
"""
from __future__ import annotations

from pynet.cnm.controller import Controller
from pynet.cnm.model import IPData
from pynet.drivers import build_drivers
from pynet.drivers.overlay import OPT_CLUSTER_NETWORK, pool_name
from pynet.ipam import Ipam
from pynet.store.memory import MemoryStore
from pynet.sysctl import FakeSysctl
from tests.overlay.test_overlay_fakes import Host, two_hosts  # noqa: F401 -- the fixture

POOL = pool_name("10.77.0.0/24")


def _docker_network(h: Host, nid: str, name: str = "dock") -> str:
    """dockerd's order: RequestPool, the gateway, CreateNetwork; returns the pool ID."""
    pid, pool, _ = h.c.request_pool("LocalDefault", "10.77.0.0/24", requester="docker")
    gw = h.c.request_address(pid, "", {"RequestAddressType": "com.docker.network.gateway"}, holder="docker")
    h.c.create_network(nid, [IPData(pool=pool, gateway=gw, address_space="LocalDefault")],
                       driver="overlay", options={OPT_CLUSTER_NETWORK: name})
    return pid


def _restarted(h: Host) -> Controller:
    """The same host's daemon started again: its state dir (local store), its kernel, the
    cluster; restore() runs as at daemon start."""
    store = h.c.store
    c = Controller(store, Ipam(store, host_routes=lambda: []),
                   build_drivers(h.nl, FakeSysctl(), instance="t", cluster=h.cluster))
    c.restore()
    return c


def test_an_address_taken_for_docker_but_never_recorded_is_reclaimed_at_restart(two_hosts):
    a, b, _ = two_hosts
    pid = _docker_network(a, "1" * 64)
    kept = [a.c.request_address(pid, "", {}, holder="docker") for _ in range(2)]
    # the daemon dies between the block allocation and the local record: the cluster holds
    # an address no local record explains
    leaked = a.drv.pool_address(a.c, pid)
    assert leaked == "10.77.0.4"
    # another host's handle of the same network (its own dockerd's) is not ours to reclaim
    pid_b = _docker_network(b, "2" * 64)
    theirs = b.c.request_address(pid_b, "", {}, holder="docker")
    c2 = _restarted(a)
    held = sorted(h["cidr"] for h in c2.driver("overlay")._blocks().handles(POOL).values())
    assert held == sorted(kept + [theirs]), held
    assert c2.driver("overlay")._blocks().verify(POOL) == []
    # the address is free again, cluster-wide
    assert c2.request_address(pid, "", {}, holder="docker") == "10.77.0.4/24"
    # a second restart reclaims nothing that is recorded
    c3 = _restarted(a)
    assert len(c3.driver("overlay")._blocks().handles(POOL)) == 4
