"""In-memory store with the semantics of the SQLite and etcd stores, for unit tests.

A small MVCC: every key keeps its history of ``(mod_revision, create_revision, value, lease)``,
so a v2 ``txn`` reads one consistent snapshot at a revision, as on etcd.  ``compact(R)`` drops the
history and change log below R (snapshot reads and watches from before R get ``StoreCompacted``).

Leases use ``clock`` (monotonic seconds; injectable): an expired lease is reaped -- its keys
deleted in one revision, delete events logged -- on the next access of the store and while a
watcher waits, so a watch sees the deletion without anyone else touching the store.
"""
from __future__ import annotations

import bisect
import contextlib
import copy
import itertools
import threading
import time
from typing import Any, Callable, Iterator, Optional

from pynet.errors import LeaseNotFound, StoreCompacted, StoreConflict
from pynet.store import DELETE, PUT, Event, Listing, Record, WatchBase
from pynet.store.keys import check_watch_prefix
from pynet.store.optimistic import TxnRunner

_TOMB = object()
_REAP_SLICE = 0.05  # s: how often a waiting watcher looks for expired leases


class MemoryStore(TxnRunner):
    locking = True  # transaction() holds the store's lock
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._hist: dict[str, list[tuple]] = {}  # key -> [(mod, create, value|_TOMB, lease)]
        self._rev = 0
        self._compacted = 0
        self._log: list[Event] = []
        self._log_revs: list[int] = []
        self._log_base = 0  # absolute sequence number of _log[0]
        self._leases: dict[int, list] = {}  # id -> [ttl, expires_at]
        self._lease_ids = itertools.count(1)
        self._cond = threading.Condition(threading.RLock())
        self._depth = threading.local()  # v1 transaction() nesting, per thread

    # --- internals (call with the lock held) -----------------------------------------------------
    def _cur(self, key: str) -> Optional[tuple]:
        h = self._hist.get(key)
        if not h or h[-1][2] is _TOMB:
            return None
        return h[-1]

    def _at(self, key: str, rev: int) -> Optional[tuple]:
        for ent in reversed(self._hist.get(key, ())):
            if ent[0] <= rev:
                return None if ent[2] is _TOMB else ent
        return None

    @staticmethod
    def _record(key: str, ent: tuple) -> Record:
        return Record(key, copy.deepcopy(ent[2]), ent[0], ent[1], ent[3])

    def _apply(self, ops: list[tuple], rev: Optional[int] = None) -> int:
        """Apply ops in ONE new revision (only if something changes, as etcd); returns it."""
        for op in ops:
            if op[0] == "put" and op[3] and op[3] not in self._leases:
                raise LeaseNotFound(f"lease {op[3]} not found")
        new = self._rev + 1
        changed = False
        for op in ops:
            key = op[1]
            cur = self._cur(key)
            if op[0] == "put":
                ent = (new, cur[1] if cur else new, copy.deepcopy(op[2]), op[3])
                self._hist.setdefault(key, []).append(ent)
                self._log_event(Event(PUT, key, copy.deepcopy(op[2]), new))
                changed = True
            elif cur is not None:
                self._hist[key].append((new, 0, _TOMB, 0))
                self._log_event(Event(DELETE, key, None, new))
                changed = True
        if changed:
            self._rev = new
            self._cond.notify_all()
        return self._rev

    def _log_event(self, ev: Event):
        self._log.append(ev)
        self._log_revs.append(ev.revision)

    def _reap(self):
        now = self._clock()
        dead = [lid for lid, (_ttl, exp) in self._leases.items() if exp <= now]
        for lid in dead:
            self._revoke_locked(lid)

    def _revoke_locked(self, lid: int):
        del self._leases[lid]
        keys = [k for k in self._hist if (c := self._cur(k)) is not None and c[3] == lid]
        if keys:
            self._apply([("delete", k) for k in sorted(keys)])

    # --- v1 API ------------------------------------------------------------------------------
    def get(self, key: str) -> Optional[Record]:
        with self._cond:
            self._reap()
            cur = self._cur(key)
            return self._record(key, cur) if cur else None

    def put(self, key: str, value: Any, version: Optional[int] = None, lease: int = 0) -> int:
        with self._cond:
            self._reap()
            if version is not None:
                cur = self._cur(key)
                have = cur[0] if cur else 0
                if have != version:
                    raise StoreConflict(f"store key {key!r} changed")
            return self._apply([("put", key, value, lease)])

    def delete(self, key: str, version: Optional[int] = None) -> bool:
        with self._cond:
            self._reap()
            cur = self._cur(key)
            if version is not None and (cur[0] if cur else -1) != version:
                raise StoreConflict(f"store key {key!r} changed before delete")
            if cur is None:
                return False
            self._apply([("delete", key)])
            return True

    def delete_prefix(self, prefix: str) -> int:
        with self._cond:
            self._reap()
            keys = sorted(k for k in self._hist if k.startswith(prefix) and self._cur(k))
            if keys:
                self._apply([("delete", k) for k in keys])
            return len(keys)

    def list(self, prefix: str) -> Listing:
        with self._cond:
            self._reap()
            recs = [self._record(k, c) for k in sorted(self._hist)
                    if k.startswith(prefix) and (c := self._cur(k)) is not None]
            return Listing(recs, self._rev)

    def in_transaction(self) -> bool:
        return getattr(self._depth, "n", 0) > 0

    @contextlib.contextmanager
    def transaction(self) -> Iterator["MemoryStore"]:
        with self._cond:
            self._depth.n = getattr(self._depth, "n", 0) + 1
            saved = ({k: list(v) for k, v in self._hist.items()}, self._rev, len(self._log),
                     {k: list(v) for k, v in self._leases.items()})
            try:
                yield self
            except BaseException:
                self._hist, self._rev, n, self._leases = saved
                del self._log[n:], self._log_revs[n:]
                raise
            finally:
                self._depth.n -= 1

    def update(self, key: str, fn: Callable[[Any], Any]) -> Any:
        with self.transaction():
            cur = self.get(key)
            new = fn(cur.value if cur else None)
            self.put(key, new)
            return new

    def close(self) -> None:
        pass

    # --- v2: snapshots and commit for TxnRunner ----------------------------------------------------
    def _snapshot(self):
        if self.in_transaction():  # it would read the v1 transaction's uncommitted writes
            raise RuntimeError("store.txn() inside store.transaction(): use the transaction")
        with self._cond:
            self._reap()
            return _MemSnapshot(self, self._rev)

    def _commit(self, compares: list[tuple], ops: list[tuple], want=()) -> tuple:
        with self._cond:
            self._reap()
            for cmp in compares:
                if cmp[0] == "mod":
                    cur = self._cur(cmp[1])
                    ok = (cur[0] if cur else 0) == cmp[2]
                elif cmp[0] == "absent":
                    ok = self._cur(cmp[1]) is None
                else:  # range_lt
                    ok = not any(k.startswith(cmp[1]) and (c := self._cur(k)) and c[0] >= cmp[2]
                                 for k in self._hist)
                if not ok:
                    current = {k: (self._record(k, c) if (c := self._cur(k)) else None) for k in want}
                    return False, self._rev, current
            expanded = []
            for op in ops:
                if op[0] == "delete_prefix":
                    expanded += [("delete", k) for k in sorted(self._hist)
                                 if k.startswith(op[1]) and self._cur(k) is not None]
                else:
                    expanded.append(op)
            return True, self._apply(expanded), {}

    def revision(self) -> int:
        with self._cond:
            self._reap()
            return self._rev

    def compact(self, revision: int) -> None:
        with self._cond:
            if revision <= self._compacted:
                return
            if revision > self._rev:
                raise ValueError(f"cannot compact to {revision}: the store is at {self._rev}")
            self._compacted = revision
            for key, h in list(self._hist.items()):
                older = [e for e in h if e[0] < revision]
                keep = [e for e in h if e[0] >= revision]
                if older and older[-1][2] is not _TOMB:
                    keep.insert(0, older[-1])
                if keep:
                    self._hist[key] = keep
                else:
                    del self._hist[key]
            n = bisect.bisect_left(self._log_revs, revision)
            del self._log[:n], self._log_revs[:n]
            self._log_base += n

    # --- v2: watch ---------------------------------------------------------------------------------
    def watch(self, prefix: str, from_revision: Optional[int] = None) -> "_MemWatch":
        check_watch_prefix(prefix)
        with self._cond:
            start = self._rev + 1 if not from_revision else from_revision
            return _MemWatch(self, prefix, start)

    # --- v2: leases ---------------------------------------------------------------------------------
    def grant(self, ttl: int) -> int:
        if ttl <= 0:
            raise ValueError("lease TTL must be positive")
        with self._cond:
            lid = next(self._lease_ids)
            self._leases[lid] = [ttl, self._clock() + ttl]
            return lid

    def keepalive(self, lease: int) -> int:
        with self._cond:
            self._reap()
            ent = self._leases.get(lease)
            if ent is None:
                raise LeaseNotFound(f"lease {lease} not found (expired or revoked)")
            ent[1] = self._clock() + ent[0]
            return ent[0]

    def revoke(self, lease: int) -> None:
        with self._cond:
            self._reap()
            if lease not in self._leases:
                raise LeaseNotFound(f"lease {lease} not found (expired or revoked)")
            self._revoke_locked(lease)


class _MemSnapshot:
    def __init__(self, store: MemoryStore, revision: int):
        self._s = store
        self.revision = revision

    def _check(self):
        if self.revision < self._s._compacted:
            raise StoreCompacted(revision=self._s._compacted)

    def get(self, key: str) -> Optional[Record]:
        with self._s._cond:
            self._check()
            ent = self._s._at(key, self.revision)
            return self._s._record(key, ent) if ent else None

    def range(self, prefix: str) -> list[Record]:
        with self._s._cond:
            self._check()
            out = []
            for k in sorted(self._s._hist):
                if k.startswith(prefix) and (ent := self._s._at(k, self.revision)) is not None:
                    out.append(self._s._record(k, ent))
            return out

    def close(self):
        pass


class _MemWatch(WatchBase):
    def __init__(self, store: MemoryStore, prefix: str, from_revision: int):
        self._s = store
        self._prefix = prefix
        self._from = from_revision
        self._seq = store._log_base + bisect.bisect_left(store._log_revs, from_revision)
        self._stale = from_revision < store._compacted  # its history is gone already
        self._closed = False

    def get(self, timeout: Optional[float] = None) -> Optional[Event]:
        deadline = None if timeout is None else time.monotonic() + timeout
        s = self._s
        with s._cond:
            while not self._closed:
                s._reap()
                if self._stale or self._seq < s._log_base:  # events it has not seen were compacted
                    self._closed = True
                    raise StoreCompacted(revision=s._compacted)
                while self._seq - s._log_base < len(s._log):
                    ev = s._log[self._seq - s._log_base]
                    self._seq += 1
                    if ev.key.startswith(self._prefix):
                        return Event(ev.type, ev.key, copy.deepcopy(ev.value), ev.revision)
                left = _REAP_SLICE if deadline is None else min(_REAP_SLICE, deadline - time.monotonic())
                if left <= 0:
                    return None
                s._cond.wait(left)
        return None

    def close(self) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed
