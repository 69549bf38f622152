"""The Store interface: a versioned key-value store, designed for etcd first and satisfied by SQLite.

Keys are '/'-separated strings; v2 keys name their schema version and scope
(``pynet/v2/local/<host>/...``, ``pynet/v2/cluster/...``: ``pynet.store.keys`` builds and checks
them).  Values are JSON-able objects or raw ``bytes`` (bitmap blocks).  Every record carries the
store-wide revision of its last write (``version``, etcd's ``mod_revision``) and of its creation
(``create_revision``).

Two APIs live side by side while the callers migrate:

* v1 (today's callers): ``get/put/delete/list/delete_prefix/update`` and ``transaction()``, a
  pessimistic lock (SQLite ``BEGIN IMMEDIATE``, the memory store's lock).  etcd has no such lock:
  ``EtcdStore.transaction()`` raises; ``put(version=...)`` / ``delete(version=...)`` stay
  compare-and-swap on every backend.
* v2:
  - ``txn(fn, retries=N)``: optimistic.  ``fn(txn)`` runs against one snapshot (etcd: every read
    at the first read's revision; SQLite: one WAL read transaction; memory: MVCC history); every
    key read is recorded with its ``mod_revision`` (0 = absent), every ``list`` with its prefix.
    Commit is ONE conditional write: all writes apply, in one new revision, only if no recorded
    key changed (``mod_revision ==``, or ``create_revision == 0`` for a key read as absent) and
    no key appeared or changed under a listed prefix (``mod_revision < snapshot + 1`` over the
    range; deletions there are caught by the per-key compares).  On conflict ``fn`` runs again
    on a fresh snapshot, at most ``retries`` more times, then ``StoreConflict`` (transient).  An
    exception from ``fn`` writes nothing.  ``fn`` may therefore run several times: no side
    effects in it.  No nesting: pass the txn down.  Read-only txns cost no commit.
  - the record cache (one per store object, i.e. per process; ``pynet.store.optimistic``):
    ``t.get(key, cached=True)`` may answer without a round trip; the read is recorded with the
    cached ``mod_revision`` and validated by the commit like any other, and a failed commit
    brings the current records back (etcd: the Txn's failure branch) so the retry needs no read.
    A warm read-modify-write is then ONE round trip on etcd.  Read-only txns and txns whose
    ``fn`` raised are validated (one compare-only commit) when the cache answered a read.
    ``t.hint(key)``: read without recording (no compare; a later put is blind) -- for values
    that only steer a choice the recorded reads make correct (the IPAM's next-fit cursor).
    ``t.delete_prefix(prefix)``: one blind delete-range at commit.
  - ``locking``: whether ``transaction()`` is a pessimistic write lock (SQLite, memory);
    ``in_transaction()``: whether this thread has one open (the IPAM joins it then).
    ``EtcdStore.round_trips`` counts HTTP requests, so tests count round trips exactly.
  - ``list(prefix)`` returns a ``Listing``: a list of records with ``.revision``, the revision it
    read at.  ``watch(prefix, from_revision)`` delivers every change with revision >=
    ``from_revision`` in revision order (``Event``: put/delete, key, value, revision); the only
    race-free start is "list at R, then watch from R + 1".  When the store no longer has the
    asked-for history (compaction), the watch raises ``StoreCompacted``: list again, watch again.
  - leases: ``grant(ttl) -> id``, ``keepalive(id) -> ttl``, ``revoke(id)``; ``put(..., lease=id)``
    keys vanish with their lease (a delete event is delivered).  ``LeaseNotFound`` once expired.
  - an unreachable store raises ``StoreUnavailable`` (transient: Docker 503, CNI code 11).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Protocol, TypeVar

T = TypeVar("T")

PUT = "put"
DELETE = "delete"


@dataclass(frozen=True)
class Record:
    key: str
    value: Any
    version: int  # revision of the last write (etcd mod_revision); PENDING if written in this txn
    create_revision: int = 0
    lease: int = 0


# ``version`` of a record written earlier in the same v2 txn (read-your-writes, not committed yet)
PENDING = -1


class Listing(list):
    """The records under a prefix (sorted by key) and the store revision they were read at.
    A plain list for v1 callers; ``.revision`` for "list at R, then watch from R + 1"."""

    def __init__(self, records=(), revision: int = 0):
        super().__init__(records)
        self.revision = revision


@dataclass(frozen=True)
class Event:
    type: str  # PUT or DELETE
    key: str
    value: Any  # None for DELETE
    revision: int


class Watch(Protocol):
    def get(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next event, or None when ``timeout`` passes first.  Raises ``StoreCompacted`` (resync)
        or ``StoreUnavailable``; after that the watch is closed."""
        ...

    def close(self) -> None: ...


class WatchBase:
    """What every backend's watch shares: iteration until closed, and use as a
    context manager.  Subclasses implement ``get``, ``close`` and ``closed``."""

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Event]:
        while not self.closed:
            ev = self.get()  # type: ignore[attr-defined]
            if ev is not None:
                yield ev

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()  # type: ignore[attr-defined]


class Txn(Protocol):
    def get(self, key: str) -> Optional[Record]: ...
    def put(self, key: str, value: Any, version: Optional[int] = None) -> int: ...
    def delete(self, key: str, version: Optional[int] = None) -> bool: ...
    def list(self, prefix: str) -> list[Record]: ...


class TxnV2(Protocol):
    """What ``fn`` gets in ``store.txn(fn)``."""
    revision: Optional[int]  # the snapshot's revision, fixed by the first fetched read

    def get(self, key: str, cached: bool = False) -> Optional[Record]:
        """``cached``: may come from the record cache (validated at commit); its value is shared
        with the cache: do not mutate it."""
        ...
    def hint(self, key: str) -> Optional[Record]:
        """Read without recording: no compare at commit, may be stale."""
        ...
    def list(self, prefix: str) -> Listing: ...
    def scan(self, prefix: str) -> Listing:
        """``list`` without recording (no compares at commit, may be stale): for what only
        steers a choice, so a txn stays within etcd's --max-txn-ops compares."""
        ...
    def put(self, key: str, value: Any, lease: int = 0) -> None: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def create(self, key: str, value: Any, lease: int = 0) -> None:
        """Put only if absent: ``KeyExists`` when the snapshot has it; a concurrent creation makes
        the commit conflict, and the retry then sees the key and raises ``KeyExists``."""
        ...


class Store(Txn, Protocol):
    locking: bool  # transaction() is a pessimistic write lock (not on etcd)

    def in_transaction(self) -> bool:
        """This thread has a v1 ``transaction()`` open on this store."""
        ...

    def transaction(self) -> "Iterator[Txn]":
        """v1: context manager, all-or-nothing, serializable against other writers (not on etcd)."""
        ...

    def update(self, key: str, fn: Callable[[Any], Any]) -> Any: ...

    def txn(self, fn: Callable[[TxnV2], T], retries: int = 10) -> T: ...
    def watch(self, prefix: str, from_revision: Optional[int] = None) -> Watch: ...
    def grant(self, ttl: int) -> int: ...
    def keepalive(self, lease: int) -> int: ...
    def revoke(self, lease: int) -> None: ...
    def compact(self, revision: int) -> None: ...
    def revision(self) -> int: ...

    def close(self) -> None: ...
