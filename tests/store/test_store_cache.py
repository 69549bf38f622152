"""Store v2's per-process record cache and hints, on every backend (see pynet.store.optimistic).

A stale cache is made deterministically: a v1 write (``store.put``) bypasses the cache of the
same store object, exactly as another process's write would.
"""
from __future__ import annotations

import pytest

from tests.store.test_store_conformance import in_thread


def _rt(store):
    return getattr(store, "round_trips", None)


def test_a_cached_read_is_validated_by_the_commit(store, ns):
    key = ns + "block"
    store.put(key, 1)
    assert store.txn(lambda t: t.get(key, cached=True).value) == 1  # now cached
    attempts = []

    def step(t):
        attempts.append(1)
        t.put(key, t.get(key, cached=True).value + 10)

    store.txn(step)  # warm and current: one attempt
    assert attempts == [1] and store.get(key).value == 11
    store.put(key, 100)  # behind the cache's back, like another process
    attempts.clear()
    before = _rt(store)
    store.txn(step)
    if before is not None:  # etcd: the failed Txn brought the value; the retry is the commit
        assert store.round_trips - before == 2
    assert len(attempts) == 2, "the stale read must fail the commit and run again"
    assert store.get(key).value == 110  # from the current value, not the stale one


@pytest.mark.parametrize("backend", ["etcd1", "etcd3"])  # round trips exist (and are counted) there
def test_a_warm_read_write_txn_is_one_round_trip(store, ns):
    key = ns + "k"
    store.put(key, 0)
    store.txn(lambda t: t.get(key, cached=True))
    for i in range(5):
        before = store.round_trips
        store.txn(lambda t: t.put(key, t.get(key, cached=True).value + 1))
        assert store.round_trips - before == 1
    assert store.get(key).value == 5


def test_a_hint_is_not_compared(store, ns):
    hint, data = ns + "cursor", ns + "data"
    store.put(hint, {"cursor": 1})
    attempts = []

    def step(t):
        attempts.append(1)
        h = t.hint(hint)
        if len(attempts) == 1:
            in_thread(lambda: store.put(hint, {"cursor": 7}))  # a concurrent writer of the hint
        t.put(data, h.value["cursor"])
        t.put(hint, {"cursor": h.value["cursor"] + 1})  # blind: last writer wins

    store.txn(step)
    assert attempts == [1], "a hint read must not make the commit conflict"
    assert store.get(hint).value == {"cursor": 2}


def test_read_only_and_raising_txns_on_a_stale_cache_run_again(store, ns):
    key = ns + "pool"
    assert store.txn(lambda t: t.get(key, cached=True)) is None  # cached: absent
    store.put(key, {"size": 4})  # behind the cache's back
    # read-only: validated before it is believed
    assert store.txn(lambda t: t.get(key, cached=True).value) == {"size": 4}
    store.put(key, {"size": 8})
    attempts = []

    def must_exist(t):
        attempts.append(1)
        rec = t.get(key, cached=True)
        if rec.value["size"] < 8:
            raise LookupError("too small")  # decided on a stale value: must not stand
        return rec.value["size"]

    assert store.txn(must_exist) == 8 and len(attempts) == 2
    attempts.clear()
    with pytest.raises(LookupError):  # a current view: the error stands
        store.txn(lambda t: attempts.append(1) or (_ for _ in ()).throw(LookupError("x"))
                  if t.get(key, cached=True) else None)
    assert attempts == [1]


def test_delete_prefix_in_a_txn(store, ns):
    for i in range(5):
        store.put(f"{ns}d/{i}", i)
    store.put(ns + "dx", "kept")

    def step(t):
        t.put(ns + "d/0", "overwritten, then deleted with the prefix")
        t.delete_prefix(ns + "d/")
        assert t.get(ns + "d/3") is None and t.list(ns + "d/") == []
        with pytest.raises(RuntimeError):
            t.put(ns + "d/9", 1)  # etcd refuses a put inside a delete range of the same Txn
        t.put(ns + "other", 1)

    store.txn(step)
    assert [r.key for r in store.list(ns)] == [ns + "dx", ns + "other"]
