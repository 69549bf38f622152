"""The optimistic transaction shared by every backend (see ``pynet.store`` for the semantics).

A backend supplies two things:

* ``_snapshot()`` -> an object with ``revision`` (int), ``get(key)``, ``range(prefix)`` (both read at
  that one revision; ``StoreCompacted`` if it is gone) and ``close()``;
* ``_commit(compares, ops, want)`` -> ``(ok, revision, current)``: apply ``ops`` in one new
  revision iff every compare holds, as one atomic step (etcd: one Txn; SQLite: one ``BEGIN
  IMMEDIATE``; memory: under its lock).  ``revision`` is the store's revision after the step;
  when a compare failed, ``current`` maps each key of ``want`` to its record now (None: absent),
  read in the same atomic step (etcd: the Txn's failure branch), so the record cache refreshes
  without another round trip.

  compares: ``("mod", key, rev)``      the key's mod_revision is still ``rev``
            ``("absent", key)``        the key's create_revision is 0 (it does not exist)
            ``("range_lt", prefix, r)`` every key under ``prefix`` has mod_revision < ``r``
  ops:      ``("put", key, value, lease)``, ``("delete", key)``, ``("delete_prefix", prefix)``

The record cache (``RecordCache``, one per store object, so per process): ``t.get(key,
cached=True)`` may answer from it without a round trip, and the read is recorded with the
cached ``mod_revision`` exactly like a fetched one, so the commit's compare validates it --
snapshot isolation holds because *every* read, fetched or cached, must still be current when the
commit applies (the state ``fn`` saw is the state at the commit).  A stale entry only costs a
conflict: the failure branch brings the current records, the cache is refreshed from them, and
``fn`` runs again at once (no backoff: see ``TxnRunner.txn``).
Two cases where ``fn`` decides without a commit are validated explicitly, since a stale cache
would otherwise go unnoticed: a read-only ``fn`` that used the cache, and an ``fn`` that raised
(``PoolExhausted`` from a stale block, ``PoolNotFound`` from a stale "absent") -- a commit with
the compares and no writes; if it fails, the cache refreshes and ``fn`` runs again, else the
result (or the exception) stands.  Only committed state enters the cache (fetched reads, the
writes of a successful commit, the failure branch), never a v1 transaction's uncommitted writes:
SQLite reuses the revision of a rolled-back transaction, so an uncommitted (value, revision)
could later match another value's compare.

``t.hint(key)``: a read that is NOT recorded (no compare), served from the cache when it has the
key.  For values that only steer a choice whose correctness the recorded reads guarantee (the
IPAM's next-fit cursor: any free address is a correct answer, the cursor only says which one
is preferred); a ``put`` of such a key is then a blind write, so concurrent writers of a hint
never conflict on it.  The hint may be stale (another process moved it since this process
last saw it); it is refreshed by every failure branch, and every fresh process reads it anew.
"""
from __future__ import annotations

import copy
import threading
import time
from typing import Any, Callable, Optional, TypeVar

from pynet.errors import KeyExists, StoreCompacted, StoreConflict, Transient
from pynet.store import PENDING, Listing, Record

T = TypeVar("T")
DEFAULT_RETRIES = 10
_ABSENT = None  # a cached "no such key"


_SCALARS = (bytes, str, int, float, bool, type(None))


def _copy(value: Any) -> Any:
    if isinstance(value, _SCALARS):
        return value
    if type(value) is dict and all(isinstance(v, _SCALARS) for v in value.values()):
        return dict(value)  # the common record: a flat dict, copied ~10 times faster
    return copy.deepcopy(value)


class RecordCache:
    """Committed records by key, each with the revision at which it was known current.

    Thread-safe (the daemon's request threads share one store).  An entry is only replaced by
    news at least as recent, so a slow thread cannot put back an older value; bounded (cleared
    when it exceeds ``limit`` keys: entries are only an optimisation, never needed)."""

    def __init__(self, limit: int = 65536):
        self._d: dict[str, tuple[Optional[Record], int]] = {}
        self._lock = threading.Lock()
        self.limit = limit

    def lookup(self, key: str):
        """``(hit, record_or_None)``."""
        ent = self._d.get(key)
        if ent is None:
            return False, None
        return True, ent[0]

    def store(self, key: str, rec: Optional[Record], known_at: int) -> None:
        with self._lock:
            old = self._d.get(key)
            if old is not None and old[1] > known_at:
                return
            if len(self._d) >= self.limit and old is None:
                self._d.clear()
            self._d[key] = (rec, known_at)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()

    def drop(self, key: str) -> None:
        with self._lock:
            self._d.pop(key, None)

    def drop_prefix(self, prefix: str) -> None:
        with self._lock:
            for k in [k for k in self._d if k.startswith(prefix)]:
                del self._d[k]

    def __contains__(self, key: str) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)


class OptimisticTxn:
    """One attempt of ``store.txn(fn)``: reads recorded, writes buffered until commit."""

    def __init__(self, backend):
        self._backend = backend
        self._cache: RecordCache = backend._record_cache
        self._snap = None
        self._reads: dict[str, int] = {}  # key -> mod_revision seen (0: absent)
        self._ranges: list[str] = []
        self._writes: dict[str, tuple] = {}  # key -> op; the last write of a key wins (etcd: one op per key)
        self._deleted_prefixes: list[str] = []
        self._want: dict[str, None] = {}  # keys read through the cache or as hints: refreshed on failure
        self.served = 0  # reads answered by the cache (no round trip)
        self._done = False

    @property
    def revision(self) -> Optional[int]:
        return self._snap.revision if self._snap is not None else None

    def _snapshot(self):
        if self._done:
            raise RuntimeError("store txn used after its function returned")
        if self._snap is None:
            self._snap = self._backend._snapshot()
        return self._snap

    def _pending(self, key: str):
        """(True, record or None) when this txn wrote or deleted ``key``."""
        if key in self._writes:
            op = self._writes[key]
            return True, (Record(key, _copy(op[2]), PENDING, lease=op[3]) if op[0] == "put" else None)
        if self._deleted_prefixes and any(key.startswith(p) for p in self._deleted_prefixes):
            return True, None
        return False, None

    def _fetch(self, key: str, cached: bool) -> Optional[Record]:
        if cached:
            self._want[key] = None
            ent = self._cache._d.get(key)
            if ent is not None:
                self._check_open()
                self.served += 1
                return ent[0]  # shared with the cache: a cached read's value is read-only
        snap = self._snapshot()
        rec = snap.get(key)
        if cached:
            self._cache.store(key, rec, snap.revision)
        return rec

    def get(self, key: str, cached: bool = False) -> Optional[Record]:
        """The record of ``key`` (None: absent), recorded for the commit's compare.  ``cached``:
        may be answered from the store's record cache (see the module docstring); the value is
        then shared with the cache and must not be mutated (put a copy)."""
        done, rec = self._pending(key)
        if done:
            self._check_open()
            return rec
        rec = self._fetch(key, cached)
        self._reads.setdefault(key, rec.version if rec else 0)
        return rec

    def hint(self, key: str) -> Optional[Record]:
        """Read ``key`` without recording it (no compare at commit), from the cache when it has it."""
        done, rec = self._pending(key)
        if done:
            self._check_open()
            return rec
        return self._fetch(key, True)

    def list(self, prefix: str, keys: bool = True) -> Listing:
        """The records under ``prefix``, recorded: the commit fails if a key appeared or changed
        under it, and (``keys``) if one of the listed keys was deleted.  ``keys=False`` for a
        listing where a deletion meanwhile only makes the answer conservative (an overlap
        check, "is anything still held"): one compare, however many keys."""
        snap = self._snapshot()
        merged = {}
        for rec in snap.range(prefix):
            if keys:
                self._reads.setdefault(rec.key, rec.version)
            merged[rec.key] = rec
        self._ranges.append(prefix)
        return self._with_writes(prefix, merged, snap.revision)

    def _with_writes(self, prefix: str, merged: dict, revision: int) -> Listing:
        """A listing as this txn sees it: its own deletions and writes under ``prefix`` applied."""
        for dp in self._deleted_prefixes:
            for k in [k for k in merged if k.startswith(dp)]:
                del merged[k]
        for key, op in self._writes.items():
            if key.startswith(prefix):
                if op[0] == "put":
                    merged[key] = Record(key, copy.deepcopy(op[2]), PENDING, lease=op[3])
                else:
                    merged.pop(key, None)
        return Listing([merged[k] for k in sorted(merged)], revision)

    def scan(self, prefix: str) -> Listing:
        """``list(prefix)`` without recording it (no compares at commit, like ``hint``): for a
        listing that only steers a choice the recorded reads make correct (which host ports
        are taken, before the chosen one's own key is read), so a txn over a large prefix
        stays within what one etcd Txn can compare (``--max-txn-ops``)."""
        snap = self._snapshot()
        return self._with_writes(prefix, {rec.key: rec for rec in snap.range(prefix)}, snap.revision)

    def put(self, key: str, value: Any, lease: int = 0) -> None:
        self._check_open()
        if self._deleted_prefixes and any(key.startswith(p) for p in self._deleted_prefixes):
            # etcd refuses a Txn whose put lies in one of its delete ranges
            raise RuntimeError(f"store txn: put of {key!r} after deleting a prefix holding it")
        # deep copy now: the caller may mutate its object after put(), as with the v1 API
        self._writes[key] = ("put", key, _copy(value), lease)

    def delete(self, key: str) -> None:
        self._check_open()
        if any(key.startswith(p) for p in self._deleted_prefixes):
            return
        self._writes[key] = ("delete", key)

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under ``prefix`` at commit (one etcd delete-range op), whatever is
        there then: a blind delete, no compare unless the caller listed the prefix."""
        self._check_open()
        for k in [k for k in self._writes if k.startswith(prefix)]:
            del self._writes[k]
        self._deleted_prefixes.append(prefix)

    def create(self, key: str, value: Any, lease: int = 0) -> None:
        if self.get(key) is not None:  # records the read: absent -> compare create_revision == 0
            raise KeyExists(f"store key {key!r} exists")
        self.put(key, value, lease)

    def _check_open(self):
        if self._done:
            raise RuntimeError("store txn used after its function returned")

    def _compares(self) -> list[tuple]:
        compares: list[tuple] = []
        for key, rev in self._reads.items():
            compares.append(("mod", key, rev) if rev else ("absent", key))
        if self._snap is not None:
            for prefix in dict.fromkeys(self._ranges):
                compares.append(("range_lt", prefix, self._snap.revision + 1))
        return compares

    def _commit(self, writes: bool = True) -> bool:
        """Commit the writes (``writes=False``: none, only check the reads -- ``fn`` raised).
        Without writes nothing is sent unless the cache answered a recorded read."""
        self._close()  # end the snapshot first (SQLite: its read transaction) and take no more ops
        ops = list(self._writes.values()) + [("delete_prefix", p) for p in self._deleted_prefixes] \
            if writes else []
        if not ops and not (self.served and self._reads):
            return True  # read-only from one snapshot: consistent, nothing to make atomic
        ok, rev, current = self._backend._commit(self._compares(), ops, list(self._want))
        if ok:
            self._learn_writes(ops, rev)
        else:
            for key in self._want:
                if key in current:
                    self._cache.store(key, current[key], rev)
                else:  # not brought back (etcd: past --max-txn-ops): fetched again when read
                    self._cache.drop(key)
        return ok

    def _learn_writes(self, ops: list[tuple], rev: int) -> None:
        for op in ops:
            if op[0] == "delete_prefix":
                self._cache.drop_prefix(op[1])
                continue
            key = op[1]
            if key not in self._want and key not in self._cache:
                continue  # only keys someone reads through the cache are worth keeping
            if op[0] == "put":  # op[2] is the txn's private copy: the cache may keep it
                self._cache.store(key, Record(key, op[2], rev, 0, op[3]), rev)
            else:
                self._cache.store(key, _ABSENT, rev)

    def _close(self):
        if self._snap is not None and not self._done:
            self._snap.close()
        self._done = True


class TxnRunner:
    """Mixin: ``txn(fn, retries)`` over a backend's ``_snapshot``/``_commit``."""

    _txn_local = threading.local()
    locking = False  # whether transaction() is a pessimistic write lock (SQLite, memory; not etcd)

    @property
    def _record_cache(self) -> RecordCache:
        c = self.__dict__.get("_rc")
        if c is None:
            c = self.__dict__.setdefault("_rc", RecordCache())
        return c

    def txn(self, fn: Callable[[OptimisticTxn], T], retries: int = DEFAULT_RETRIES) -> T:
        active = getattr(self._txn_local, "active", None)
        if active is None:
            active = self._txn_local.active = set()
        if id(self) in active:
            raise RuntimeError("store.txn() called inside store.txn(): pass the txn down instead")
        active.add(id(self))
        try:
            for attempt in range(retries + 1):
                t = OptimisticTxn(self)
                try:
                    try:
                        result = fn(t)
                    except Transient:
                        raise
                    except Exception:
                        # decided on what the cache said? then it stands only if the cache was current
                        if t.served and not t._commit(writes=False):
                            raise _Stale() from None
                        raise
                    committed = t._commit()
                except StoreCompacted:
                    committed = False  # the snapshot's revision was compacted mid-txn: a fresh one
                except _Stale:
                    committed = False
                finally:
                    t._close()
                if committed:
                    return result
                # A txn that reads through the cache starts its retry from the current records
                # (the failure branch brought them): no sleep -- contenders for one record then
                # race again on equal terms and one of them wins each round, whereas a loser
                # that backs off while the winner goes straight on would starve.
                if attempt < retries and not t._want:
                    import random  # only on a conflict: keeps the CNI path's imports lean

                    # jittered backoff: writers that collided do not collide again in lockstep
                    time.sleep(random.uniform(0, min(0.002 * (2 ** attempt), 0.05)))
            raise StoreConflict(f"store transaction still conflicting after {retries + 1} attempts")
        finally:
            active.discard(id(self))

    def in_transaction(self) -> bool:
        """Whether this thread has a v1 ``transaction()`` open on this store (never on etcd)."""
        return False


class _Stale(Exception):
    """An ``fn`` raised on a view the cache served, and the cache was stale: run it again."""


class LockedTxn:
    """The v2 txn surface over a store's pessimistic write lock (``transaction()``: SQLite's
    ``BEGIN IMMEDIATE``, the memory store's lock), for ``run``'s fallback under contention.

    Reads are plain reads under the lock (``cached``/``hint`` make no difference: nothing can
    change under it).  Writes drop the key from the store's record cache: they are not
    committed yet (the transaction may still roll back, and SQLite would then reuse the
    revision), so they must not be cached, and the cached value they replace is stale."""

    __slots__ = ("_t", "_cache")
    revision = None

    def __init__(self, t, store):
        self._t = t
        self._cache = getattr(store, "_record_cache", None)

    def get(self, key: str, cached: bool = False):
        return self._t.get(key)

    def hint(self, key: str):
        return self._t.get(key)

    def list(self, prefix: str, keys: bool = True):
        return self._t.list(prefix)

    scan = list  # under the lock nothing is recorded anyway

    def put(self, key: str, value, lease: int = 0) -> None:
        if self._cache is not None:
            self._cache.drop(key)
        if lease:
            self._t.put(key, value, lease=lease)
        else:
            self._t.put(key, value)

    def delete(self, key: str) -> None:
        if self._cache is not None:
            self._cache.drop(key)
        self._t.delete(key)

    def delete_prefix(self, prefix: str) -> None:
        if self._cache is not None:
            self._cache.drop_prefix(prefix)
        self._t.delete_prefix(prefix)

    def create(self, key: str, value, lease: int = 0) -> None:
        if self._t.get(key) is not None:
            raise KeyExists(f"store key {key!r} exists")
        self.put(key, value, lease)


# A store with a write lock (SQLite, memory): optimistic attempts before queueing on the lock
# (the first retry is usually a refresh of a stale cache, not contention)
LOCKED_AFTER = 1


def run(store, fn: Callable[[Any], T], txn=None, retries: int = DEFAULT_RETRIES) -> T:
    """``fn(t)`` in the caller's txn (``txn``: passed down, nothing nests, one commit), or in a
    v2 txn of its own: ``store.txn(fn)``.  On etcd that is all there is (``retries`` bounds the
    attempts; conflicts are transient ``StoreConflict``).  On a store with a write lock (SQLite,
    memory) a second conflict runs ``fn`` once more under the lock (``LockedTxn``): several
    processes on one SQLite file then queue, as they always did, instead of starving each
    other.  The IPAM and the controller run every verb so."""
    if txn is not None:
        return fn(txn)
    if not getattr(store, "locking", False):
        return store.txn(fn, retries=retries)
    try:
        return store.txn(fn, retries=LOCKED_AFTER)
    except StoreConflict:
        with store.transaction() as t:
            return fn(LockedTxn(t, store))
