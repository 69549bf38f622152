"""A Store seen under one key prefix: ``Namespaced(store, "pynet/v2/local/<host>/")``.

What etcd's own client offers as ``clientv3/namespace``: every key the caller names is
relative, every key it gets back is relative, and the prefix is added and stripped here, so
the core (controller, IPAM, records) names ``networks/<id>`` while the backend holds
``pynet/v2/local/<host>/networks/<id>`` -- one host's records and the cluster's
(``pynet/v2/cluster/...``) cannot collide, and a v3 layout could live beside v2.

Everything of the Store protocol passes through: v1 calls, ``transaction()`` (the locked
fallback of ``pynet.store.optimistic.run``), v2 ``txn`` (the function gets a namespaced view
of the txn), ``watch`` (events with relative keys), leases, revisions.  ``sibling(prefix)`` is
another namespace of the same backend (the cluster scope beside the local one).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional

from pynet.store import Event, Listing, Record


def _strip(rec: Optional[Record], n: int) -> Optional[Record]:
    if rec is None:
        return None
    return Record(rec.key[n:], rec.value, rec.version, rec.create_revision, rec.lease)


def _listing(recs, n: int) -> Listing:
    return Listing([Record(r.key[n:], r.value, r.version, r.create_revision, r.lease) for r in recs],
                   getattr(recs, "revision", 0))


class _NsTxn:
    """The namespaced view of one txn (v2 ``OptimisticTxn``, ``LockedTxn``, or a v1 txn)."""

    __slots__ = ("_t", "_p", "_n", "_memo")

    def __init__(self, t, prefix: str, memo: Optional[dict] = None):
        self._t, self._p, self._n = t, prefix, len(prefix)
        self._memo = memo if memo is not None else {}

    @property
    def revision(self):
        return getattr(self._t, "revision", None)

    def _cached(self, rec: Optional[Record]) -> Optional[Record]:
        """The relative record of a record the store's cache answered: the cache hands out the
        same object until the key changes, so its relative twin is made once (the IPAM's
        warm allocation reads three such records: no new object each time)."""
        if rec is None:
            return None
        hit = self._memo.get(id(rec))
        if hit is not None and hit[0] is rec:
            return hit[1]
        out = _strip(rec, self._n)
        if len(self._memo) > 4096:
            self._memo.clear()
        self._memo[id(rec)] = (rec, out)  # holds rec: its id is not reused meanwhile
        return out

    def get(self, key: str, cached: bool = False):
        if cached:
            return self._cached(self._t.get(self._p + key, cached=True))
        return _strip(self._t.get(self._p + key), self._n)

    def hint(self, key: str):
        return self._cached(self._t.hint(self._p + key))

    def list(self, prefix: str, keys: bool = True) -> Listing:
        if keys:
            return _listing(self._t.list(self._p + prefix), self._n)
        return _listing(self._t.list(self._p + prefix, keys=False), self._n)

    def scan(self, prefix: str) -> Listing:
        t = self._t
        return _listing((t.scan if hasattr(t, "scan") else t.list)(self._p + prefix), self._n)

    def put(self, key: str, value: Any, *a, **kw):
        return self._t.put(self._p + key, value, *a, **kw)

    def delete(self, key: str, *a, **kw):
        return self._t.delete(self._p + key, *a, **kw)

    def delete_prefix(self, prefix: str):
        return self._t.delete_prefix(self._p + prefix)

    def create(self, key: str, value: Any, lease: int = 0) -> None:
        return self._t.create(self._p + key, value, lease)


class _NsCache:
    """The backend's record cache as ``LockedTxn`` drops from it (relative keys)."""

    def __init__(self, cache, prefix: str):
        self._c, self._p = cache, prefix

    def drop(self, key: str) -> None:
        self._c.drop(self._p + key)

    def drop_prefix(self, prefix: str) -> None:
        self._c.drop_prefix(self._p + prefix)


class _NsWatch:
    def __init__(self, w, n: int):
        self._w, self._n = w, n

    def get(self, timeout: Optional[float] = None) -> Optional[Event]:
        ev = self._w.get(timeout)
        if ev is None:
            return None
        return Event(ev.type, ev.key[self._n:], ev.value, ev.revision)

    def close(self) -> None:
        self._w.close()

    @property
    def closed(self) -> bool:
        return self._w.closed

    def __iter__(self):
        while not self.closed:
            ev = self.get()
            if ev is not None:
                yield ev

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Namespaced:
    def __init__(self, store, prefix: str):
        if not prefix.endswith("/"):
            raise ValueError(f"a store namespace ends with '/': {prefix!r}")
        self.inner = store
        self.prefix = prefix
        self._n = len(prefix)
        self._memo: dict = {}  # see _NsTxn._cached

    def sibling(self, prefix: str) -> "Namespaced":
        return Namespaced(self.inner, prefix)

    # --- what callers read off a store
    @property
    def locking(self) -> bool:
        return getattr(self.inner, "locking", False)

    @property
    def path(self) -> str:  # SQLite: the file (the CNI route derives the state dir from it)
        return getattr(self.inner, "path", "")

    @property
    def _record_cache(self):
        cache = getattr(self.inner, "_record_cache", None)
        return _NsCache(cache, self.prefix) if cache is not None else None

    def in_transaction(self) -> bool:
        f = getattr(self.inner, "in_transaction", None)
        return bool(f and f())

    # --- v1
    def get(self, key: str) -> Optional[Record]:
        return _strip(self.inner.get(self.prefix + key), self._n)

    def put(self, key: str, value: Any, *a, **kw) -> int:
        return self.inner.put(self.prefix + key, value, *a, **kw)

    def delete(self, key: str, *a, **kw) -> bool:
        return self.inner.delete(self.prefix + key, *a, **kw)

    def delete_prefix(self, prefix: str) -> int:
        return self.inner.delete_prefix(self.prefix + prefix)

    def list(self, prefix: str) -> Listing:
        return _listing(self.inner.list(self.prefix + prefix), self._n)

    def update(self, key: str, fn: Callable[[Any], Any]) -> Any:
        return self.inner.update(self.prefix + key, fn)

    @contextlib.contextmanager
    def transaction(self):
        with self.inner.transaction() as t:
            yield _NsTxn(t, self.prefix)

    # --- v2
    def txn(self, fn, retries: int = 10):
        p, memo = self.prefix, self._memo
        return self.inner.txn(lambda t: fn(_NsTxn(t, p, memo)), retries=retries)

    def watch(self, prefix: str, from_revision: Optional[int] = None) -> _NsWatch:
        return _NsWatch(self.inner.watch(self.prefix + prefix, from_revision), self._n)

    def grant(self, ttl: int) -> int:
        return self.inner.grant(ttl)

    def keepalive(self, lease: int) -> int:
        return self.inner.keepalive(lease)

    def revoke(self, lease: int) -> None:
        self.inner.revoke(lease)

    def compact(self, revision: int) -> None:
        self.inner.compact(revision)

    def revision(self) -> int:
        return self.inner.revision()

    def close(self) -> None:
        self.inner.close()
