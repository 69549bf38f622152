"""Sysctl: read and write /proc/sys, in this or another network namespace.

Paths may be written dotted (``net.ipv4.ip_forward``), slashed
(``net/ipv4/ip_forward``) or in full (``/proc/sys/net/ipv4/ip_forward``).  An
interface name inside a dotted path may itself contain dots only if given
slashed (``net/ipv6/conf/eth0.100/disable_ipv6``), as sysctl(8) does.

``/proc/sys/net`` shows the namespace of the task that opens it, so a write
into another namespace runs in a short-lived thread that first enters that
namespace with setns(2) (setns(CLONE_NEWNET) changes only the calling thread).
"""
from __future__ import annotations

import os
import threading
from typing import Optional

from pynet import errors

CLONE_NEWNET = 0x40000000
_libc = None


def _path(path: str) -> str:
    if path.startswith("/proc/sys/"):
        return path
    if "/" not in path:
        path = path.replace(".", "/")
    return "/proc/sys/" + path.lstrip("/")


def _setns(netns_path: str) -> None:
    global _libc
    import ctypes
    if _libc is None:
        # the process's own symbols (libc is linked into python): ctypes.util.find_library
        # would exec ``ldconfig -p`` on every CNI call that enters a namespace
        _libc = ctypes.CDLL(None, use_errno=True)
    try:
        fd = os.open(netns_path, os.O_RDONLY)
    except FileNotFoundError:
        from pynet.netlink import NetnsNotFound
        raise NetnsNotFound(f"network namespace {netns_path} does not exist") from None
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise errors.KernelError(f"cannot enter network namespace {netns_path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(netns_path: Optional[str], fn):
    """Run ``fn()`` with the calling thread in ``netns_path`` (a short-lived
    thread does it; None = here) and return its result or raise its error.
    Sockets opened by ``fn`` stay in that namespace."""
    if not netns_path:
        return fn()
    box: dict = {}

    def run():
        try:
            _setns(netns_path)
            box["value"] = fn()
        except BaseException as e:   # handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=run, name="pynet-sysctl-netns", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


class Sysctl:
    """``Sysctl(netns=None)``: ``netns`` is the default namespace path of
    every call; each call may name another."""

    def __init__(self, netns: Optional[str] = None):
        self.netns = netns

    def set(self, path: str, value, netns: Optional[str] = None) -> None:
        p = _path(path)
        v = str(int(value)) if isinstance(value, bool) else str(value)

        def write():
            try:
                with open(p, "w") as f:
                    f.write(v)
            except FileNotFoundError:
                raise errors.NotFound(f"sysctl {path} does not exist") from None
            except OSError as e:
                raise errors.KernelError(f"cannot set sysctl {path}={v}: {e.strerror or e}") from None

        run_in_netns(netns or self.netns, write)

    def get(self, path: str, netns: Optional[str] = None) -> str:
        p = _path(path)

        def read():
            try:
                with open(p) as f:
                    return f.read().strip()
            except FileNotFoundError:
                raise errors.NotFound(f"sysctl {path} does not exist") from None
            except OSError as e:
                raise errors.KernelError(f"cannot read sysctl {path}: {e.strerror or e}") from None

        return run_in_netns(netns or self.netns, read)


class FakeSysctl:
    """Records values per (namespace, dotted path); ``get`` of an unset key
    answers ``default`` (or NotFound when that is None)."""

    def __init__(self, netns: Optional[str] = None, default: Optional[str] = "0"):
        self.netns = netns
        self.values: dict[tuple[Optional[str], str], str] = {}
        self.default = default

    @staticmethod
    def _key(path: str) -> str:
        return _path(path)[len("/proc/sys/"):].replace("/", ".")

    def set(self, path: str, value, netns: Optional[str] = None) -> None:
        v = str(int(value)) if isinstance(value, bool) else str(value)
        self.values[(netns or self.netns, self._key(path))] = v

    def get(self, path: str, netns: Optional[str] = None) -> str:
        key = (netns or self.netns, self._key(path))
        if key in self.values:
            return self.values[key]
        if self.default is None:
            raise errors.NotFound(f"sysctl {path} does not exist")
        return self.default
