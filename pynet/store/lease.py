"""Keeping a lease alive: what a host agent does for its ``hosts/<host>`` and ``vteps/...`` keys.

    lease = store.grant(15)
    keeper = LeaseKeeper(store, lease, ttl=15, on_lost=restart_registration).start()
    ...
    keeper.stop()           # the keys then vanish one TTL later (or store.revoke(lease) at once)

A daemon thread renews every ``ttl / 3`` s (two renewals may fail before the lease can expire).
``on_lost(err)`` is called once, from that thread, when the lease is gone (``LeaseNotFound``:
expired or revoked) or when the store stayed unavailable for a whole TTL (the lease has then
expired, or will, from the cluster's point of view); the keeper stops then.  The callback grants a
new lease and puts its keys again -- never from inside a ``store.txn``.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from pynet.errors import LeaseNotFound, StoreUnavailable


class LeaseKeeper:
    def __init__(self, store, lease: int, ttl: float, on_lost: Optional[Callable[[Exception], None]] = None):
        self.store = store
        self.lease = lease
        self.ttl = ttl
        self.on_lost = on_lost
        self.lost: Optional[Exception] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-keeper {lease}", daemon=True)

    def start(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def _run(self) -> None:
        interval = max(self.ttl / 3.0, 0.05)
        last_ok = time.monotonic()
        while not self._stop.wait(interval):
            try:
                self.store.keepalive(self.lease)
                last_ok = time.monotonic()
            except LeaseNotFound as e:
                return self._lose(e)
            except StoreUnavailable as e:
                if time.monotonic() - last_ok >= self.ttl:
                    return self._lose(e)

    def _lose(self, err: Exception) -> None:
        self.lost = err
        if self.on_lost is not None and not self._stop.is_set():
            self.on_lost(err)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
