"""Serve the plugin app on a unix socket with waitress -- and nothing else.

* The parent directory (``/run/docker/plugins``) is created if missing.
* A stale socket file (nobody answers on it) is removed; a live one means
  another daemon serves that name, and we refuse to steal it.
* The socket is created mode 0600 (root only): the umask is tightened while
  binding, so there is no window with wider permissions; waitress then
  chmods to ``unix_socket_perms`` as well.
* No TCP listener is ever opened.
* SIGTERM / SIGINT close the listener, finish the requests in flight and
  remove the socket file.
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import stat
from typing import Optional

log = logging.getLogger("pynet.server")

THREADS = 4

# Open connections waitress accepts at once.  waitress reads requests in its
# event loop and hands a thread only complete requests, so a client that sends
# half a request (or nothing) holds no thread -- only one of these slots, until
# ``channel_timeout`` closes it.  At the limit waitress stops accepting, so the
# limit alone decides how many stalled clients it takes to starve dockerd's
# ``Plugin.Activate``: it was 64 (a single misbehaving client looping on
# connect could reach it); now it is set far above what dockerd (a handful of
# keep-alive connections) and bursts of CNI binaries (one connection per exec)
# need, bounded by the process's descriptor limit.  Polling with poll(2), not
# select(2), so descriptors above FD_SETSIZE (1024) work.
CONNECTION_LIMIT = 4096
FD_RESERVE = 256        # descriptors kept for the store, netlink, iptables pipes
MAX_BODY = 8 * 1024 * 1024  # above Flask's MAX_CONTENT_LENGTH: Flask answers 413 {"Err"}


def connection_limit(limit: int = CONNECTION_LIMIT) -> int:
    """``limit``, lowered to fit the soft RLIMIT_NOFILE (raised to the hard limit first)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = limit + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return limit
    return max(64, min(limit, soft - FD_RESERVE))


class SocketBusy(RuntimeError):
    pass


def prepare_socket_path(socket_path: str) -> None:
    """Create the parent directory; remove a stale socket file."""
    parent = os.path.dirname(os.path.abspath(socket_path))
    os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        st = os.lstat(socket_path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketBusy(f"{socket_path} exists and is not a socket; refusing to remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(socket_path)
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
            log.warning("probing %s: %s; treating it as stale", socket_path, e)
        os.unlink(socket_path)
        log.info("removed stale socket %s", socket_path)
    else:
        raise SocketBusy(f"another process is serving on {socket_path}")
    finally:
        probe.close()


def create_server(app, socket_path: str, threads: int = THREADS):
    """A waitress server bound to ``socket_path`` (mode 0600), not yet running."""
    from waitress.server import create_server as waitress_create_server

    prepare_socket_path(socket_path)
    old_umask = os.umask(0o177)
    try:
        server = waitress_create_server(
            app,
            unix_socket=socket_path,
            unix_socket_perms="600",
            threads=threads,
            ident="pynet",
            # dockerd's plugin client keeps connections alive; an idle or
            # stalled one is closed after channel_timeout.  Stalled clients
            # cannot starve the others: see CONNECTION_LIMIT.
            channel_timeout=120,
            connection_limit=connection_limit(),
            asyncore_use_poll=True,
            max_request_body_size=MAX_BODY,
            clear_untrusted_proxy_headers=True,
        )
    finally:
        os.umask(old_umask)
    return server


def serve(app, socket_path: str, threads: int = THREADS, on_ready=None) -> None:
    """Serve until SIGTERM/SIGINT; remove the socket file on the way out."""
    server = create_server(app, socket_path, threads)
    stopping = {"signal": None}

    def stop(signum, frame):
        stopping["signal"] = signum
        # waitress's run() catches SystemExit, finishes the tasks in flight and
        # stops its worker threads; serve() then closes the listener.
        raise SystemExit(0)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info("serving on unix:%s (mode 0600, %d threads)", socket_path, threads)
    try:
        if on_ready is not None:
            on_ready(server)
        server.run()  # returns after SystemExit, worker threads shut down
    finally:
        try:
            server.close()
        except OSError:
            pass
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _remove_socket(socket_path, server)
        if stopping["signal"] is not None:
            log.info("stopped on %s", signal.Signals(stopping["signal"]).name)


def _remove_socket(socket_path: str, server: Optional[object]) -> None:
    try:
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("could not remove %s: %s", socket_path, e)
