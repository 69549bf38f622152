"""Embedded store: one SQLite file in the state directory, WAL mode.

Why SQLite: transactional and crash-safe (a SIGKILL mid-write rolls back on
the next open), and safe for several processes at once -- the daemon and the
short-lived CNI binaries share it.  ``BEGIN IMMEDIATE`` takes the write lock up
front so a read-modify-write never loses a race; ``busy_timeout`` queues
writers instead of failing them.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from typing import Any, Callable, Iterator, Optional

from pynet.errors import StoreConflict
from pynet.store import Record

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key     TEXT PRIMARY KEY,
    value   BLOB NOT NULL,
    is_json INTEGER NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (k, v) VALUES ('revision', 0);
"""


def _encode(value: Any) -> tuple[bytes, int]:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), 0
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode(), 1


def _decode(blob: bytes, is_json: int) -> Any:
    return json.loads(blob) if is_json else bytes(blob)


def _prefix_end(prefix: str) -> str:
    # every key starting with prefix sorts in [prefix, prefix + U+10FFFF)
    return prefix + "\U0010ffff"


class _SqliteTxn:
    def __init__(self, conn: sqlite3.Connection):
        self._c = conn

    def _next_revision(self) -> int:
        self._c.execute("UPDATE meta SET v = v + 1 WHERE k = 'revision'")
        return self._c.execute("SELECT v FROM meta WHERE k = 'revision'").fetchone()[0]

    def get(self, key: str) -> Optional[Record]:
        row = self._c.execute(
            "SELECT value, is_json, version FROM kv WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        return Record(key, _decode(row[0], row[1]), row[2])

    def put(self, key: str, value: Any, version: Optional[int] = None) -> int:
        """Write ``value``; with ``version`` set, only if the record is still at
        that version (0 = must not exist).  Returns the new version."""
        if version is not None:
            cur = self.get(key)
            have = cur.version if cur else 0
            if have != version:
                raise StoreConflict(f"store key {key!r} changed (version {have}, expected {version})")
        blob, is_json = _encode(value)
        rev = self._next_revision()
        self._c.execute(
            "INSERT INTO kv (key, value, is_json, version) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
            "is_json = excluded.is_json, version = excluded.version",
            (key, blob, is_json, rev),
        )
        return rev

    def delete(self, key: str, version: Optional[int] = None) -> bool:
        if version is not None:
            cur = self.get(key)
            if cur is None or cur.version != version:
                raise StoreConflict(f"store key {key!r} changed before delete")
        return self._c.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount > 0

    def delete_prefix(self, prefix: str) -> int:
        return self._c.execute(
            "DELETE FROM kv WHERE key >= ? AND key < ?", (prefix, _prefix_end(prefix))
        ).rowcount

    def list(self, prefix: str) -> list[Record]:
        rows = self._c.execute(
            "SELECT key, value, is_json, version FROM kv WHERE key >= ? AND key < ? ORDER BY key",
            (prefix, _prefix_end(prefix)),
        ).fetchall()
        return [Record(k, _decode(v, j), ver) for k, v, j, ver in rows]


class SqliteStore(_SqliteTxn):
    """Thread-safe: one connection per thread; every top-level call is its own
    transaction, ``transaction()`` groups several."""

    FILENAME = "pynet.db"

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        with self._connect_new() as conn:
            conn.executescript(_SCHEMA)

    @classmethod
    def in_state_dir(cls, state_dir: str) -> "SqliteStore":
        return cls(os.path.join(state_dir, cls.FILENAME))

    def _connect_new(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode is durable against process crashes (SIGKILL);
        # only an OS crash may lose the last commits, never corrupt the file.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    @property
    def _c(self) -> sqlite3.Connection:  # type: ignore[override]
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect_new()
            self._local.conn = conn
            self._local.depth = 0
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_SqliteTxn]:
        conn = self._c
        if self._local.depth:  # nested: join the outer transaction
            self._local.depth += 1
            try:
                yield _SqliteTxn(conn)
            finally:
                self._local.depth -= 1
            return
        conn.execute("BEGIN IMMEDIATE")
        self._local.depth = 1
        try:
            yield _SqliteTxn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")
        finally:
            self._local.depth = 0

    # Single operations outside transaction() run in their own transaction.
    def put(self, key, value, version=None):
        with self.transaction() as t:
            return t.put(key, value, version)

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
