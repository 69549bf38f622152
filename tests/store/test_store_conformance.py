"""Store v2 conformance: the same cases on memory, SQLite, one-member etcd and three-member etcd.

Races are made deterministic, not timed: a txn's function runs a competing write from another
thread *between* its read and its commit (first attempt only), so the conflict always happens.
Waits on watches and leases are bounded polls (``WAIT``), never assertions on durations.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from pynet.errors import (InvalidParameter, KeyExists, LeaseNotFound, StoreCompacted, StoreConflict,
                          StoreUnavailable, Transient)
from pynet.store import DELETE, PENDING, PUT, Listing
from pynet.store.keys import cluster_key, cluster_prefix, component, local_key, local_prefix, parse_key
from pynet.store.memory import MemoryStore
from pynet.store.sqlite import SqliteStore

WAIT = 20.0  # s: upper bound of any wait for an event, an expiry, a member


def in_thread(fn):
    """Run ``fn`` in another thread (another connection/txn context) and return its result."""
    box = {}

    def run():
        try:
            box["r"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            box["e"] = e

    th = threading.Thread(target=run)
    th.start()
    th.join(WAIT)
    assert not th.is_alive(), "competing write did not finish"
    if "e" in box:
        raise box["e"]
    return box.get("r")


def wait_for(pred, what: str):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"not within {WAIT}s: {what}")


def incr(store, key):
    def step(t):
        r = t.get(key)
        t.put(key, (r.value if r else 0) + 1)
    store.txn(step)


# --- basics and v1 compatibility ----------------------------------------------------------------
def test_values_roundtrip_and_list_revision(store, ns):
    v1 = store.put(ns + "a", {"x": [1, "two"]})
    v2 = store.put(ns + "b", b"\x00\xffbits")
    rec = store.get(ns + "a")
    assert rec.value == {"x": [1, "two"]} and rec.version == v1 and rec.create_revision == v1
    assert store.get(ns + "b").value == b"\x00\xffbits"
    listing = store.list(ns)
    assert isinstance(listing, Listing) and [r.key for r in listing] == [ns + "a", ns + "b"]
    assert listing.revision >= v2 > v1
    v3 = store.put(ns + "a", {"x": 3})
    assert v3 > listing.revision
    again = store.get(ns + "a")
    assert again.version == v3 and again.create_revision == v1  # created once, modified since
    assert store.list(ns).revision >= v3
    assert store.revision() >= v3


def test_v1_compare_and_swap(store, ns):
    v = store.put(ns + "k", 1, version=0)  # 0: only if absent
    with pytest.raises(StoreConflict):
        store.put(ns + "k", 2, version=0)
    with pytest.raises(StoreConflict):
        store.put(ns + "k", 2, version=v + 1000)
    v2 = store.put(ns + "k", 2, version=v)
    with pytest.raises(StoreConflict):
        store.delete(ns + "k", version=v)
    assert store.delete(ns + "k", version=v2) is True
    assert store.delete(ns + "k") is False
    for i in range(3):
        store.put(f"{ns}p/{i}", i)
    store.put(ns + "pq", "outside the p/ prefix")
    assert store.delete_prefix(ns + "p/") == 3
    assert [r.key for r in store.list(ns)] == [ns + "pq"]
    assert store.update(ns + "u", lambda old: (old or 0) + 5) == 5
    assert store.update(ns + "u", lambda old: old + 1) == 6


def test_v1_transaction_still_rolls_back_where_it_exists(store, ns, backend):
    if backend.startswith("etcd"):
        with pytest.raises(Exception, match="txn"):
            with store.transaction():
                pass
        return
    store.put(ns + "a", 1)
    with pytest.raises(ZeroDivisionError):
        with store.transaction() as t:
            t.put(ns + "a", 2)
            t.put(ns + "b", 2)
            1 / 0
    assert store.get(ns + "a").value == 1 and store.get(ns + "b") is None


# --- optimistic transactions ------------------------------------------------------------------
def test_cas_conflict_loser_is_retried(store, ns):
    key = ns + "counter"
    store.put(key, 0)
    attempts = []

    def step(t):
        attempts.append(1)
        r = t.get(key)
        if len(attempts) == 1:  # the other txn reads the same key and commits first
            in_thread(lambda: incr(store, key))
        t.put(key, r.value + 1)
        return r.value

    seen = store.txn(step)
    assert len(attempts) == 2, "the loser must run again on a fresh snapshot"
    assert seen == 1 and store.get(key).value == 2  # no lost update


def test_conflict_past_retries_is_transient_store_conflict(store, ns):
    key = ns + "hot"
    store.put(key, 0)
    attempts = []

    def step(t):
        attempts.append(1)
        r = t.get(key)
        in_thread(lambda: incr(store, key))  # every attempt loses
        t.put(key, -1)
        t.put(ns + "side-effect", "must not be written")

    with pytest.raises(StoreConflict) as ei:
        store.txn(step, retries=2)
    assert isinstance(ei.value, Transient) and ei.value.http_status == 503 and ei.value.cni_code == 11
    assert len(attempts) == 3
    assert store.get(key).value == 3 and store.get(ns + "side-effect") is None


def test_snapshot_isolation(store, ns):
    store.put(ns + "a", "a0")
    store.put(ns + "b", "b0")
    seen = []

    def both(t):
        a = t.get(ns + "a").value
        if not seen:
            def change():
                store.put(ns + "a", "a1")
                store.put(ns + "b", "b1")
            in_thread(change)
        b = t.get(ns + "b").value
        listed = [r.value for r in t.list(ns)]
        seen.append((a, b, listed, t.revision))
        return a, b

    # read-only: no commit, so the first (consistent, older) snapshot is the answer
    assert store.txn(both) == ("a0", "b0")
    assert seen[0][:3] == ("a0", "b0", ["a0", "b0"])
    assert store.get(ns + "b").value == "b1"


def test_txn_reads_its_own_writes_and_exception_writes_nothing(store, ns):
    store.put(ns + "gone", 1)

    def step(t):
        t.put(ns + "new", {"v": 1})
        t.delete(ns + "gone")
        rec = t.get(ns + "new")
        assert rec.value == {"v": 1} and rec.version == PENDING
        assert t.get(ns + "gone") is None
        assert [r.key for r in t.list(ns)] == [ns + "new"]
        raise ValueError("abort")

    with pytest.raises(ValueError):
        store.txn(step)
    assert store.get(ns + "new") is None and store.get(ns + "gone").value == 1

    def commit(t):
        t.put(ns + "x", 1)
        t.put(ns + "y", 2)
        t.delete(ns + "gone")
    store.txn(commit)
    x, y = store.get(ns + "x"), store.get(ns + "y")
    assert x.version == y.version  # one commit, one revision
    assert store.get(ns + "gone") is None


def test_create_only(store, ns):
    key = ns + "vni/4097"
    store.txn(lambda t: t.create(key, {"owner": "net-a"}))
    assert store.get(key).value == {"owner": "net-a"}
    with pytest.raises(KeyExists):
        store.txn(lambda t: t.create(key, {"owner": "net-b"}))
    assert store.get(key).value == {"owner": "net-a"}

    other = ns + "vni/4098"
    attempts = []

    def claim(t):
        attempts.append(1)
        if len(attempts) == 1:
            assert t.get(other) is None  # absent in our snapshot...
            in_thread(lambda: store.txn(lambda t2: t2.create(other, {"owner": "net-c"})))
        t.create(other, {"owner": "net-d"})  # ...created meanwhile: commit fails, retry sees it

    with pytest.raises(KeyExists):
        store.txn(claim)
    assert len(attempts) == 2 and store.get(other).value == {"owner": "net-c"}


def test_listed_prefix_conflicts_on_new_and_deleted_keys(store, ns):
    store.put(ns + "blocks/a", 1)
    store.put(ns + "blocks/b", 1)
    for competing in (lambda: store.put(ns + "blocks/c", 1),      # a key appears under the prefix
                      lambda: store.delete(ns + "blocks/a"),      # a listed key vanishes
                      lambda: store.put(ns + "blocks/b", 2)):     # a listed key changes
        attempts = []

        def step(t):
            attempts.append(1)
            n = len(t.list(ns + "blocks/"))
            if len(attempts) == 1:
                in_thread(competing)
            t.put(ns + "count", n)

        store.txn(step)
        assert len(attempts) == 2
        assert store.get(ns + "count").value == len(store.list(ns + "blocks/"))
    # a write outside the listed prefix is no conflict
    attempts = []

    def step2(t):
        attempts.append(1)
        t.list(ns + "blocks/")
        if len(attempts) == 1:
            in_thread(lambda: store.put(ns + "elsewhere", 1))
        t.put(ns + "count", 0)
    store.txn(step2)
    assert len(attempts) == 1


def test_no_nested_txn(store, ns):
    with pytest.raises(RuntimeError, match="pass the txn down"):
        store.txn(lambda t: store.txn(lambda t2: None))
    store.txn(lambda t: t.put(ns + "after", 1))  # the store is usable after
    assert store.get(ns + "after").value == 1


# --- watch ------------------------------------------------------------------------------------------
def _collect(w, n):
    out = []
    deadline = time.monotonic() + WAIT
    while len(out) < n and time.monotonic() < deadline:
        ev = w.get(timeout=0.5)
        if ev is not None:
            out.append(ev)
    return out


def test_watch_from_revision_loses_nothing(store, ns):
    store.put(ns + "before", 0)
    start = store.list(ns).revision
    expected = []
    for i in range(10):
        rev = store.put(f"{ns}k/{i % 3}", {"i": i})
        expected.append((PUT, f"{ns}k/{i % 3}", {"i": i}))
    store.delete(ns + "k/1")
    expected.append((DELETE, ns + "k/1", None))

    def two(t):
        t.put(ns + "k/x", b"raw")
        t.delete(ns + "before")
    store.txn(two)
    expected += [(DELETE, ns + "before", None), (PUT, ns + "k/x", b"raw")]
    store.put(cluster_prefix("elsewhere") + "z", 1)  # another prefix: not delivered
    w = store.watch(ns, start + 1)
    try:
        got = _collect(w, len(expected))
        assert len(got) == len(expected)
        revs = [e.revision for e in got]
        assert revs == sorted(revs) and revs[0] > start
        # events of one revision may come in any key order; compare per revision
        by_rev = {}
        for e in got:
            by_rev.setdefault(e.revision, set()).add((e.type, e.key, json.dumps(e.value, default=repr)))
        want_last = {(t, k, json.dumps(v, default=repr)) for t, k, v in expected[-2:]}
        assert by_rev[revs[-1]] == want_last
        assert [(e.type, e.key, e.value) for e in got[:-2]] == expected[:-2]
        # live: a later write arrives on the same watch, nothing extra before it
        rev = in_thread(lambda: store.put(ns + "live", 1))
        ev = _collect(w, 1)
        assert ev and (ev[0].type, ev[0].key, ev[0].revision) == (PUT, ns + "live", rev)
    finally:
        w.close()
    # from the middle: exactly the later changes
    mid = got[5].revision
    w2 = store.watch(ns, mid)
    try:
        later = _collect(w2, len([e for e in got if e.revision >= mid]) + 1)
        assert [e.revision for e in later] == [e.revision for e in got if e.revision >= mid] + [rev]
    finally:
        w2.close()


def test_watch_resync_after_compaction(store, ns):
    store.put(ns + "a", 1)
    old = store.list(ns).revision
    for i in range(5):
        store.put(ns + "a", i)
    store.compact(store.revision())
    w = store.watch(ns, old)
    try:
        with pytest.raises(StoreCompacted) as ei:
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                w.get(timeout=0.5)
        assert isinstance(ei.value, Transient)
    finally:
        w.close()
    # the documented recovery: list at R, watch from R + 1
    listing = store.list(ns)
    assert [r.value for r in listing] == [4]
    w = store.watch(ns, listing.revision + 1)
    try:
        rev = store.put(ns + "a", 99)
        ev = _collect(w, 1)
        assert ev and ev[0].revision == rev and ev[0].value == 99
    finally:
        w.close()


# --- leases ---------------------------------------------------------------------------------------
def test_lease_expiry_removes_its_keys(store, ns):
    lease = store.grant(1)
    start = store.revision()
    store.put(ns + "host/a", {"vtep": "10.0.0.1"}, lease=lease)
    store.txn(lambda t: t.put(ns + "host/b", 1, lease=lease))
    store.put(ns + "endpoint", "not leased")
    assert store.get(ns + "host/a").lease == lease
    w = store.watch(ns, start + 1)
    try:
        wait_for(lambda: store.get(ns + "host/a") is None and store.get(ns + "host/b") is None,
                 "leased keys vanish")
        events = _collect(w, 5)
        assert {(e.type, e.key) for e in events if e.type == DELETE} == {(DELETE, ns + "host/a"),
                                                                        (DELETE, ns + "host/b")}
    finally:
        w.close()
    assert store.get(ns + "endpoint").value == "not leased"
    with pytest.raises(LeaseNotFound):
        store.keepalive(lease)
    with pytest.raises(LeaseNotFound):
        store.put(ns + "late", 1, lease=lease)


def test_keepalive_keeps_the_key(store, ns):
    lease = store.grant(1)
    store.put(ns + "alive", 1, lease=lease)
    ttl = store.keepalive(lease)  # the store may raise a short TTL to its minimum (etcd: 2 s)
    assert ttl >= 1
    until = time.monotonic() + 2.5 * ttl
    while time.monotonic() < until:
        store.keepalive(lease)
        time.sleep(ttl / 5)
    assert store.get(ns + "alive") is not None
    store.revoke(lease)


def test_revoke_removes_at_once(store, ns):
    lease = store.grant(30)
    store.put(ns + "r", 1, lease=lease)
    store.put(ns + "kept", 1)
    store.revoke(lease)
    assert store.get(ns + "r") is None and store.get(ns + "kept") is not None
    with pytest.raises(LeaseNotFound):
        store.put(ns + "r", 2, lease=lease)


# --- keys -----------------------------------------------------------------------------------------
def test_keys_name_schema_and_scope():
    assert local_key("host-a", "networks", "n1") == "pynet/v2/local/host-a/networks/n1"
    assert cluster_key("vni", 4097) == "pynet/v2/cluster/vni/4097"
    assert local_prefix("host-a", "networks") == "pynet/v2/local/host-a/networks/"
    # a host named like a cluster subtree still cannot collide with it
    assert not local_key("vni", "4097").startswith(cluster_prefix())
    assert parse_key(local_key("h", "ep", "e1")) == ("local", "h", ["ep", "e1"])
    assert parse_key(cluster_key("vni", "1")) == ("cluster", None, ["vni", "1"])
    for bad in ("", "a/b", "..", ".", "tab\there", "nl\n", "sp ace", "\x00", "x" * 256, None, True):
        with pytest.raises(InvalidParameter):
            component(bad)
        with pytest.raises(InvalidParameter):
            cluster_key("networks", bad)
    with pytest.raises(InvalidParameter):
        parse_key("networks/n1")
    with pytest.raises(InvalidParameter):
        local_key("host-a")
    assert InvalidParameter.http_status == 400 and InvalidParameter.cni_code == 7


# --- unreachable ----------------------------------------------------------------------------------
def _all_ops_unavailable(store, key):
    for op in (lambda: store.get(key), lambda: store.put(key, 1), lambda: store.list(key),
               lambda: store.txn(lambda t: t.get(key)),        # fails at the snapshot read
               lambda: store.txn(lambda t: t.put(key, 2)),      # fails at the commit
               lambda: store.grant(5)):
        with pytest.raises(StoreUnavailable) as ei:
            op()
        assert ei.value.http_status == 503 and ei.value.cni_code == 11


def test_etcd_closed_port_is_transient():
    from pynet.store.etcd import EtcdStore
    from tests.support.etcd_cluster import closed_port

    store = EtcdStore([f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"], timeout=1.0)
    try:
        _all_ops_unavailable(store, "pynet/v2/cluster/x")
        with pytest.raises(StoreUnavailable):
            store.watch("pynet/v2/cluster/", None)
    finally:
        store.close()


def test_etcd_member_stopped_is_transient(disposable_etcd):
    from pynet.store.etcd import EtcdStore

    cluster = disposable_etcd(1)
    store = EtcdStore(cluster.endpoints, timeout=1.0)
    try:
        store.put("pynet/v2/cluster/x", 1)
        w = store.watch("pynet/v2/cluster/", store.revision() + 1)
        cluster.kill(0)
        _all_ops_unavailable(store, "pynet/v2/cluster/x")
        with pytest.raises(StoreUnavailable):  # the watch gives up after its bounded reconnects
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                w.get(timeout=0.5)
    finally:
        store.close()


def test_sqlite_locked_is_transient(tmp_path):
    import sqlite3

    path = str(tmp_path / "pynet.db")
    store = SqliteStore(path, busy_timeout=0.2)
    store.put("pynet/v2/local/h/k", 1)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        for op in (lambda: store.put("pynet/v2/local/h/k", 2),
                   lambda: store.txn(lambda t: t.put("pynet/v2/local/h/k", t.get("pynet/v2/local/h/k").value + 1)),
                   lambda: store.grant(5),
                   lambda: store.update("pynet/v2/local/h/k", lambda v: v + 1)):
            with pytest.raises(StoreUnavailable) as ei:
                op()
            assert not isinstance(ei.value, StoreConflict)
            assert ei.value.http_status == 503 and ei.value.cni_code == 11 and "locked" in str(ei.value)
        assert store.get("pynet/v2/local/h/k").value == 1  # WAL readers are never blocked
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    store.put("pynet/v2/local/h/k", 3)  # usable again once the lock is gone
    assert store.get("pynet/v2/local/h/k").value == 3
    store.close()


# --- three members -------------------------------------------------------------------------------
def test_three_members_one_killed_still_serves(disposable_etcd):
    from pynet.store.etcd import EtcdStore

    cluster = disposable_etcd(3)
    store = EtcdStore(cluster.endpoints, timeout=3.0)
    ns = cluster_prefix("t3")
    try:
        store.put(ns + "a", 0)
        w = store.watch(ns, store.revision() + 1)
        first = store.put(ns + "a", 1)
        assert _collect(w, 1)[0].revision == first
        cluster.kill(0)  # the member both the store and the watch talk to
        def ok():
            try:
                incr(store, ns + "a")
                return True
            except StoreUnavailable:  # a leader election may be under way
                return False
        wait_for(ok, "a txn succeeds with two of three members")
        for _ in range(5):
            incr(store, ns + "a")
        value = store.get(ns + "a").value
        assert value >= 7
        events = _collect(w, value - 1)  # the watch moved to a live member, from where it was
        assert [e.value for e in events] == list(range(2, value + 1))
        w.close()
    finally:
        store.close()


def test_three_members_two_killed_is_fast_transient(disposable_etcd):
    from pynet.store.etcd import EtcdStore

    cluster = disposable_etcd(3)
    store = EtcdStore(cluster.endpoints, timeout=1.0)
    try:
        store.put("pynet/v2/cluster/q", 1)
        cluster.kill(0)
        cluster.kill(1)
        _all_ops_unavailable(store, "pynet/v2/cluster/q")  # no quorum: bounded by the 1 s timeout
    finally:
        store.close()


# --- processes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shared", ["sqlite", "etcd1", "etcd3"])
def test_four_processes_no_lost_update(shared, request, tmp_path):
    if shared == "sqlite":
        spec = str(tmp_path / "pynet.db")
        SqliteStore(spec).close()
    else:
        spec = request.getfixturevalue(shared).url()
    ns = cluster_prefix("procs", os.urandom(4).hex())
    rounds = 15
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    procs = [subprocess.Popen([sys.executable, "-m", "tests.support.store_worker", spec, ns, f"w{i}",
                               str(rounds)], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(4)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    from tests.support.store_worker import open_for_test

    store = open_for_test(spec)
    try:
        assert store.get(ns + "shared").value == 4 * rounds  # no lost update on the shared key
        for r in results:
            assert store.get(f"{ns}own/{r['worker']}").value == rounds
        slots = [s for r in results for s in r["slots"]]
        assert len(set(slots)) == len(slots) == 4 * rounds  # no slot handed out twice
        owners = {r.key.rsplit("/", 1)[1]: r.value for r in store.list(ns + "slots/")}
        assert owners == {s: r["worker"] for r in results for s in r["slots"]}
    finally:
        store.close()


def test_memory_store_leases_follow_its_clock():
    now = [100.0]
    store = MemoryStore(clock=lambda: now[0])
    lease = store.grant(10)
    store.put("pynet/v2/cluster/x", 1, lease=lease)
    now[0] += 9.9
    assert store.get("pynet/v2/cluster/x") is not None
    store.keepalive(lease)
    now[0] += 9.9
    assert store.get("pynet/v2/cluster/x") is not None
    now[0] += 0.2
    assert store.get("pynet/v2/cluster/x") is None


def test_lease_keeper_keeps_then_lets_go(store, ns):
    from pynet.store.lease import LeaseKeeper

    lease = store.grant(1)
    store.put(ns + "host", {"vtep": "10.0.0.9"}, lease=lease)
    ttl = store.keepalive(lease)
    lost = []
    keeper = LeaseKeeper(store, lease, ttl, on_lost=lost.append).start()
    try:
        until = time.monotonic() + 2.5 * ttl
        while time.monotonic() < until:
            time.sleep(0.1)
        assert store.get(ns + "host") is not None and not lost
    finally:
        keeper.stop()
    wait_for(lambda: store.get(ns + "host") is None, "the key vanishes once nobody keeps its lease")
    # a keeper of a lease that is gone reports it once
    keeper2 = LeaseKeeper(store, lease, 0.3, on_lost=lost.append).start()
    wait_for(lambda: lost, "on_lost called for an expired lease")
    keeper2.stop()
    assert len(lost) == 1 and isinstance(lost[0], LeaseNotFound)


def test_watch_takes_v2_prefixes_only(store, backend):
    if backend == "sqlite-ns":
        # relative prefixes: the check is on the key as stored, so under the cluster
        # namespace every prefix is a v2 one; a host's local records are not watched
        store.watch("networks/", None).close()
        with pytest.raises(InvalidParameter):
            store.sibling("pynet/v2/local/h/").watch("networks/", None)
        return
    for bad in ("networks/", "", "pynet/v1/"):
        with pytest.raises(InvalidParameter):
            store.watch(bad, None)


def test_sqlite_opens_a_v1_file_in_place(tmp_path):
    import sqlite3

    path = str(tmp_path / "pynet.db")
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript("""
        CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, is_json INTEGER NOT NULL,
                         version INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
        INSERT INTO meta VALUES ('revision', 7);
        INSERT INTO kv VALUES ('networks/n1', '{"name":"n1"}', 1, 7);
    """)
    old.close()
    store = SqliteStore(path)
    rec = store.get("networks/n1")
    assert rec.value == {"name": "n1"} and rec.version == 7
    assert store.put("networks/n1", {"name": "n1", "x": 1}, version=7) == 8
    store.txn(lambda t: t.put("pynet/v2/local/h/k", t.get("networks/n1").value))
    assert store.get("pynet/v2/local/h/k").value == {"name": "n1", "x": 1}
    store.close()
