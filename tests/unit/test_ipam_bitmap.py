"""The hierarchical bitmap: agreement with a plain set under random
operations, bounded work on nearly full pools, sparse storage."""
from __future__ import annotations

import ipaddress
import random

import pytest

from pynet.errors import AddressInUse, PoolExhausted
from pynet.ipam import Ipam, bitmap
from pynet.ipam.bitmap import Bitmap
from pynet.store.memory import MemoryStore
from pynet.store.sqlite import SqliteStore

LOCAL = "LocalDefault"


class CountingStore(MemoryStore):
    """Counts reads of single keys: v1 calls (MemoryStore's transaction()
    yields the store itself, so reads inside transactions are counted too)
    and v2 snapshot reads.  ``cold()`` empties the record cache, so that
    every block the search looks at is read from the store and counted."""

    def __init__(self):
        super().__init__()
        self.gets = 0

    def get(self, key):
        self.gets += 1
        return super().get(key)

    def _snapshot(self):
        snap = super()._snapshot()
        read = snap.get

        def counted(key):
            self.gets += 1
            return read(key)
        snap.get = counted
        return snap

    def cold(self):
        self._record_cache.clear()
        self.gets = 0


@pytest.fixture
def small_blocks(monkeypatch):
    # 8-bit blocks give a /22 four levels, so every climb and descent of the
    # summaries is exercised with a few hundred addresses
    monkeypatch.setattr(bitmap, "BLOCK_BITS", 8)


def _addr(cidr: str) -> str:
    return cidr.split("/")[0]


@pytest.mark.parametrize("sub_pool", ["", "10.0.1.37/26", "10.0.0.0/23"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_operations_match_a_set(small_blocks, sub_pool, seed):
    rng = random.Random(seed)
    store = MemoryStore()
    ipam = Ipam(store, host_routes=lambda: [])
    pid, _, _ = ipam.request_pool(LOCAL, "10.0.0.0/22", sub_pool)
    assert len(ipam._geom(store.get(f"ipam/pools/{pid.replace('/', '%2F')}").value).layout.counts) == 4
    pool = ipaddress.ip_network("10.0.0.0/22")
    dyn = ipaddress.ip_network(sub_pool or "10.0.0.0/22", strict=False)
    hosts = [str(a) for a in pool.hosts()]
    dynamic = {str(a) for a in pool.hosts() if a in dyn}
    held: set[str] = set()
    for step in range(3000):
        op = rng.random()
        if op < 0.55:
            try:
                got = _addr(ipam.request_address(pid))
            except PoolExhausted:
                assert dynamic <= held
            else:
                assert got in dynamic and got not in held
                held.add(got)
        elif op < 0.65:
            a = rng.choice(hosts)
            if a in held:
                with pytest.raises(AddressInUse):
                    ipam.request_address(pid, a)
            else:
                assert _addr(ipam.request_address(pid, a)) == a
                held.add(a)
        elif held:
            a = rng.choice(sorted(held))
            ipam.release_address(pid, a)
            held.discard(a)
        if step % 250 == 0:
            assert ipam.verify(pid) == []
            assert list(ipam.allocated(pid)) == sorted(held, key=ipaddress.ip_address)
    assert ipam.verify(pid) == []
    assert ipam.get_pool(pid)["used"] == len(held)


def test_fill_completely_then_drain(small_blocks):
    store = MemoryStore()
    ipam = Ipam(store, host_routes=lambda: [])
    pid, _, _ = ipam.request_pool(LOCAL, "10.0.0.0/23")
    got = {_addr(ipam.request_address(pid)) for _ in range(510)}
    assert len(got) == 510
    with pytest.raises(PoolExhausted):
        ipam.request_address(pid)
    assert ipam.verify(pid) == []
    assert store.list("ipam/full/")  # summaries hold the full blocks
    for a in got:
        ipam.release_address(pid, a)
    assert ipam.verify(pid) == []
    assert store.list("ipam/bits/") == [] and store.list("ipam/full/") == []


def _nearly_full(store, ipam, pid, free):
    """Mark every address but ``free`` allocated in one transaction (fast)."""
    key = "ipam/pools/" + pid.replace("/", "%2F")
    with store.transaction() as t:
        p = t.get(key).value
        g = ipam._geom(p)
        bits = Bitmap(t, g.layout)
        keep = {g.ordinal(ipaddress.ip_address(a)) for a in free}
        for o in range(g.lo, g.hi + 1):
            if o not in keep:
                bits.set(o)
        # the next search starts at the beginning: everything ahead is full
        t.put("ipam/cursors/" + pid.replace("/", "%2F"), {"cursor": g.lo + 1})
    assert ipam.verify(pid) == []


def test_nearly_full_pool_is_searched_in_bounded_reads(small_blocks):
    store = CountingStore()
    ipam = Ipam(store, host_routes=lambda: [])
    pid, _, _ = ipam.request_pool(LOCAL, "10.0.0.0/20")  # 4094 addresses, 8-bit blocks: 4 levels
    _nearly_full(store, ipam, pid, ["10.0.15.250", "10.0.0.1"])
    store.cold()
    assert ipam.request_address(pid) == "10.0.15.250/20"
    # pool record, cursor + about two blocks per level, nowhere near the 512 leaves
    assert store.gets <= 11, store.gets
    store.cold()
    assert ipam.request_address(pid) == "10.0.0.1/20"  # wraps around
    assert store.gets <= 11, store.gets
    with pytest.raises(PoolExhausted):
        ipam.request_address(pid)
    assert ipam.verify(pid) == []


def test_nearly_full_slash16_real_blocks():
    store = CountingStore()
    ipam = Ipam(store, host_routes=lambda: [])
    pid, _, _ = ipam.request_pool(LOCAL, "10.1.0.0/16")
    _nearly_full(store, ipam, pid, ["10.1.255.7"])
    store.cold()
    assert ipam.request_address(pid) == "10.1.255.7/16"
    assert store.gets <= 7, store.gets


def test_storage_is_sparse_for_huge_pools(tmp_path):
    store = SqliteStore(str(tmp_path / "db"))
    ipam = Ipam(store, host_routes=lambda: [])
    pid, _, _ = ipam.request_pool(LOCAL, "10.0.0.0/8")
    pid6, _, _ = ipam.request_pool(LOCAL, "fd00::/64")
    for p in (pid, pid6):
        ipam.request_address(p)
        ipam.request_address(p, "fd00::ffff:ffff:ffff:fff0" if p == pid6 else "10.255.255.254")
    keys = [r.key for r in store.list("ipam/")]
    assert len(keys) == 2 + 2 + 4   # two pool records, their cursors, two leaf blocks each
    assert all(len(r.value) <= bitmap.BLOCK_BITS // 8 for r in store.list("ipam/bits/"))
    assert ipam.verify(pid) == [] and ipam.verify(pid6) == []
    assert list(ipam.allocated(pid6)) == ["fd00::1", "fd00::ffff:ffff:ffff:fff0"]
