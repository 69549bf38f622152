"""The overlay driver and the host agent's control loop on the stateful fakes:
two hosts (each its own FakeKernel and local store), one shared memory store
as the cluster store.  The same flows run on real namespaces and a real etcd
in test_overlay_hosts.py; here they are fast and every edge is reachable."""
from __future__ import annotations

import pytest

from pynet import errors
from pynet.cluster import FLOOD_MAC, Cluster, NoClusterStore
from pynet.cluster.agent import Agent
from pynet.cnm.controller import Controller
from pynet.cnm.model import IPData
from pynet.drivers import build_drivers
from pynet.drivers.overlay import OPT_VNI
from pynet.ipam import Ipam
from pynet.netlink.fake import FakeKernel, FakeNetlink
from pynet.store.memory import MemoryStore
from pynet.sysctl import FakeSysctl
from tests.support.overlay import wait_until as wait

NID = "a" * 64
SUBNET = [IPData(pool="10.77.0.0/24", gateway="10.77.0.1/24")]


class Host:
    def __init__(self, name: str, address: str, cluster_store, ttl: int = 3):
        self.nl = FakeNetlink(FakeKernel())
        self.nl.add_dummy("eth0", mtu=1500)
        self.nl.ensure_address("eth0", f"{address}/8")
        self.nl.set_up("eth0")
        self.cluster = Cluster(lambda: cluster_store, host=name, address=address, namespace="t",
                               lease_ttl=ttl)
        store = MemoryStore()
        self.c = Controller(store, Ipam(store, host_routes=lambda: []),
                            build_drivers(self.nl, FakeSysctl(), instance="t", cluster=self.cluster))
        self.drv = self.c.driver("overlay")
        self.agent = None

    def start(self) -> Agent:
        def program(view, dirty):
            for net in self.c.networks():
                if net.driver == "overlay" and (dirty is None or self.drv.cluster_id(net) in dirty):
                    self.drv.program_peers(net, view, from_kernel=dirty is None)
        self.agent = Agent(self.cluster, program, reconcile_interval=0.5).start()
        return self.agent

    def fdb(self, net) -> list:
        return self.nl.fdb_list(net.driver_state["vxlan"])

    def neigh(self, net) -> list:
        return self.nl.neigh_list(net.driver_state["vxlan"])


@pytest.fixture
def two_hosts():
    cstore = MemoryStore()
    a, b = Host("ha", "127.0.0.2", cstore), Host("hb", "127.0.0.3", cstore)
    yield a, b, cstore
    for h in (a, b):
        if h.agent is not None:
            h.agent.stop()


def test_without_a_cluster_store_an_overlay_is_refused_and_nothing_is_made():
    nl = FakeNetlink(FakeKernel())
    store = MemoryStore()
    c = Controller(store, Ipam(store, host_routes=lambda: []), build_drivers(nl, FakeSysctl(), instance="t"))
    with pytest.raises(NoClusterStore) as e:
        c.create_network(NID, SUBNET, driver="overlay", name="ov")
    assert "needs a cluster store" in str(e.value) and e.value.cni_code == 7 and e.value.http_status == 400
    assert c.networks() == [] and FakeKernel().summary() == {} and nl.kernel.summary() == {}


def test_vni_allocated_cluster_wide_and_devices_per_host(two_hosts):
    a, b, cstore = two_hosts
    na = a.c.create_network(NID, SUBNET, driver="overlay", name="ov")
    nb = b.c.create_network(NID, SUBNET, driver="overlay", name="ov")
    st = na.driver_state
    assert st["vni"] == nb.driver_state["vni"] == 4096 and na.options[OPT_VNI] == "4096"
    assert st["mtu"] == 1450 and st["dev"] == "eth0" and st["local"] == "127.0.0.2"
    info = a.nl.vxlan_info(st["vxlan"])
    assert (info["vni"], info["port"], info["learning"], info["proxy"]) == (4096, 4789, False, True)
    assert a.nl.get_link(st["vxlan"]).master == st["bridge"]
    # a second network gets the next VNI; an overlapping subnet is refused
    other = b.c.create_network("b" * 64, [IPData(pool="10.78.0.0/24", gateway="10.78.0.1/24")],
                               driver="overlay", name="ov2")
    assert other.driver_state["vni"] == 4097
    with pytest.raises(errors.PoolOverlap):
        a.c.create_network("c" * 64, [IPData(pool="10.78.0.0/16", gateway="10.78.0.1/16")],
                           driver="overlay", name="ov3")
    # a VNI already taken, and settings that differ from the cluster's
    with pytest.raises(errors.Conflict, match="VNI 4096 is already taken"):
        a.c.create_network("d" * 64, [IPData(pool="10.79.0.0/24", gateway="10.79.0.1/24")],
                           driver="overlay", name="ov4", options={OPT_VNI: "4096"})
    with pytest.raises(errors.Conflict, match="other settings: subnets"):
        b.drv.allocate_network(type(na)(id=NID, driver="overlay", name="ov",
                                        ipv4=[IPData(pool="10.66.0.0/24")]))
    assert a.c.networks() and {n.name for n in a.c.networks()} == {"ov"}


def test_agent_programs_peers_and_follows_leases_and_deletes(two_hosts):
    a, b, cstore = two_hosts
    na = a.c.create_network(NID, SUBNET, driver="overlay", name="ov")
    nb = b.c.create_network(NID, SUBNET, driver="overlay", name="ov")
    a.start(), b.start()
    ea = a.c.create_endpoint(NID, "e1" * 32, address="10.77.0.2/24")
    eb = b.c.create_endpoint(NID, "e2" * 32, address="10.77.0.3/24")
    assert ea.mac == "02:42:0a:4d:00:02"
    want_a = [(FLOOD_MAC, "127.0.0.3"), (eb.mac, "127.0.0.3")]
    wait(lambda: a.fdb(na) == want_a, f"A's FDB {want_a}")
    wait(lambda: b.fdb(nb) == [(FLOOD_MAC, "127.0.0.2"), (ea.mac, "127.0.0.2")], "B's FDB")
    assert a.neigh(na) == [("10.77.0.3", eb.mac)] and b.neigh(nb) == [("10.77.0.2", ea.mac)]
    # the periodic reconcile repairs a hand-made change
    a.nl.fdb_delete(na.driver_state["vxlan"], eb.mac, "127.0.0.3")
    wait(lambda: a.fdb(na) == want_a, "A's FDB repaired")
    # B's lease expires (its agent dies without revoking): A drops B's entries...
    b.agent.stop(revoke=False)
    wait(lambda: a.fdb(na) == [] and a.neigh(na) == [], "B gone from A's FDB", bound=15)
    assert cstore.get(b.cluster.key("endpoints", "ov", eb.id)) is not None   # not freed
    # ... and takes them back when B returns
    b.start()
    wait(lambda: a.fdb(na) == want_a, "B back in A's FDB")
    # deleting B's endpoint removes it from A (the flood entry goes with B's last one)
    b.c.delete_endpoint(NID, eb.id)
    wait(lambda: a.fdb(na) == [] and a.neigh(na) == [], "B's endpoint gone from A")
    # the last member frees the cluster network and its VNI
    a.c.delete_endpoint(NID, ea.id)
    a.c.delete_network(NID)
    assert cstore.get(a.cluster.key("networks", "ov")) is not None
    b.c.delete_network(NID)
    a.agent.stop(), b.agent.stop()
    a.agent = b.agent = None
    assert [r.key for r in cstore.list(a.cluster.root)] == []
    assert a.nl.kernel.summary() == {"eth0": "dummy"} and b.nl.kernel.summary() == {"eth0": "dummy"}


def test_restore_leaves_the_bridge_drivers_alone_and_removes_overlay_orphans(two_hosts):
    a, _, _ = two_hosts
    na = a.c.create_network(NID, SUBNET, driver="overlay", name="ov")
    st = na.driver_state
    # the bridge driver's restore must not take the overlay's bridge for an orphan
    a.c.restore()
    assert a.nl.link_exists(st["bridge"]) and a.nl.link_exists(st["vxlan"])
    a.nl.delete_link(st["vxlan"])
    a.c.restore()                                     # recreated
    assert a.nl.get_link(st["vxlan"]).master == st["bridge"]
    a.c.store.delete("networks/" + NID)               # the record gone: the devices are orphans
    a.c.restore()
    assert not a.nl.link_exists(st["bridge"]) and not a.nl.link_exists(st["vxlan"])


class FlakyWatchStore:
    """The cluster store with watches that fail once each way: the first
    raises StoreCompacted (history gone), the second StoreUnavailable (a
    broken stream); later ones are the store's own."""

    def __init__(self, store):
        self._s = store
        self.failures = [errors.StoreCompacted(revision=1), errors.StoreUnavailable("stream broke")]

    def __getattr__(self, name):
        return getattr(self._s, name)

    def watch(self, prefix, from_revision=None):
        if self.failures:
            err = self.failures.pop(0)

            class Broken:
                closed = False

                def get(self, timeout=None):
                    self.closed = True
                    raise err

                def close(self):
                    self.closed = True
            return Broken()
        return self._s.watch(prefix, from_revision)


def test_the_loop_resyncs_after_compaction_and_a_broken_stream():
    cstore = MemoryStore()
    flaky = FlakyWatchStore(cstore)
    a, b = Host("ha", "127.0.0.2", flaky), Host("hb", "127.0.0.3", cstore)
    try:
        na = a.c.create_network(NID, SUBNET, driver="overlay", name="ov")
        b.c.create_network(NID, SUBNET, driver="overlay", name="ov")
        agent = a.start()
        b.start()
        eb = b.c.create_endpoint(NID, "e2" * 32, address="10.77.0.3/24")
        b.c.create_endpoint(NID, "e3" * 32, address="10.77.0.4/24")
        wait(lambda: (eb.mac, "127.0.0.3") in a.fdb(na) and len(a.neigh(na)) == 2, "A programmed")
        assert agent.resyncs >= 2 and flaky.failures == []
    finally:
        for h in (a, b):
            if h.agent is not None:
                h.agent.stop()


def test_cni_gc_removes_the_overlays_orphan_veths(two_hosts):
    """The overlay tags its links ``pynet-overlay:<instance>:<id>``: CNI GC lists that tag for
    the overlay driver (an interrupted ADD's veth on the network's bridge goes; a veth of a
    recorded endpoint, one on another bridge, and the bridge and VXLAN device stay)."""
    from pynet.cnm.attach import gc

    a, _, _ = two_hosts
    net = a.c.create_network(NID, SUBNET, driver="overlay", name="ov")
    st = net.driver_state
    ep = a.c.create_endpoint(NID, "e1" * 32, address="10.77.0.2/24")
    kept = ep.driver_state["host_veth"]
    a.nl.add_veth("pvorphan", "pvorphan-c", alias=f"pynet-overlay:t:{'f' * 64}")
    a.nl.set_master("pvorphan", st["bridge"])
    a.nl.ensure_bridge("other-br")
    a.nl.add_veth("pvelse", "pvelse-c", alias=f"pynet-overlay:t:{'9' * 64}")
    a.nl.set_master("pvelse", "other-br")
    removed = gc(a.c, a.c.network(NID), valid=set(), netlink=a.nl, instance="t")
    assert removed["links"] == ["pvorphan"]
    assert not a.nl.link_exists("pvorphan")
    for name in (kept, "pvelse", st["bridge"], st["vxlan"]):
        assert a.nl.link_exists(name), name


def test_hosts_with_their_own_network_ids_share_the_cluster_network_by_name(two_hosts):
    """Each dockerd makes its own network ID and never tells a plugin the name: two hosts'
    networks of different IDs join one cluster network through ``-o pynet.overlay.network``,
    and a CNI network named so (a conflist's ``name``) joins it too."""
    from pynet.drivers.overlay import OPT_CLUSTER_NETWORK

    a, b, cstore = two_hosts
    opts = {OPT_CLUSTER_NETWORK: "shared"}
    na = a.c.create_network("1" * 64, SUBNET, driver="overlay", options=dict(opts))
    nb = b.c.create_network("2" * 64, SUBNET, driver="overlay", options=dict(opts))
    assert na.driver_state["vni"] == nb.driver_state["vni"]
    assert na.driver_state["cluster"] == nb.driver_state["cluster"] == "shared"
    assert cstore.get(a.cluster.key("networks", "shared")) is not None
    a.start(), b.start()
    ea = a.c.create_endpoint(na.id, "e1" * 32, address="10.77.0.2/24")
    eb = b.c.create_endpoint(nb.id, "e2" * 32, address="10.77.0.3/24")
    wait(lambda: (eb.mac, "127.0.0.3") in a.fdb(na), "B's endpoint in A's FDB")
    wait(lambda: (ea.mac, "127.0.0.2") in b.fdb(nb), "A's endpoint in B's FDB")
    # a network named later (Docker's names arrive after the create) keeps its cluster key
    a.c.name_network(na.id, "renamed")
    assert a.drv.cluster_id(a.c.network(na.id)) == "shared"
    # a bad name is one readable line, nothing made
    with pytest.raises(errors.InvalidOption, match="pynet.overlay.network"):
        a.c.create_network("3" * 64, [IPData(pool="10.78.0.0/24", gateway="10.78.0.1/24")],
                           driver="overlay", options={OPT_CLUSTER_NETWORK: "bad/name"})
    assert cstore.get(a.cluster.key("networks", "3" * 64)) is None
    a.c.delete_endpoint(na.id, ea.id), b.c.delete_endpoint(nb.id, eb.id)
    a.c.delete_network(na.id), b.c.delete_network(nb.id)
    assert [r.key for r in cstore.list(a.cluster.root) if "/hosts/" not in r.key] == []


def test_dockers_request_address_on_an_overlay_pool_is_cluster_wide(two_hosts):
    """dockerd's order on each host: RequestPool, RequestAddress (gateway), CreateNetwork (its
    own ID), then per container RequestAddress before CreateEndpoint.  On an overlay's pool the
    address comes from the block IPAM: two hosts get addresses from their own blocks, never the
    same one; ReleaseAddress gives it back cluster-wide; the gateway stays local (every host's
    bridge holds it)."""
    from pynet.drivers.overlay import OPT_CLUSTER_NETWORK, pool_name

    a, b, cstore = two_hosts
    got = {}
    for h, nid in ((a, "1" * 64), (b, "2" * 64)):
        pid, pool, _ = h.c.request_pool("LocalDefault", "10.77.0.0/24", requester="docker")
        gw = h.c.request_address(pid, "", {"RequestAddressType": "com.docker.network.gateway"},
                                 holder="docker")
        assert gw == "10.77.0.1/24"
        h.c.create_network(nid, [IPData(pool=pool, gateway=gw, address_space="LocalDefault")],
                           driver="overlay", options={OPT_CLUSTER_NETWORK: "dock"})
        got[h] = (pid, [h.c.request_address(pid, "", {}, holder="docker") for _ in range(3)])
    a_ips, b_ips = got[a][1], got[b][1]
    assert a_ips == ["10.77.0.2/24", "10.77.0.3/24", "10.77.0.4/24"]          # a's block 0
    assert b_ips == ["10.77.0.64/24", "10.77.0.65/24", "10.77.0.66/24"]       # b claims block 1
    ipam = a.drv._blocks()
    held = sorted(h["cidr"] for h in ipam.handles(pool_name("10.77.0.0/24")).values())
    assert held == sorted(a_ips + b_ips) and ipam.verify(pool_name("10.77.0.0/24")) == []
    # an explicit address (docker run --ip) another host holds is refused on this one
    with pytest.raises(errors.AddressInUse):
        b.c.request_address(got[b][0], "10.77.0.3", {}, holder="docker")
    # ReleaseAddress: gone locally and from the cluster; the next request on b reuses it
    b.c.release_address(got[b][0], "10.77.0.65", holder="docker")
    assert "10.77.0.65/24" not in [h["cidr"] for h in ipam.handles(pool_name("10.77.0.0/24")).values()]
    assert b.c.request_address(got[b][0], "", {}, holder="docker") == "10.77.0.65/24"
    # a bridge network's pool is not the overlay's business
    pid, pool, _ = a.c.request_pool("LocalDefault", "10.88.0.0/24", requester="docker")
    assert a.c.request_address(pid, "", {}, holder="docker") == "10.88.0.1/24"


def test_an_event_pass_on_a_device_made_again_programs_the_new_device_fully(two_hosts):
    """An event's pass reuses the last pass's ifindex and its record of what it programmed;
    a VXLAN device deleted and made again meanwhile (another index) must not be taken for the
    old one: the pass is redone from the kernel, and the new device gets every entry."""
    a, b, cstore = two_hosts
    na = a.c.create_network(NID, SUBNET, driver="overlay", name="ov")
    b.c.create_network(NID, SUBNET, driver="overlay", name="ov")
    eb = b.c.create_endpoint(NID, "e2" * 32, address="10.77.0.3/24")
    cstore.put(b.cluster.key("vteps", "ov", "hb"), {"address": "127.0.0.3"})
    cstore.put(b.cluster.key("hosts", "hb"), {"address": "127.0.0.3"})

    def view():
        return {r.key: r.value for r in cstore.list(a.cluster.root)}
    a.drv.program_peers(na, view(), from_kernel=True)
    want = [(FLOOD_MAC, "127.0.0.3"), (eb.mac, "127.0.0.3")]
    assert a.fdb(na) == want
    dev = na.driver_state["vxlan"]
    old = a.nl.get_link(dev).index
    a.nl.delete_link(dev)
    a.drv._setup_vxlan(na, na.driver_state)            # as restore or a CNI ADD makes it again
    assert a.nl.get_link(dev).index != old and a.fdb(na) == []
    ec = b.c.create_endpoint(NID, "e3" * 32, address="10.77.0.4/24")
    a.drv.program_peers(na, view(), from_kernel=False)    # the event's pass
    assert a.fdb(na) == sorted(want + [(ec.mac, "127.0.0.3")])
    assert a.neigh(na) == [("10.77.0.3", eb.mac), ("10.77.0.4", ec.mac)]


def test_cni_check_and_status_of_an_overlay_endpoint_ask_the_cluster(two_hosts):
    """CHECK's host side of an overlay endpoint: the bridge driver's, the VXLAN device on the
    bridge and the endpoint's cluster entries (its record, its address in the block IPAM);
    STATUS: the cluster store answers, else the transient error naming it (CNI code 11)."""
    a, _, cstore = two_hosts
    net = a.c.create_network(NID, SUBNET, driver="overlay", name="ov")
    a.drv.pick_address(net, "e1" * 32, 4, "10.77.0.2")          # as a CNI ADD picks it
    ep = a.c.create_endpoint(NID, "e1" * 32, address="10.77.0.2/24")
    assert a.drv.check_endpoint(net, ep, a.nl) == []
    a.drv.cni_status(net)
    a.drv.unpick_address(net, ep.id)
    assert any("not held by this host" in p for p in a.drv.check_endpoint(net, ep, a.nl))
    a.drv.pick_address(net, ep.id, 4, "10.77.0.2")
    key = a.cluster.key("endpoints", a.drv.cluster_id(net), ep.id)
    rec = cstore.get(key).value
    cstore.delete(key)
    assert any("no record of endpoint" in p for p in a.drv.check_endpoint(net, ep, a.nl))
    cstore.put(key, dict(rec, mac="02:42:0a:4d:00:99"))
    assert any("has mac" in p for p in a.drv.check_endpoint(net, ep, a.nl))
    cstore.put(key, rec)
    a.nl.set_master(net.driver_state["vxlan"], None)
    assert any("not on bridge" in p for p in a.drv.check_endpoint(net, ep, a.nl))
    a.nl.set_master(net.driver_state["vxlan"], net.driver_state["bridge"])

    def down(*_a, **_kw):
        raise errors.StoreUnavailable("etcd at http://x: timed out")
    real, cstore.get = cstore.get, down
    try:
        with pytest.raises(errors.StoreUnavailable) as e:
            a.drv.cni_status(net)
        assert e.value.cni_code == 11
    finally:
        cstore.get = real
    assert a.drv.check_endpoint(net, ep, a.nl) == []
