"""Pool geometry, input parsing, default-pool choice and the host's routes.

Stdlib only (``ipaddress``, ``struct``) beside the leaf modules ``pynet.errors``
and ``pynet.validate`` (which parses addresses and CIDRs, zones refused): this
runs in every CNI invocation.
"""
from __future__ import annotations

import ipaddress
import struct
from typing import Any, Callable, Iterable, Optional, Union

from pynet import validate
from pynet.errors import InvalidAddress, InvalidParameter, InvalidSubnet, NoDefaultPool
from pynet.ipam.bitmap import Layout

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

GATEWAY_TYPE = "com.docker.network.gateway"
REQUEST_ADDRESS_TYPE = "RequestAddressType"


def key_id(pool_id: str) -> str:
    """Pool IDs contain '/', which in a key would make one pool's prefix a
    prefix of another's (``A/10.0.0.0/24/`` vs ``A/10.0.0.0/24/10.0.0.64/26``)."""
    return pool_id.replace("%", "%25").replace("/", "%2F")


def make_pool_id(address_space: str, pool: Network, sub_pool: Optional[Network]) -> str:
    return f"{address_space}/{pool}" + (f"/{sub_pool}" if sub_pool is not None else "")


def parse_address_space(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidParameter(f"address space must be a non-empty string, got {value!r}")
    # the pool ID is '/'-separated with the address space first
    if "/" in value or any(c.isspace() for c in value) or not value.isprintable():
        raise InvalidParameter(f"invalid address space {validate.shown(value)}: no '/', spaces "
                               "or control characters allowed")
    return value


def parse_network(value: Any, what: str = "pool") -> Network:
    """A CIDR; host bits are masked off as Docker's default IPAM does."""
    if not isinstance(value, str) or "/" not in value:
        raise InvalidSubnet(f"invalid {what} {value!r}: expected CIDR notation like 10.1.0.0/24")
    return validate.ip_network(value, what)


def parse_address(value: Any) -> Address:
    """A bare address or one in CIDR form (the prefix length is checked by
    the caller against the pool)."""
    if not isinstance(value, str):
        raise InvalidAddress(f"invalid address {value!r}: expected a string")
    return validate.ip_address(value, allow_prefix=True)


def parse_options(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InvalidParameter(f"options must be a mapping of strings, got {value!r}")
    return {k: v if isinstance(v, str) else str(v) for k, v in value.items()}


class Geometry:
    """Where a pool's addresses are, as ordinals counted from the network
    address: ``lo..hi`` may be handed out at all, ``rlo..rhi`` dynamically."""

    __slots__ = ("pool", "sub_pool", "base", "v6", "lo", "hi", "rlo", "rhi", "layout", "key")

    def __init__(self, pool_id: str, pool: Network, sub_pool: Optional[Network]):
        self.pool, self.sub_pool = pool, sub_pool
        self.base = int(pool.network_address)
        self.v6 = pool.version == 6
        last = pool.num_addresses - 1
        host_bits = pool.max_prefixlen - pool.prefixlen
        if self.v6:
            # ::0 is the subnet-router anycast address (RFC 4291 2.6.1); on a
            # /127 or /128 point-to-point link it is an ordinary address (RFC 6164)
            self.lo = 1 if host_bits > 1 else 0
            self.hi = last
        elif host_bits > 1:  # network and broadcast addresses
            self.lo, self.hi = 1, last - 1
        else:  # /31 point-to-point (RFC 3021) and /32 have neither
            self.lo, self.hi = 0, last
        if sub_pool is None:
            self.rlo, self.rhi = self.lo, self.hi
        else:
            self.rlo = max(self.lo, int(sub_pool.network_address) - self.base)
            self.rhi = min(self.hi, int(sub_pool.broadcast_address) - self.base)
        self.key = key_id(pool_id)
        self.layout = Layout(self.key, self.lo, self.hi)

    @property
    def size(self) -> int:
        return self.hi - self.lo + 1

    def ordinal(self, addr: Address) -> int:
        return int(addr) - self.base

    def address(self, o: int) -> str:
        n = self.base + o
        return str(ipaddress.IPv6Address(n) if self.v6 else ipaddress.IPv4Address(n))

    def cidr(self, o: int) -> str:
        return f"{self.address(o)}/{self.pool.prefixlen}"


# --- default pools ------------------------------------------------------------
def choose_default_pool(defaults: Iterable, version: int,
                        taken: Iterable[Network], routes: Iterable[Network]) -> Network:
    """First subnet of the configured default pools that overlaps neither a
    pool already held in the address space nor a route of the host (Docker's
    default IPAM does the same, so a network never hides a LAN).  A clash
    moves the candidate straight past the clashing range, so the cost grows
    with the number of obstacles, not with the number of candidate subnets."""
    obstacles = sorted((int(n.network_address), int(n.broadcast_address))
                       for n in (*taken, *routes) if n.version == version)
    tried = []
    for base_cidr, plen in defaults:
        base = parse_network(str(base_cidr), "default pool")
        if base.version != version:
            continue
        plen = int(plen)
        if not base.prefixlen <= plen <= base.max_prefixlen:
            raise InvalidParameter(f"default pool {base} cannot be split into /{plen} subnets")
        tried.append(f"{base}(/{plen})")
        size = 1 << (base.max_prefixlen - plen)
        cand, end = int(base.network_address), int(base.broadcast_address)
        while cand + size - 1 <= end:
            clash = next((hi for lo, hi in obstacles if lo <= cand + size - 1 and hi >= cand), None)
            if clash is None:
                return ipaddress.ip_network((cand, plen))
            cand = (clash // size + 1) * size
    family = "IPv6" if version == 6 else "IPv4"
    if not tried:
        raise NoDefaultPool(f"no default {family} pool is configured; give the subnet explicitly")
    raise NoDefaultPool(f"all default {family} pools are in use or overlap host routes: {', '.join(tried)}")


def _proc_routes_v4(path: str = "/proc/net/route") -> list[str]:
    out = []
    with open(path) as f:
        next(f, None)  # header
        for line in f:
            cols = line.split()
            if len(cols) < 8:
                continue
            # the kernel prints the raw __be32 as a host-order integer
            dest = struct.pack("=I", int(cols[1], 16))
            mask = struct.pack("=I", int(cols[7], 16))
            plen = int.from_bytes(mask, "big").bit_count()
            if plen:  # the default route overlaps everything; Docker skips it too
                out.append(f"{ipaddress.IPv4Address(dest)}/{plen}")
    return out


def _proc_routes_v6(path: str = "/proc/net/ipv6_route") -> list[str]:
    out = []
    with open(path) as f:
        for line in f:
            cols = line.split()
            if len(cols) < 2:
                continue
            plen = int(cols[1], 16)
            if plen:
                out.append(f"{ipaddress.IPv6Address(bytes.fromhex(cols[0]))}/{plen}")
    return out


def read_host_routes() -> list[str]:
    """Destinations of the host's routes (IPv4 main table, all IPv6 tables),
    without the default routes.  A missing file (no IPv6) yields nothing."""
    routes: list[str] = []
    for reader in (_proc_routes_v4, _proc_routes_v6):
        try:
            routes.extend(reader())
        except OSError:
            pass
    return routes


def parse_routes(source: Callable[[], Iterable[str]]) -> list[Network]:
    nets = []
    for r in source() or ():
        try:
            net = ipaddress.ip_network(r, strict=False)
        except (ValueError, TypeError):
            continue  # one odd line must not block every pool request
        if net.prefixlen:  # a default route overlaps everything; Docker ignores it too
            nets.append(net)
    return nets
