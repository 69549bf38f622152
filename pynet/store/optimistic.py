"""The optimistic transaction shared by every backend (see ``pynet.store`` for the semantics).

A backend supplies two things:

* ``_snapshot()`` -> an object with ``revision`` (int), ``get(key)``, ``range(prefix)`` (both read at
  that one revision; ``StoreCompacted`` if it is gone) and ``close()``;
* ``_commit(compares, ops)`` -> bool: apply ``ops`` in one new revision iff every compare holds, as
  one atomic step (etcd: one Txn; SQLite: one ``BEGIN IMMEDIATE``; memory: under its lock).

  compares: ``("mod", key, rev)``      the key's mod_revision is still ``rev``
            ``("absent", key)``        the key's create_revision is 0 (it does not exist)
            ``("range_lt", prefix, r)`` every key under ``prefix`` has mod_revision < ``r``
  ops:      ``("put", key, value, lease)``, ``("delete", key)``
"""
from __future__ import annotations

import copy
import threading
import time
from typing import Any, Callable, Optional, TypeVar

from pynet.errors import KeyExists, StoreCompacted, StoreConflict
from pynet.store import PENDING, Listing, Record

T = TypeVar("T")
DEFAULT_RETRIES = 10


class OptimisticTxn:
    """One attempt of ``store.txn(fn)``: reads recorded, writes buffered until commit."""

    def __init__(self, backend):
        self._backend = backend
        self._snap = None
        self._reads: dict[str, int] = {}  # key -> mod_revision seen (0: absent)
        self._ranges: list[str] = []
        self._writes: dict[str, tuple] = {}  # key -> op; the last write of a key wins (etcd: one op per key)
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

    def get(self, key: str) -> Optional[Record]:
        snap = self._snapshot()
        if key in self._writes:
            op = self._writes[key]
            return Record(key, copy.deepcopy(op[2]), PENDING, lease=op[3]) if op[0] == "put" else None
        rec = snap.get(key)
        self._reads.setdefault(key, rec.version if rec else 0)
        return rec

    def list(self, prefix: str) -> Listing:
        snap = self._snapshot()
        merged = {}
        for rec in snap.range(prefix):
            self._reads.setdefault(rec.key, rec.version)
            merged[rec.key] = rec
        self._ranges.append(prefix)
        for key, op in self._writes.items():
            if key.startswith(prefix):
                if op[0] == "put":
                    merged[key] = Record(key, copy.deepcopy(op[2]), PENDING, lease=op[3])
                else:
                    merged.pop(key, None)
        return Listing([merged[k] for k in sorted(merged)], snap.revision)

    def put(self, key: str, value: Any, lease: int = 0) -> None:
        self._check_open()
        # deep copy now: the caller may mutate its object after put(), as with the v1 API
        self._writes[key] = ("put", key, copy.deepcopy(value), lease)

    def delete(self, key: str) -> None:
        self._check_open()
        self._writes[key] = ("delete", key)

    def create(self, key: str, value: Any, lease: int = 0) -> None:
        if self.get(key) is not None:  # records the read: absent -> compare create_revision == 0
            raise KeyExists(f"store key {key!r} exists")
        self.put(key, value, lease)

    def _check_open(self):
        if self._done:
            raise RuntimeError("store txn used after its function returned")

    def _commit(self) -> bool:
        self._close()  # end the snapshot first (SQLite: its read transaction) and take no more ops
        if not self._writes:
            return True  # read-only: the snapshot was consistent, nothing to make atomic
        compares: list[tuple] = []
        for key, rev in self._reads.items():
            compares.append(("mod", key, rev) if rev else ("absent", key))
        if self._snap is not None:
            for prefix in dict.fromkeys(self._ranges):
                compares.append(("range_lt", prefix, self._snap.revision + 1))
        return self._backend._commit(compares, list(self._writes.values()))

    def _close(self):
        if self._snap is not None and not self._done:
            self._snap.close()
        self._done = True


class TxnRunner:
    """Mixin: ``txn(fn, retries)`` over a backend's ``_snapshot``/``_commit``."""

    _txn_local = threading.local()

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
                    result = fn(t)
                    committed = t._commit()
                except StoreCompacted:
                    committed = False  # the snapshot's revision was compacted mid-txn: a fresh one
                finally:
                    t._close()
                if committed:
                    return result
                if attempt < retries:
                    import random  # only on a conflict: keeps the CNI path's imports lean

                    # jittered backoff: writers that collided do not collide again in lockstep
                    time.sleep(random.uniform(0, min(0.002 * (2 ** attempt), 0.05)))
            raise StoreConflict(f"store transaction still conflicting after {retries + 1} attempts")
        finally:
            active.discard(id(self))
