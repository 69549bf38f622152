"""Cross-process locks on files of the state directory (standard library only).

``file_lock(path)`` is the one lock primitive: the CNI verbs take
``<state dir>/cni.lock`` / ``network.lock`` with it, the serialising firewall
(``pynet.firewall.serial``) ``firewall.lock``.  A leaf, so the CNI ADD path
and the IPAM-only path load nothing more for it.
"""
from __future__ import annotations

import contextlib
import fcntl
import os


@contextlib.contextmanager
def file_lock(path: str):
    """An exclusive flock on ``path``: excludes other processes and, since each
    call opens its own file description, other threads too."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def state_lock(state_dir: str, what: str):
    """The lock ``<state_dir>/<what>.lock`` (the state dir made if missing)."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    return file_lock(os.path.join(state_dir, f"{what}.lock"))
