"""A Netlink that opens another namespace's socket without pyroute2's fork.

pyroute2 0.9 creates a namespace's netlink socket (``IPRoute(netns=...)``) in
a forked helper process.  In the daemon -- threads, waitress, its SIGTERM
handler -- that child can deadlock on a lock another thread held at fork
time; the parent then SIGTERMs it, the daemon's handler raises SystemExit in
the child, and the child lives on as a copy of the daemon while the request
hangs.  (And in a CNI binary each fork costs ~5 ms.)

A netlink socket belongs to the namespace it was created in, so here it is
created in a short-lived thread that entered the namespace with setns(2)
(``pynet.sysctl.run_in_netns``) and handed to ``IPRoute(fileno=...)``.  Such
an IPRoute must be used from the thread that opened it (pyroute2 makes a new
socket per thread from the same fd); ``sandbox.attach/detach/inspect`` open,
use and close their namespace handle within one call, so that holds.
Everything else is ``PyrouteNetlink``.
"""
from __future__ import annotations

import os
import socket
from typing import Optional

from pynet import errors
from pynet.netlink import NetnsNotFound
from pynet.netlink.pyroute import PyrouteNetlink
from pynet.sysctl import run_in_netns

NETLINK_ROUTE = 0


def _route_socket_fd() -> int:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    return s.detach()


class FdNetnsNetlink(PyrouteNetlink):
    @property
    def ipr(self):
        if self._ipr is None and self.netns_path is not None:
            from pyroute2 import IPRoute
            if not os.path.exists(self.netns_path):
                raise NetnsNotFound(f"network namespace {self.netns_path} does not exist")
            fd = run_in_netns(self.netns_path, _route_socket_fd)
            try:
                self._ipr = IPRoute(fileno=fd)
            except OSError as e:
                os.close(fd)
                raise errors.KernelError(
                    f"cannot open network namespace {self.netns_path}: {e.strerror or e}") from None
        return PyrouteNetlink.ipr.fget(self)

    def for_netns(self, netns_path: Optional[str]) -> "FdNetnsNetlink":
        nl = FdNetnsNetlink(netns_path)
        nl.ipr  # open now: a missing namespace raises here
        return nl
