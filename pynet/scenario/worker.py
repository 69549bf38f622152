"""A worker: a fresh Python process that enters one network namespace and
serves one object's methods over a pipe.

Why a fresh process (``subprocess`` + ``python -m pynet.scenario.worker``) and
not ``fork``: pyroute2 and scapy both hold netlink/packet sockets and read
kernel state (routes, interfaces) when imported or first used; a forked child
would inherit the parent's sockets and caches from the wrong namespace.  The
child calls setns(2) *before* it imports the service module, so every socket
it ever opens, and scapy's routing table, belong to its namespace.  It also
unshares its mount namespace and remounts /sys, as ``ip netns exec`` does, so
/sys/class/net matches the namespace.

The child runs in its own session (no terminal SIGINT): the runner alone
decides when to tear down.  If the runner dies, the child sees EOF on its
command pipe, runs its service's ``close()`` and exits.

Protocol: the parent sends ``(method, kwargs, seq)`` pickles; the child
answers ``(seq, ("ok", result))`` or ``(seq, ("err", "Type: message",
traceback))``; its start-up answer has seq 0.  The parent drops answers to
another seq: a call interrupted while it waited (SIGINT raises
KeyboardInterrupt in the runner, whose teardown then calls the same workers)
leaves its answer in the pipe, and without the seq the next call would take it
for its own -- a ping's dict handed to ``sniff_stop``'s caller made
``sorted(packets)`` compare a float timestamp with a str key.
"""
from __future__ import annotations

import ctypes
import importlib
import os
import signal
import subprocess
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, Optional

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_SLAVE = 1 << 19
MNT_DETACH = 2


class WorkerError(RuntimeError):
    """A call into a worker failed (the remote exception as one line)."""

    def __init__(self, message: str, remote_traceback: str = ""):
        super().__init__(message)
        self.remote_traceback = remote_traceback


class WorkerTimeout(WorkerError):
    pass


def enter_netns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns({path}): {os.strerror(e)}")
    finally:
        os.close(fd)
    # Private mount namespace with a /sys of this netns (best effort).
    if libc.unshare(CLONE_NEWNS) == 0:
        libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None)
        if libc.umount2(b"/sys", MNT_DETACH) == 0:
            libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None)


def netns_inode(path: str = "/proc/self/ns/net") -> int:
    return os.stat(path).st_ino


class WorkerHandle:
    """The runner's side of one worker."""

    def __init__(self, name: str, netns_path: str, target: str, log_path: str = "",
                 init: Optional[dict] = None):
        self.name = name
        self.netns_path = netns_path
        self.target = target
        r_child, w_parent = os.pipe()   # parent -> child
        r_parent, w_child = os.pipe()   # child -> parent
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYNET_SCENARIO_RUNNER_NETNS"] = str(netns_inode())
        stderr = open(log_path, "ab") if log_path else None
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pynet.scenario.worker", netns_path or "-", target,
                 str(r_child), str(w_child)],
                pass_fds=(r_child, w_child), start_new_session=True, env=env,
                stdin=subprocess.DEVNULL, stdout=stderr or subprocess.DEVNULL,
                stderr=stderr)
        finally:
            os.close(r_child)
            os.close(w_child)
            if stderr:
                stderr.close()
        self._w = Connection(w_parent, readable=False)
        self._r = Connection(r_parent, writable=False)
        self._seq = 0   # of the last call sent; 0 = the start-up answer
        self._ready = False
        self._init = init or {}
        self.init_result = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        if self._ready:
            return
        if getattr(self, "_start_error", None):
            raise self._start_error
        try:
            msg = self._recv(timeout, "start")
        except WorkerError as e:
            self._start_error = e
            raise
        if msg[0] != "ready":
            self._start_error = WorkerError(f"worker {self.name} did not start: {msg[1]}",
                                            msg[2] if len(msg) > 2 else "")
            raise self._start_error
        if msg[0] != "ready":
            raise WorkerError(f"worker {self.name} did not start: {msg[1]}",
                              msg[2] if len(msg) > 2 else "")
        self._ready = True
        if self._init:
            self.init_result = self.call("init", call_timeout=timeout, **self._init)

    def _recv(self, timeout: float, what: str, seq: int = 0):
        """The answer to call ``seq``; answers to earlier, interrupted calls are dropped."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerTimeout(f"worker {self.name}: no answer to {what} within {timeout:.0f}s")
            try:
                if self._r.poll(min(left, 0.5)):
                    got, msg = self._r.recv()
                    if got == seq:
                        return msg
                    continue   # the answer of a call interrupted before it came
            except (EOFError, OSError):
                raise WorkerError(f"worker {self.name} exited (code {self.proc.poll()}) during {what}") from None
            if self.proc.poll() is not None and not self._r.poll(0):
                raise WorkerError(f"worker {self.name} exited (code {self.proc.returncode}) during {what}")

    def call(self, method: str, /, *, call_timeout: float = 60.0, **kwargs) -> Any:
        """Call ``method(**kwargs)`` in the worker.  A worker that does not
        answer within ``call_timeout`` is killed (its answers would be out of
        step with the questions from then on)."""
        self.wait_ready()
        self._seq += 1
        try:
            self._w.send((method, kwargs, self._seq))
        except (BrokenPipeError, OSError):
            raise WorkerError(f"worker {self.name} is gone (code {self.proc.poll()})") from None
        try:
            msg = self._recv(call_timeout, method, self._seq)
        except WorkerError as e:
            self._start_error = e
            self.kill()
            raise
        if msg[0] == "ok":
            return msg[1]
        raise WorkerError(msg[1], msg[2] if len(msg) > 2 else "")

    def stop(self, timeout: float = 20.0) -> None:
        """Ask the worker to close its service and exit; kill it if it does not."""
        if self.proc.poll() is None:
            try:
                self._w.send(("__exit__", {}, 0))
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for c in (self._w, self._r):
            try:
                c.close()
            except OSError:
                pass

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    netns_path, target, rfd, wfd = argv
    w = Connection(int(wfd), readable=False)
    r = Connection(int(rfd), writable=False)
    try:
        if netns_path != "-":
            enter_netns(netns_path)
        mod, cls = target.split(":")
        service = getattr(importlib.import_module(mod), cls)()
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        w.send((0, ("err", f"{type(e).__name__}: {e}", traceback.format_exc())))
        return 1
    w.send((0, ("ready", None)))
    try:
        while True:
            try:
                method, kwargs, seq = r.recv()
            except (EOFError, OSError):
                break
            if method == "__exit__":
                break
            try:
                if method.startswith("_"):
                    raise AttributeError(f"no method {method}")
                res = getattr(service, method)(**kwargs)
                w.send((seq, ("ok", res)))
            except Exception as e:  # noqa: BLE001
                try:
                    w.send((seq, ("err", f"{type(e).__name__}: {e}", traceback.format_exc())))
                except (BrokenPipeError, OSError):
                    break
    finally:
        close = getattr(service, "close", None)
        if close:
            try:
                close()
            except Exception:  # noqa: BLE001
                traceback.print_exc()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
