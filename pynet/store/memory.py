"""In-memory store with the same semantics as SqliteStore, for unit tests."""
from __future__ import annotations

import contextlib
import copy
import threading
from typing import Any, Callable, Iterator, Optional

from pynet.errors import StoreConflict
from pynet.store import Record


class MemoryStore:
    def __init__(self):
        self._data: dict[str, tuple[Any, int]] = {}
        self._rev = 0
        self._lock = threading.RLock()

    def get(self, key: str) -> Optional[Record]:
        with self._lock:
            if key not in self._data:
                return None
            v, ver = self._data[key]
            return Record(key, copy.deepcopy(v), ver)

    def put(self, key: str, value: Any, version: Optional[int] = None) -> int:
        with self._lock:
            if version is not None:
                have = self._data.get(key, (None, 0))[1]
                if have != version:
                    raise StoreConflict(f"store key {key!r} changed")
            self._rev += 1
            self._data[key] = (copy.deepcopy(value), self._rev)
            return self._rev

    def delete(self, key: str, version: Optional[int] = None) -> bool:
        with self._lock:
            if version is not None and self._data.get(key, (None, -1))[1] != version:
                raise StoreConflict(f"store key {key!r} changed before delete")
            return self._data.pop(key, None) is not None

    def delete_prefix(self, prefix: str) -> int:
        with self._lock:
            keys = [k for k in self._data if k.startswith(prefix)]
            for k in keys:
                del self._data[k]
            return len(keys)

    def list(self, prefix: str) -> list[Record]:
        with self._lock:
            return [Record(k, copy.deepcopy(v), ver)
                    for k, (v, ver) in sorted(self._data.items()) if k.startswith(prefix)]

    @contextlib.contextmanager
    def transaction(self) -> Iterator["MemoryStore"]:
        with self._lock:
            snapshot = (dict(self._data), self._rev)
            try:
                yield self
            except BaseException:
                self._data, self._rev = snapshot
                raise

    def update(self, key: str, fn: Callable[[Any], Any]) -> Any:
        with self.transaction():
            cur = self.get(key)
            new = fn(cur.value if cur else None)
            self.put(key, new)
            return new

    def close(self) -> None:
        pass
