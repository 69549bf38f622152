"""Packets for the CNI conformance suite: one ICMP echo from inside a
namespace (no ping binary on the host), only to addresses in namespaces the
tests created."""
from __future__ import annotations

import ipaddress
import secrets
import select
import socket
import struct
import time


# -- packets (inside our namespaces only) -------------------------------------------
def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _ping_here(dst: str, timeout: float) -> bool:
    ip = ipaddress.ip_address(dst)
    ident, seq = secrets.randbits(16), 1
    payload = secrets.token_bytes(32)
    if ip.version == 4:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        pkt = struct.pack("!BBHHH", 8, 0, _checksum(hdr + payload), ident, seq) + payload
        want = 0
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        pkt = struct.pack("!BBHHH", 128, 0, 0, ident, seq) + payload
        want = 129
    with s:
        try:
            s.sendto(pkt, (dst, 0))
        except OSError:
            return False
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


def ping(netns_path: str, dst: str, timeout: float = 1.0, tries: int = 3) -> bool:
    from pynet.sysctl import run_in_netns
    for _ in range(tries):
        if run_in_netns(netns_path, lambda: _ping_here(dst, timeout)):
            return True
    return False
