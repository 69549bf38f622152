"""``icmp_ping(netns_path, dst, size=56, df=False, timeout=1.0) -> bool``: one ICMP/ICMPv6 echo sent
from inside a namespace over a raw socket (no ping binary needed); a too-big DF packet answers
False. Used by the netns layer's ``ping`` fixture (tests/netns/conftest.py), the kernel lab guest
and the e2e macvlan test (the host has no ping binary)."""
from __future__ import annotations

import errno
import ipaddress
import secrets
import select
import socket
import struct
import time


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _ping_here(dst: str, size: int, df: bool, timeout: float) -> bool:
    ip = ipaddress.ip_address(dst)
    ident, seq = secrets.randbits(16), 1
    payload = secrets.token_bytes(size)
    if ip.version == 4:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        if df:
            s.setsockopt(socket.IPPROTO_IP, 10, 2)            # IP_MTU_DISCOVER = IP_PMTUDISC_DO
        hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        pkt = struct.pack("!BBHHH", 8, 0, _checksum(hdr + payload), ident, seq) + payload
        want = 0
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        if df:
            s.setsockopt(socket.IPPROTO_IPV6, 62, 1)          # IPV6_DONTFRAG
        pkt = struct.pack("!BBHHH", 128, 0, 0, ident, seq) + payload   # kernel fills the checksum
        want = 129
    with s:
        try:
            s.sendto(pkt, (dst, 0))
        except OSError as e:
            if e.errno in (errno.EMSGSIZE, errno.ENETUNREACH, errno.EHOSTUNREACH):
                return False
            raise
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            r, _, _ = select.select([s], [], [], left)
            if not r:
                break
            data, addr = s.recvfrom(65535)
            if ip.version == 4:
                data = data[(data[0] & 0x0F) * 4:]
            if len(data) >= 8 and ipaddress.ip_address(addr[0].split("%")[0]) == ip:
                typ, _, _, rid, rseq = struct.unpack("!BBHHH", data[:8])
                if typ == want and rid == ident and rseq == seq:
                    return True
    return False


def icmp_ping(netns_path: str, dst: str, size: int = 56, df: bool = False,
              timeout: float = 1.0) -> bool:
    from pynet.sysctl import run_in_netns
    return run_in_netns(netns_path, lambda: _ping_here(dst, size, df, timeout))
