"""Transactions larger than one etcd Txn may be (``--max-txn-ops``, 128 by default) on a real
etcd (tests/support/etcd_cluster.py via tests/store/conftest.py).

etcd refuses a Txn with more than 128 compares or operations in a branch.  Writes past that
are split inside the one Txn (nested compare-less Txns: still all or nothing, still gated by
every compare); reads are bounded by the callers (``t.scan`` lists without recording, and
``t.list(prefix, keys=False)`` records the range only); a txn that still records too many reads
gets a typed ``StoreTxnTooLarge``, never etcd's raw 400.  Every test works under its own
namespace (``pynet/v2/local/<test host>/``), removed at the end."""
from __future__ import annotations

import uuid

import pytest

from pynet.cnm.controller import Controller
from pynet.cnm.model import IPData, PortMapping
from pynet.errors import StoreTxnTooLarge
from pynet.ipam import Ipam
from pynet.store.etcd import EtcdStore
from pynet.store.keys import local_prefix
from pynet.store.namespace import Namespaced
from tests.support.fakes import FakeDriver

N1, E1, E2 = "a" * 64, "1" * 64, "2" * 64
MANY = 200  # > 128


@pytest.fixture(params=["etcd1", "etcd3"])
def store(request):
    cluster = request.getfixturevalue(request.param)
    raw = EtcdStore(cluster.endpoints, timeout=10.0)
    ns = Namespaced(raw, local_prefix("t" + uuid.uuid4().hex[:10]))
    yield ns
    raw.delete_prefix(ns.prefix)
    raw.close()


def test_more_writes_than_one_txn_holds_commit_at_once(store):
    keys = [f"k/{i:04d}" for i in range(MANY)]

    def fill(t):
        assert t.get("guard") is None  # one compare: the writes happen only if it holds
        for k in keys:
            t.put(k, {"n": k})
    store.txn(fill)
    assert [r.key for r in store.list("k/")] == keys
    revs = {r.version for r in store.list("k/")}
    assert len(revs) == 1  # one revision: one Txn

    # a conflict on the compare still applies none of them
    def refill(t):
        t.get("guard")
        for k in keys:
            t.put(k, {"n": "again"})
        store.inner.put(store.prefix + "guard", 1)  # another writer, between read and commit
    with pytest.raises(Exception):
        store.txn(refill, retries=0)
    assert {r.value["n"] for r in store.list("k/")} == set(keys)


def test_too_many_recorded_reads_are_a_typed_error(store):
    store.txn(lambda t: [t.put(f"r/{i:04d}", i) for i in range(MANY)])

    def read_all(t):
        for i in range(MANY):
            t.get(f"r/{i:04d}")
        t.put("x", 1)
    with pytest.raises(StoreTxnTooLarge, match="max-txn-ops"):
        store.txn(read_all)
    assert store.get("x") is None
    # a listing recorded as a range only: one compare
    store.txn(lambda t: (t.list("r/", keys=False), t.put("x", 1)))
    assert store.get("x").value == 1


def test_publishing_more_ports_than_one_txn_holds(store):
    """A controller on etcd: one endpoint publishes 200 ports (200 reservations written in one
    commit), and another endpoint's reservation beside 200 others lists them unrecorded."""
    c = Controller(store, Ipam(store, host_routes=lambda: []), {"bridge": FakeDriver()})
    c.create_network(N1, [IPData(pool="10.90.0.0/24", gateway="10.90.0.1/24")], name="n1")
    c.create_endpoint(N1, E1, address="10.90.0.2/24")
    c.create_endpoint(N1, E2, address="10.90.0.3/24")
    ports = [PortMapping(proto="tcp", container_port=80 + i, host_port=42000 + i) for i in range(MANY)]
    ep = c.program_external_connectivity(N1, E1, ports=ports)
    assert len(ep.ports) == MANY and len(store.list("ports/tcp/")) == MANY
    other = c.program_external_connectivity(N1, E2, ports=[PortMapping(proto="tcp", container_port=80,
                                                                        host_port=42000,
                                                                        host_port_end=42300)])
    assert [p.host_port for p in other.ports] == [42000 + MANY]  # the first free one after E1's
    c.revoke_external_connectivity(N1, E1)
    assert len(store.list("ports/tcp/")) == 1


def test_a_pool_with_hundreds_of_holders_releases_one(store):
    ipam = Ipam(store, default_pools=[], host_routes=lambda: [])
    pid, _, _ = ipam.request_pool("LocalDefault", "10.91.0.0/23")
    got = [ipam.request_address(pid, holder=f"h{i}") for i in range(MANY)]
    # the release scans the pool's holds unrecorded, and records only the freed address's
    assert ipam.release_holder(pid, "h7") == [got[7].split("/")[0]]
    assert ipam.release_holder(pid, "nobody") == []
    assert ipam.verify(pid) == [] and ipam.get_pool(pid)["used"] == MANY - 1
    ipam.release_pool(pid)


def test_releasing_hundreds_of_addresses_in_one_call(store):
    """One call releasing more addresses than one etcd Txn holds compares for (each freed
    address's holds are read, recorded, before its bit is cleared): split into bounded
    transactions, each of them whole, so the call succeeds and nothing is left held."""
    ipam = Ipam(store, default_pools=[], host_routes=lambda: [])
    pid, _, _ = ipam.request_pool("LocalDefault", "10.92.0.0/23")
    keep = ipam.request_address(pid, holder="endpoint/other/1").split("/")[0]
    got = [ipam.request_address(pid, holder=f"endpoint/net/{i:04d}").split("/")[0] for i in range(MANY)]
    freed = ipam.release_holder(pid, "endpoint/net/", prefix=True)
    assert sorted(freed) == sorted(got)
    assert list(ipam.allocated(pid)) == [keep] and ipam.verify(pid) == []


def test_deleting_a_network_with_hundreds_of_endpoints(store):
    """delete_network of a network whose hundreds of endpoints go with it (force, as the
    daemon's reconcile does): their addresses are released in bounded transactions, then the
    network's record and pool in the last one."""
    c = Controller(store, Ipam(store, host_routes=lambda: []), {"bridge": FakeDriver()})
    pid, pool, _ = c.request_pool("LocalDefault", "10.93.0.0/23")
    c.create_network(N1, [IPData(pool=pool, gateway="10.93.0.1/23", pool_id=pid)], name="n1",
                     created_by="cni")
    for i in range(MANY):
        eid = f"{i:04d}" + "e" * 60
        addr = c.request_address(pid, "", None, f"endpoint/{N1}/{eid}")
        c.create_endpoint(N1, eid, address=addr)
    c.delete_network(N1, force_endpoints=True)
    assert c.networks() == [] and c.endpoints() == []
    assert store.list("ipam/") == []
