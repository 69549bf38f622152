"""Embedded store: one SQLite file in the state directory, WAL mode.

Why SQLite: transactional and crash-safe (a SIGKILL mid-write rolls back on
the next open), and safe for several processes at once -- the daemon and the
short-lived CNI binaries share it.  ``BEGIN IMMEDIATE`` takes the write lock up
front so a read-modify-write never loses a race; ``busy_timeout`` queues
writers instead of failing them.  A writer still waiting when it runs out gets
``StoreUnavailable`` (transient), never a raw "database is locked".

v2 on SQLite (see ``pynet.store``):

* ``txn(fn)``: ``fn`` reads inside one WAL read transaction (a consistent snapshot at the
  ``meta.revision`` it starts with, no lock taken); the commit is a short ``BEGIN IMMEDIATE``
  that re-checks every recorded read against the ``version`` (mod revision) and
  ``create_rev`` columns and applies the writes in one new revision -- the same optimistic
  semantics as etcd's compare-Txn, with the lock held only for the compare and the writes.
* ``watch``: every write of a cluster-scope key (``pynet/v2/cluster/...``) also appends to the
  ``changes`` table (revision, key, value or deletion); this host's own records (``pynet/v2/
  local/<host>/...``, and keys of before v2) are not logged -- a log row costs a commit about two
  more WAL pages, which every allocation would pay (bench_ipam: 30% of its rate), and nobody
  watches a host's local records but the host itself -- so ``watch`` takes cluster prefixes
  only here (``WATCHED``; v2 prefixes on every backend, ``keys.check_watch_prefix``).  A watch
  polls the log
  (every ``POLL_INTERVAL`` s) from its next revision.  The log keeps
  the last ``CHANGE_LOG_KEEP`` revisions (trimmed every 1000 writes) or what ``compact(R)``
  leaves; a watch from before that gets ``StoreCompacted``.
* leases: the ``leases`` table holds an absolute expiry on the wall clock (``time.time()``:
  several processes share the file, a monotonic clock is per boot *and* per process view).
  Reads hide keys whose lease has expired at once; the keys are deleted (and their delete
  events logged) by the next write transaction of any process, by ``keepalive``/``revoke``, and
  by a watch's poll -- so a watcher sees the deletion even when nobody else writes.  A wall-clock
  step can expire a lease early or late.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from typing import Any, Callable, Iterator, Optional

from pynet.errors import InvalidParameter, LeaseNotFound, StoreCompacted, StoreConflict, StoreUnavailable
from pynet.store import DELETE, PUT, Event, Listing, Record, WatchBase
from pynet.store.keys import CLUSTER, ROOT, SCHEMA, check_watch_prefix
from pynet.store.optimistic import TxnRunner

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key     TEXT PRIMARY KEY,
    value   BLOB NOT NULL,
    is_json INTEGER NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (k, v) VALUES ('revision', 0);
INSERT OR IGNORE INTO meta (k, v) VALUES ('compacted', 0);
CREATE TABLE IF NOT EXISTS changes (
    rev     INTEGER NOT NULL,
    key     TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    value   BLOB,
    is_json INTEGER
);
CREATE INDEX IF NOT EXISTS changes_rev ON changes (rev);
CREATE TABLE IF NOT EXISTS leases (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ttl     INTEGER NOT NULL,
    expires REAL NOT NULL
);
"""
# v2 columns on kv, added in place to a v1 file
_KV_COLUMNS = {"create_rev": "INTEGER NOT NULL DEFAULT 0", "lease": "INTEGER NOT NULL DEFAULT 0"}

# a row is visible unless its lease has expired (it is deleted for good by the next reap)
_LIVE = "(lease = 0 OR EXISTS (SELECT 1 FROM leases l WHERE l.id = kv.lease AND l.expires > ?))"

_RETURNING = sqlite3.sqlite_version_info >= (3, 35)
POLL_INTERVAL = 0.05
# what the change log (and so ``watch``) covers: the records every host shares
WATCHED = f"{ROOT}/{SCHEMA}/{CLUSTER}/"
REAP_INTERVAL = 0.5
CHANGE_LOG_KEEP = 10000


def _encode(value: Any) -> tuple[bytes, int]:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), 0
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode(), 1


def _decode(blob: bytes, is_json: int) -> Any:
    return json.loads(blob) if is_json else bytes(blob)


def _prefix_end(prefix: str) -> str:
    # every key starting with prefix sorts in [prefix, prefix + U+10FFFF)
    return prefix + "\U0010ffff"


_IN_QUERIES: dict[int, str] = {}


def _in_query(n: int) -> str:
    q = _IN_QUERIES.get(n)
    if q is None:
        q = _IN_QUERIES[n] = f"SELECT key, version FROM kv WHERE key IN ({','.join('?' * n)})"
    return q


def _is_lock_error(e: sqlite3.OperationalError) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


@contextlib.contextmanager
def _unavailable(path: str):
    try:
        yield
    except sqlite3.OperationalError as e:
        if _is_lock_error(e):
            raise StoreUnavailable(f"store {path} is busy (locked by another writer): {e}") from e
        raise


class _SqliteTxn:
    """``_p``: the key prefix of the store's namespace (``namespaced``), added to every key
    the caller names and stripped from every key it gets back, in the SQL itself -- what
    ``pynet.store.namespace.Namespaced`` does in Python around any store, without its
    per-call view objects and record copies on the hot path (bench_ipam: 8-12 %)."""

    _p = ""

    def __init__(self, conn: sqlite3.Connection, prefix: str = ""):
        self._c = conn
        self._p = prefix

    def _next_revision(self) -> int:
        if _RETURNING:  # one statement instead of two on every write
            rev = self._c.execute("UPDATE meta SET v = v + 1 WHERE k = 'revision' RETURNING v").fetchone()[0]
        else:
            self._c.execute("UPDATE meta SET v = v + 1 WHERE k = 'revision'")
            rev = self._c.execute("SELECT v FROM meta WHERE k = 'revision'").fetchone()[0]
        if rev % 1000 == 0 and rev > CHANGE_LOG_KEEP:  # keep the change log bounded
            _compact(self._c, rev - CHANGE_LOG_KEEP)
        return rev

    def _revision(self) -> int:
        return self._c.execute("SELECT v FROM meta WHERE k = 'revision'").fetchone()[0]

    def get(self, key: str) -> Optional[Record]:
        row = self._c.execute(
            f"SELECT value, is_json, version, create_rev, lease FROM kv WHERE key = ? AND {_LIVE}",
            (self._p + key, time.time()),
        ).fetchone()
        if row is None:
            return None
        return Record(key, _decode(row[0], row[1]), row[2], row[3], row[4])

    def _write(self, key: str, value: Any, rev: int, lease: int = 0) -> None:
        key = self._p + key
        blob, is_json = _encode(value)
        self._c.execute(
            "INSERT INTO kv (key, value, is_json, version, create_rev, lease) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, is_json = excluded.is_json, "
            "version = excluded.version, lease = excluded.lease",
            (key, blob, is_json, rev, rev, lease),
        )
        if key.startswith(WATCHED):
            self._c.execute("INSERT INTO changes (rev, key, deleted, value, is_json) VALUES (?, ?, 0, ?, ?)",
                            (rev, key, blob, is_json))

    def _remove(self, key: str, rev: int) -> bool:
        return self._remove_abs(self._p + key, rev)

    def _remove_abs(self, key: str, rev: int) -> bool:
        """``key`` as stored (with the namespace's prefix)."""
        if self._c.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount == 0:
            return False
        if key.startswith(WATCHED):
            self._c.execute("INSERT INTO changes (rev, key, deleted) VALUES (?, ?, 1)", (rev, key))
        return True

    def _check_lease(self, lease: int) -> None:
        if lease and self._c.execute("SELECT 1 FROM leases WHERE id = ? AND expires > ?",
                                     (lease, time.time())).fetchone() is None:
            raise LeaseNotFound(f"lease {lease} not found (expired or revoked)")

    def put(self, key: str, value: Any, version: Optional[int] = None, lease: int = 0) -> int:
        """Write ``value``; with ``version`` set, only if the record is still at
        that version (0 = must not exist).  Returns the new version."""
        if version is not None:
            cur = self.get(key)
            have = cur.version if cur else 0
            if have != version:
                raise StoreConflict(f"store key {key!r} changed (version {have}, expected {version})")
        self._check_lease(lease)
        rev = self._next_revision()
        self._write(key, value, rev, lease)
        return rev

    def delete(self, key: str, version: Optional[int] = None) -> bool:
        cur = self.get(key)
        if version is not None and (cur is None or cur.version != version):
            raise StoreConflict(f"store key {key!r} changed before delete")
        if cur is None:
            return False
        return self._remove(key, self._next_revision())

    def delete_prefix(self, prefix: str) -> int:
        prefix = self._p + prefix
        keys = [k for (k,) in self._c.execute(
            "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key", (prefix, _prefix_end(prefix)))]
        if not keys:
            return 0
        rev = self._next_revision()
        for k in keys:
            self._remove_abs(k, rev)
        return len(keys)

    def list(self, prefix: str) -> Listing:
        prefix = self._p + prefix
        rows = self._c.execute(
            "SELECT substr(key, ?), value, is_json, version, create_rev, lease FROM kv "
            f"WHERE key >= ? AND key < ? AND {_LIVE} ORDER BY key",
            (len(self._p) + 1, prefix, _prefix_end(prefix), time.time()),
        ).fetchall()
        return Listing([Record(k, _decode(v, j), ver, cr, ls) for k, v, j, ver, cr, ls in rows],
                       self._revision())

    def _reap(self) -> None:
        """Delete the keys of expired leases, one revision per lease (as etcd). In a write txn."""
        now = time.time()
        for (lid,) in self._c.execute("SELECT id FROM leases WHERE expires <= ?", (now,)).fetchall():
            self._revoke_keys(lid)

    def _revoke_keys(self, lid: int) -> None:
        keys = [k for (k,) in self._c.execute("SELECT key FROM kv WHERE lease = ? ORDER BY key", (lid,))]
        if keys:
            rev = self._next_revision()
            for k in keys:
                self._remove_abs(k, rev)
        self._c.execute("DELETE FROM leases WHERE id = ?", (lid,))


def _compact(conn: sqlite3.Connection, revision: int) -> None:
    have = conn.execute("SELECT v FROM meta WHERE k = 'compacted'").fetchone()[0]
    if revision > have:
        conn.execute("DELETE FROM changes WHERE rev < ?", (revision,))
        conn.execute("UPDATE meta SET v = ? WHERE k = 'compacted'", (revision,))


class SqliteStore(_SqliteTxn, TxnRunner):
    """Thread-safe: one connection per thread; every top-level call is its own
    transaction, ``transaction()`` groups several."""

    FILENAME = "pynet.db"
    locking = True  # transaction() is a real write lock (BEGIN IMMEDIATE)

    def __init__(self, path: str, busy_timeout: float = 30.0):
        self.path = path
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        conn = self._connect_new()
        try:
            with _unavailable(path):
                conn.executescript(_SCHEMA)
                have = {r[1] for r in conn.execute("PRAGMA table_info(kv)")}
                if not set(_KV_COLUMNS) <= have:
                    conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others then see it
                    have = {r[1] for r in conn.execute("PRAGMA table_info(kv)")}
                    for col, decl in _KV_COLUMNS.items():
                        if col not in have:
                            conn.execute(f"ALTER TABLE kv ADD COLUMN {col} {decl}")
                    conn.execute("COMMIT")
        finally:
            conn.close()

    @classmethod
    def in_state_dir(cls, state_dir: str) -> "SqliteStore":
        return cls(os.path.join(state_dir, cls.FILENAME))

    def _connect_new(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        with _unavailable(self.path):
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode is durable against process crashes (SIGKILL);
            # only an OS crash may lose the last commits, never corrupt the file.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        return conn

    @property
    def _c(self) -> sqlite3.Connection:  # type: ignore[override]
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect_new()
            self._local.conn = conn
            self._local.depth = 0
            self._local.snapshot = False
        return conn

    @contextlib.contextmanager
    def _write_txn(self) -> Iterator[_SqliteTxn]:
        """BEGIN IMMEDIATE ... COMMIT, leases reaped first; a lock still held by another writer
        after ``busy_timeout`` is ``StoreUnavailable``."""
        conn = self._c
        if self._local.snapshot:
            raise RuntimeError("v1 store call inside store.txn(): use the txn object")
        if self._local.depth:  # nested: join the outer transaction
            self._local.depth += 1
            try:
                yield _SqliteTxn(conn, self._p)
            finally:
                self._local.depth -= 1
            return
        with _unavailable(self.path):
            conn.execute("BEGIN IMMEDIATE")
        self._local.depth = 1
        try:
            t = _SqliteTxn(conn, self._p)
            now = time.monotonic()
            if now >= getattr(self._local, "next_reap", 0.0):
                # reads already hide expired keys; the physical delete (and its events) may lag by
                # REAP_INTERVAL, which spares every write a query on the leases table
                self._local.next_reap = now + REAP_INTERVAL
                with _unavailable(self.path):
                    t._reap()
            yield t
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            with _unavailable(self.path):
                conn.execute("COMMIT")
        finally:
            self._local.depth = 0

    transaction = _write_txn

    # Single operations outside transaction() run in their own transaction.
    def get(self, key):
        self._c
        with _unavailable(self.path):
            return _SqliteTxn.get(self, key)

    def list(self, prefix):
        conn = self._c
        with _unavailable(self.path):
            if self._local.depth or self._local.snapshot:
                return _SqliteTxn.list(self, prefix)
            conn.execute("BEGIN")  # the rows and the revision from one snapshot
            try:
                return _SqliteTxn.list(self, prefix)
            finally:
                conn.execute("COMMIT")

    def put(self, key, value, version=None, lease=0):
        with self.transaction() as t:
            return t.put(key, value, version, lease)

    def delete(self, key, version=None):
        with self.transaction() as t:
            return t.delete(key, version)

    def delete_prefix(self, prefix):
        with self.transaction() as t:
            return t.delete_prefix(prefix)

    def update(self, key: str, fn: Callable[[Any], Any]) -> Any:
        """Atomically replace the value with ``fn(old_value_or_None)``."""
        with self.transaction() as t:
            cur = t.get(key)
            new = fn(cur.value if cur else None)
            t.put(key, new)
            return new

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # --- v2 -------------------------------------------------------------------------------------
    def _snapshot(self) -> "_SqliteSnapshot":
        conn = self._c
        if self._local.depth or self._local.snapshot:
            raise RuntimeError("store.txn() inside store.transaction() or another txn")
        with _unavailable(self.path):
            conn.execute("BEGIN")
            try:
                rev = _SqliteTxn(conn)._revision()  # the first read fixes the WAL snapshot
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        self._local.snapshot = True
        return _SqliteSnapshot(self, conn, rev, self._p)

    def _commit(self, compares: list[tuple], ops: list[tuple], want=()) -> tuple:
        # reads only (validating what the record cache answered): a read transaction is atomic enough
        with (self.transaction() if ops else self._read_txn()) as t:
            c = t._c
            p = self._p
            keyed = {p + cmp[1]: (cmp[2] if cmp[0] == "mod" else 0) for cmp in compares if cmp[0] != "range_lt"}
            ok = True
            if keyed:  # every per-key compare in one query: each row must match, absent keys have none
                keys = list(keyed)
                present = 0
                for i in range(0, len(keys), 500):  # under SQLite's bound-parameter limit
                    part = keys[i:i + 500]
                    for k, v in c.execute(_in_query(len(part)), part):
                        present += 1
                        if keyed[k] != v:
                            ok = False
                ok = ok and present == sum(1 for v in keyed.values() if v)
            for cmp in compares:
                if not ok:
                    break
                if cmp[0] == "range_lt":
                    ok = c.execute("SELECT 1 FROM kv WHERE key >= ? AND key < ? AND version >= ? LIMIT 1",
                                   (p + cmp[1], _prefix_end(p + cmp[1]), cmp[2])).fetchone() is None
            if not ok:
                return False, t._revision(), {k: _SqliteTxn.get(t, k) for k in want}
            for op in ops:
                if op[0] == "put":
                    t._check_lease(op[3])
            rev = None
            for op in ops:
                if op[0] == "put":
                    rev = rev or t._next_revision()
                    t._write(op[1], op[2], rev, op[3])
                elif op[0] == "delete_prefix":
                    keys = [k for (k,) in c.execute("SELECT key FROM kv WHERE key >= ? AND key < ?",
                                                    (p + op[1], _prefix_end(p + op[1])))]
                    if keys:
                        rev = rev or t._next_revision()
                        for k in keys:
                            t._remove_abs(k, rev)
                elif c.execute("SELECT 1 FROM kv WHERE key = ?", (p + op[1],)).fetchone():
                    rev = rev or t._next_revision()
                    t._remove(op[1], rev)
            return True, rev or t._revision(), {}

    @contextlib.contextmanager
    def _read_txn(self) -> Iterator[_SqliteTxn]:
        conn = self._c
        if self._local.depth or self._local.snapshot:
            raise RuntimeError("store.txn() inside store.transaction() or another txn")
        with _unavailable(self.path):
            conn.execute("BEGIN")
            try:
                yield _SqliteTxn(conn, self._p)
            finally:
                conn.execute("COMMIT")

    def in_transaction(self) -> bool:
        return bool(getattr(self._local, "depth", 0))

    def revision(self) -> int:
        self._c
        with _unavailable(self.path):
            return self._revision()

    def compact(self, revision: int) -> None:
        with self.transaction() as t:
            if revision > t._revision():
                raise ValueError(f"cannot compact to {revision}: the store is at {t._revision()}")
            _compact(t._c, revision)

    def watch(self, prefix: str, from_revision: Optional[int] = None) -> "_SqliteWatch":
        prefix = check_watch_prefix(self._p + prefix)
        if not prefix.startswith(WATCHED):
            raise InvalidParameter(f"the SQLite store logs changes under {WATCHED!r} only "
                                   f"(a host's local records are not watched): {prefix!r}")
        return _SqliteWatch(self, prefix, from_revision or self.revision() + 1, len(self._p))

    def namespaced(self, prefix: str) -> "SqliteStore":
        """This store seen under ``prefix`` (``pynet/v2/local/<host>/``): keys relative, as
        ``pynet.store.namespace.Namespaced`` makes them, with the prefix applied in the SQL.
        The view shares this store's connections (one per thread: a txn of one view inside
        another's is refused, as on one store) and has a record cache of its own."""
        if not prefix.endswith("/"):
            raise ValueError(f"a store namespace ends with '/': {prefix!r}")
        view = object.__new__(_SqliteNamespace)
        view.__dict__.update({k: v for k, v in self.__dict__.items() if k != "_rc"})
        view._p = view.prefix = prefix
        view.inner = self if not self._p else self.inner
        return view

    def grant(self, ttl: int) -> int:
        if ttl <= 0:
            raise ValueError("lease TTL must be positive")
        with self.transaction() as t:
            return t._c.execute("INSERT INTO leases (ttl, expires) VALUES (?, ?)",
                                (int(ttl), time.time() + ttl)).lastrowid

    def keepalive(self, lease: int) -> int:
        with self.transaction() as t:  # reaps first: an expired lease is gone, not renewed
            row = t._c.execute("SELECT ttl FROM leases WHERE id = ?", (lease,)).fetchone()
            if row is None:
                raise LeaseNotFound(f"lease {lease} not found (expired or revoked)")
            t._c.execute("UPDATE leases SET expires = ? WHERE id = ?", (time.time() + row[0], lease))
            return row[0]

    def revoke(self, lease: int) -> None:
        with self.transaction() as t:
            if t._c.execute("SELECT 1 FROM leases WHERE id = ?", (lease,)).fetchone() is None:
                raise LeaseNotFound(f"lease {lease} not found (expired or revoked)")
            t._revoke_keys(lease)


class _SqliteNamespace(SqliteStore):
    """A ``SqliteStore.namespaced`` view; ``sibling(prefix)``: another namespace of the same
    file (the cluster scope beside the local one), as ``Namespaced.sibling``."""

    def sibling(self, prefix: str) -> "SqliteStore":
        return self.inner.namespaced(prefix)


class _SqliteSnapshot:
    def __init__(self, store: SqliteStore, conn: sqlite3.Connection, revision: int, prefix: str = ""):
        self._s = store
        self._t = _SqliteTxn(conn, prefix)
        self.revision = revision

    def get(self, key: str) -> Optional[Record]:
        with _unavailable(self._s.path):
            return self._t.get(key)

    def range(self, prefix: str) -> list[Record]:
        with _unavailable(self._s.path):
            return list(self._t.list(prefix))

    def close(self):
        self._s._local.snapshot = False
        with contextlib.suppress(sqlite3.Error):
            self._t._c.execute("COMMIT")


class _SqliteWatch(WatchBase):
    """Polls the ``changes`` table from the caller's thread, on a connection of its own."""

    def __init__(self, store: SqliteStore, prefix: str, from_revision: int, strip: int = 0):
        self._s = store
        self._prefix = prefix
        self._strip = strip  # a namespaced store's events name relative keys
        self._next = from_revision
        self._buf: list[Event] = []
        self._conn: Optional[sqlite3.Connection] = None
        self._closed = False

    def _poll(self) -> None:
        if self._conn is None:
            self._conn = self._s._connect_new()
        c = self._conn
        t = _SqliteTxn(c)
        with _unavailable(self._s.path):
            if c.execute("SELECT 1 FROM leases WHERE expires <= ? LIMIT 1", (time.time(),)).fetchone():
                c.execute("BEGIN IMMEDIATE")  # expired leases: delete their keys so we see it
                try:
                    t._reap()
                except BaseException:
                    c.execute("ROLLBACK")
                    raise
                c.execute("COMMIT")
            c.execute("BEGIN")
            try:
                compacted = c.execute("SELECT v FROM meta WHERE k = 'compacted'").fetchone()[0]
                if self._next < compacted:
                    self._closed = True
                    raise StoreCompacted(revision=compacted)
                rows = c.execute(
                    "SELECT rev, key, deleted, value, is_json FROM changes "
                    "WHERE rev >= ? AND key >= ? AND key < ? ORDER BY rev, rowid",
                    (self._next, self._prefix, _prefix_end(self._prefix))).fetchall()
                last = t._revision()
            finally:
                c.execute("COMMIT")
        n = self._strip
        for rev, key, deleted, value, is_json in rows:
            key = key[n:]
            self._buf.append(Event(DELETE, key, None, rev) if deleted
                             else Event(PUT, key, _decode(value, is_json), rev))
        # everything up to `last` has been seen (ours or not): the next poll starts after it
        self._next = max(self._next, last + 1)

    def get(self, timeout: Optional[float] = None) -> Optional[Event]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            if self._buf:
                return self._buf.pop(0)
            self._poll()
            if self._buf:
                return self._buf.pop(0)
            left = POLL_INTERVAL if deadline is None else min(POLL_INTERVAL, deadline - time.monotonic())
            if left <= 0:
                return None
            time.sleep(left)
        return None

    def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def closed(self) -> bool:
        return self._closed
