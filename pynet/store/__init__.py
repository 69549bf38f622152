"""The Store interface: a small versioned key-value store with transactions.

Keys are '/'-separated strings (``networks/<id>``, ``ipam/pools/<id>``).  Values
are JSON-able objects or raw ``bytes`` (bitmap blocks).  Every record has a
version that changes on each write, so callers can compare-and-swap; a
``transaction()`` groups reads and writes atomically, which is what the IPAM
needs to stay correct with several processes (daemon + CNI binaries) at once.

The embedded implementation is SQLite (``pynet.store.sqlite``); a cluster
store (etcd) will implement the same methods, transactions as optimistic
compare-on-revision retries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Protocol


@dataclass(frozen=True)
class Record:
    key: str
    value: Any
    version: int


class Txn(Protocol):
    def get(self, key: str) -> Optional[Record]: ...
    def put(self, key: str, value: Any, version: Optional[int] = None) -> int: ...
    def delete(self, key: str, version: Optional[int] = None) -> bool: ...
    def list(self, prefix: str) -> list[Record]: ...


class Store(Txn, Protocol):
    def transaction(self) -> "Iterator[Txn]":
        """Context manager: all-or-nothing, serializable against other writers."""
        ...

    def update(self, key: str, fn: Callable[[Any], Any]) -> Any: ...

    def close(self) -> None: ...


def open_store(url_or_dir: str) -> "Store":
    """Open the store named by a state directory (embedded) or a URL."""
    from pynet.store.sqlite import SqliteStore

    return SqliteStore.in_state_dir(url_or_dir)
