"""The firewall behind the state directory's cross-process lock.

The daemon, CNI binaries working in-process, the CLI and the scenario workers
all sync one rule set from their own processes; ``SerialFirewall`` makes each
sync re-read the state from the store under one flock (``firewall.lock`` in
the state dir), so the last sync always applies the newest state.  Built by
the composition root (``pynet.root``); the lock is ``pynet.locks.file_lock``.
"""
from __future__ import annotations

from pynet.locks import file_lock


class SerialFirewall:
    """Serialises firewall syncs across processes (the daemon and CNI binaries
    beside it): under the state dir's lock, the state is read again from the
    store and applied, so the last sync always applies the newest state."""

    reads_state = True  # callers need not read the state for sync(): it is read here

    def __init__(self, inner, lock_path: str, state):
        self.inner = inner
        self.lock_path = lock_path
        self.state = state

    def sync(self, networks=None, endpoints=None, force: bool = False, changed=None) -> None:
        """``changed``: the owner ids the caller changed (None: everything may have).
        Another process's change since is already in the kernel (it synced under this
        lock too), so this one only has to apply its own."""
        with file_lock(self.lock_path):
            if changed is None:
                self.inner.sync(*self.state(), force=force)
            else:
                self.inner.sync(*self.state(), force=force, changed=changed)

    def __getattr__(self, name):
        return getattr(self.inner, name)
