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


def _start(h: Host):
    """The host's agent, programmed as ``pynet daemon`` does (pynet.root.start_cluster_agent)."""
    from pynet.cluster.agent import Agent

    h.agent = Agent(h.cluster, lambda view, dirty: h.drv.agent_pass(h.c.networks(), view, dirty),
                    reconcile_interval=0.3).start()
    return h.agent


def test_a_host_whose_state_dir_was_wiped_has_its_old_records_collected(two_hosts):
    """Host B (ID hb) has a container on the overlay and dies; it is reinstalled with an empty
    state dir, so it comes back as a new host (ID hb2) at the same VTEP address.  hb will never
    return: once its lease is gone, hb2's agent collects hb's endpoint, membership and
    addresses -- and nothing of host A's."""
    from tests.support.overlay import wait_until as wait

    a, b, cstore = two_hosts
    pid_a = _docker_network(a, "1" * 64)
    ip_a = a.c.request_address(pid_a, "", {}, holder="docker")
    ea = a.c.create_endpoint("1" * 64, "e1" * 32, address=ip_a)
    pid_b = _docker_network(b, "2" * 64)
    ip_b = b.c.request_address(pid_b, "", {}, holder="docker")
    b.c.create_endpoint("2" * 64, "e2" * 32, address=ip_b)
    _start(a), _start(b)
    root = a.cluster.root
    wait(lambda: any("/vteps/" in r.key for r in cstore.list(root + "vteps/dock/hb")), "hb's VTEP")
    b.agent.stop(revoke=True)           # host B dies (its lease gone); its state dir is wiped
    b.agent = None
    wiped = Host("hb2", "127.0.0.3", cstore)
    try:
        _start(wiped)

        def hb_left():
            keys = [r.key for r in cstore.list(root)]
            handles = wiped.drv._blocks().handles(POOL)
            return [k for k in keys if k.endswith("/hb") or "/endpoints/" in k and
                    cstore.get(k).value.get("host") == "hb"] + \
                   [h for h, v in handles.items() if v["host"] == "hb"]
        wait(lambda: hb_left() == [], "hb's records collected")
    finally:
        wiped.agent.stop()
    # A's endpoint, membership and address are untouched; the cluster network stays (A uses it)
    assert cstore.get(a.cluster.key("endpoints", "dock", ea.id)) is not None
    assert cstore.get(a.cluster.key("members", "dock", "ha")) is not None
    assert cstore.get(a.cluster.key("networks", "dock")) is not None
    assert sorted(h["cidr"] for h in a.drv._blocks().handles(POOL).values()) == [ip_a]
    assert [b_["host"] for b_ in a.drv._blocks().blocks(POOL)] == ["ha"]   # hb's empty block freed
    assert a.drv._blocks().verify(POOL) == []
