"""Host port choice, as Docker's built-in bridge driver (portallocator) does.

* explicit port (``requested`` > 0, no range): that port, or PortInUse;
* ``requested`` = 0: the first free port of the ephemeral range
  ``/proc/sys/net/ipv4/ip_local_port_range`` (Docker's fallback 49153-65535
  when it can't be read);
* a range ``requested``..``range_end``: the first free port in it.

``in_use`` holds what is already allocated: plain ints (port taken on every
address and protocol), ``(proto, port)`` or ``(proto, host_ip, port)``
tuples.  An unspecified host IP (``''``, ``0.0.0.0``, ``::``) overlaps every
address, as Docker's allocator treats 0.0.0.0.
"""
from __future__ import annotations

from pynet.errors import InvalidParameter, PortInUse

DEFAULT_RANGE = (49153, 65535)
PORT_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


def ephemeral_range(path: str = PORT_RANGE_FILE) -> tuple[int, int]:
    try:
        with open(path) as f:
            lo, hi = (int(x) for x in f.read().split()[:2])
        if 0 < lo <= hi <= 65535:
            return lo, hi
    except (OSError, ValueError):
        pass
    return DEFAULT_RANGE


def _unspec(ip: str) -> bool:
    return ip in ("", "0.0.0.0", "::")


def _held(proto: str, host_ip: str, port: int, in_use) -> bool:
    for item in in_use:
        if isinstance(item, int):
            if item == port:
                return True
            continue
        if len(item) == 2:
            p, prt, ip = item[0], item[1], ""
        else:
            p, ip, prt = item[0], item[1], item[2]
        if prt == port and p == proto and (_unspec(ip) or _unspec(host_ip) or ip == host_ip):
            return True
    return False


def allocate_host_port(proto: str, host_ip: str, requested: int, range_end: int | None,
                       in_use: set, *, port_range_file: str = PORT_RANGE_FILE) -> int:
    if proto not in ("tcp", "udp", "sctp"):
        raise InvalidParameter(f"invalid protocol {proto!r}: want tcp, udp or sctp")
    host_ip = host_ip or ""
    for what, v in (("host port", requested), ("host port range end", range_end)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 65535):
            raise InvalidParameter(f"invalid {what} {v!r}")
    shown = host_ip or "0.0.0.0"
    if requested == 0:
        if range_end:
            raise InvalidParameter(f"invalid port range 0-{range_end}")
        lo, hi = ephemeral_range(port_range_file)
    elif range_end is None or range_end == requested:
        if _held(proto, host_ip, requested, in_use):
            raise PortInUse(f"Bind for {shown}:{requested} failed: port is already allocated",
                            proto=proto, host_ip=host_ip, port=requested)
        return requested
    else:
        if range_end < requested:
            raise InvalidParameter(f"invalid port range {requested}-{range_end}")
        lo, hi = requested, range_end
    for port in range(lo, hi + 1):
        if not _held(proto, host_ip, port, in_use):
            return port
    raise PortInUse(f"Bind for {shown}:{lo}-{hi} failed: all ports in the range are already allocated",
                    proto=proto, host_ip=host_ip, port_range=(lo, hi))
