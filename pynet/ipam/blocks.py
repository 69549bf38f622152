"""Cluster-wide IPAM without a hot key: a pool split into blocks, each claimed by one host.

Why blocks (measured, /work/shared/design.md "Many hosts"): on etcd one compare-and-swap costs
~1-2.5 ms and writers on ONE key mostly conflict (4 writers: ~70 % of attempts fail, fewer
successes than one writer), while writers on disjoint keys scale.  So no key may be rewritten by
every allocation in the cluster -- not a pool-wide bitmap, counter or cursor.  This is Calico's
block IPAM in essence:

* the pool (a CIDR, IPv4 or IPv6) is cut into blocks of ``block_prefixlen`` (default /26 for
  IPv4, /122 for IPv6: 64 addresses each);
* a host **claims** a block by a create-only write of its record (affinity = that host), and
  then allocates from it with **one compare-and-swap per address**: the block record (its
  bitmap) and the allocation's handle, written in one transaction.  Hosts allocate in their own
  blocks, so they do not conflict with each other;
* a host looks first in its own blocks, then claims a free block, and **borrows** from another
  host's block only when no free block is left (the block keeps its affinity);
* exhaustion is ``PoolExhausted`` (an ``Exhausted``: Docker 503, CNI code 11).

Store keys (``<prefix>`` defaults to ``cluster_prefix("ipam")``; ``<pool>`` is a key component):

* ``<prefix><pool>/pool``             pool settings (JSON, create-only): CIDR, block prefix
                                      length, reserved addresses (network, broadcast, gateway,
                                      extra).  Never rewritten, so every allocation may compare it.
* ``<prefix><pool>/blocks/<net>-<len>`` one block (JSON): ``{"host", "bits"}``; ``bits`` is the
                                      block's bitmap as hex (bit i = i-th address of the block),
                                      reserved addresses set from the claim on, so they are never
                                      handed out and a block is empty when only they are set.
* ``<prefix><pool>/handles/<id>``     one allocation (JSON): address, block, host.  Written and
                                      deleted in the same transaction as its bit, so a SIGKILL
                                      never separates them: every set bit that is not reserved has
                                      exactly one handle, every handle names a set bit.

Handles make the verbs idempotent: ``allocate(pool, handle)`` of a handle that exists returns its
address (a retried CNI ADD, a daemon that died between commit and answer), ``release(pool,
handle)`` of a handle that does not exist does nothing.

Round trips (etcd): the block record and the pool record are read through the store's record
cache (``t.get(key, cached=True)``), and the handle -- new in the common case -- is *presumed
absent* (``_presume_absent``): the txn records "absent" for it without reading it, and the
commit's compare (create_revision == 0) checks it.  A warm allocation in the host's own block is
then ONE etcd Txn.  A wrong presumption (the handle exists: a retry) only makes that commit fail;
its failure branch brings the handle and the next attempt returns its address.

Empty blocks are NOT given back when their last address is released: the affine host keeps them
(they stay its first choice, so churn does not claim and release the same block over and over).
``release_empty_blocks(pool, host)`` gives back a host's empty blocks explicitly (a host leaving
the cluster, or a clean-up by the control loop); a block with any allocation -- borrowed ones
included -- is never released.

Verbs (``BlockIpam(store, host, prefix=None)``): ``create_pool`` (create-only; joining with equal
settings is fine, other settings are ``PoolMismatch``), ``allocate(pool, handle, address=None)``,
``release(pool, handle)``, ``lookup``, ``handles``, ``blocks``, ``get_pool``, ``verify`` (the
invariants above, read in one snapshot), ``release_empty_blocks``, ``delete_pool`` (``InUse``
while any handle holds an address).  Every name is checked at the door (``pynet.store.keys``:
``InvalidParameter``, Docker 400, CNI code 7) before anything is read or written.

Addresses are taken lowest-first within a block (as Calico does), so a released address may be
handed out again at once; Docker's next-fit (the local IPAM's cursor) could live in the block
record if that ever matters -- a cursor key of its own would be a second write per allocation.
"""
from __future__ import annotations

import bisect
import functools
import ipaddress
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

from pynet.errors import (AddressInUse, Conflict, InUse, InvalidAddress, InvalidParameter,
                          InvalidSubnet, PoolExhausted, PoolNotFound, StoreConflict)
from pynet.ipam.bitmap import Bitmap, Layout
from pynet.ipam.pools import Geometry, parse_address, parse_network
from pynet.store import Record
from pynet.store.keys import cluster_prefix, component, parse_key

DEFAULT_BLOCK_V4 = 26
DEFAULT_BLOCK_V6 = 122
MIN_BLOCK_BITS = 2  # a block of 4 addresses at least
MAX_BLOCK_BITS = 16  # 65536 addresses: an 8 KiB bitmap value at most
# etcd: attempts of one transaction before StoreConflict (the same bound as the local IPAM's: a
# conflict here means two processes of one host, or a borrower, on the same block)
DEFAULT_RETRIES = 200
# own blocks tried (and compared) in one allocation before listing the pool: bounds the Txn's
# compares far below etcd's --max-txn-ops (128)
_OWN_PER_TXN = 8
# create-only claims tried per listing (another host may win each one), listings per allocation
_CLAIMS_PER_LIST = 16
_LISTINGS = 8


class PoolMismatch(Conflict):
    """A pool of that name exists with other settings (another host created it differently)."""


@dataclass(frozen=True)
class _Pool:
    """The immutable geometry of one cluster pool, from its record."""

    name: str
    net: "ipaddress.IPv4Network | ipaddress.IPv6Network"
    block_prefixlen: int
    reserved: tuple  # sorted ordinals (from the network address) never handed out
    gateway: str

    @property
    def block_size(self) -> int:
        return 1 << (self.net.max_prefixlen - self.block_prefixlen)

    @functools.cached_property
    def layout(self) -> Layout:
        """One block as ``Bitmap`` sees it: a single leaf of ``block_size`` bits (its key name is
        never used: ``_BlockBits`` serves the leaf from the block record)."""
        return Layout("block", 0, self.block_size - 1, self.block_size)

    @property
    def block_count(self) -> int:
        return 1 << (self.block_prefixlen - self.net.prefixlen)

    def block_net(self, index: int):
        base = int(self.net.network_address) + index * self.block_size
        return ipaddress.ip_network((base, self.block_prefixlen))

    def block_name(self, index: int) -> str:
        """The key component of a block: its CIDR with '-' for '/' (a key component has no '/')."""
        return f"{self.address(index, 0)}-{self.block_prefixlen}"

    def block_index(self, name: str) -> int:
        addr, _, plen = name.rpartition("-")
        return (int(ipaddress.ip_address(addr)) - int(self.net.network_address)) // self.block_size

    def reserved_mask(self, index: int) -> int:
        """Bits of the reserved addresses inside block ``index``."""
        lo, hi = index * self.block_size, (index + 1) * self.block_size
        mask = 0
        for o in self.reserved[bisect.bisect_left(self.reserved, lo):bisect.bisect_left(self.reserved, hi)]:
            mask |= 1 << (o - lo)
        return mask

    def address(self, index: int, bit: int) -> str:
        n = int(self.net.network_address) + index * self.block_size + bit
        return str(ipaddress.ip_address(n))

    def cidr(self, index: int, bit: int) -> str:
        return f"{self.address(index, bit)}/{self.net.prefixlen}"

    def locate(self, addr) -> tuple[int, int]:
        """(block index, bit) of an address inside the pool."""
        return divmod(int(addr) - int(self.net.network_address), self.block_size)


class _BlockBits:
    """The txn surface ``Bitmap`` reads and writes, over one block's bits held in memory: the
    bitmap's single leaf is the block record's ``bits`` field, so the bitmap and the affinity
    stay one record (one compare, one write per allocation)."""

    __slots__ = ("x",)

    def __init__(self, x: int):
        self.x = x

    def get(self, key: str, cached: bool = False):
        return Record(key, self.x.to_bytes((self.x.bit_length() + 7) // 8, "little"), 0) if self.x else None

    def put(self, key: str, value: bytes, lease: int = 0) -> None:
        self.x = int.from_bytes(value, "little")

    def delete(self, key: str) -> None:
        self.x = 0


def _bits(rec_value: dict) -> int:
    return int(rec_value.get("bits") or "0", 16)


def _presume_absent(store, key: str) -> None:
    """Let ``t.get(key, cached=True)`` answer "absent" without a round trip, unless the store's
    record cache knows better.  Sound by the cache's own rule: a cached read is recorded like a
    fetched one, and the commit compares it (here: create_revision == 0), so a wrong presumption
    only fails the commit, whose failure branch brings the real record for the next attempt.
    Stored as known at revision 0, so any real news replaces it."""
    cache = getattr(store, "_record_cache", None)
    if cache is not None and key not in cache:
        cache.store(key, None, 0)


def _check_prefix(prefix) -> str:
    if not isinstance(prefix, str) or not prefix.endswith("/"):
        raise InvalidParameter(f"block IPAM key prefix must be a string ending with '/': {prefix!r}")
    parse_key(prefix + "x")  # a pynet/v2/... prefix whose every component is valid
    return prefix


class BlockIpam:
    """Cluster pools cut into host-affine blocks, on any Store v2 backend (memory, SQLite, etcd).

    ``host``: this host's identity (a key component): the affinity of the blocks it claims.
    ``prefix``: where the pools live (default ``cluster_prefix("ipam")``).  One object per host
    process; it remembers which blocks are its own (refreshed from every listing of a pool) and
    shares the store's record cache, so the daemon's threads may share it.
    """

    def __init__(self, store, host: str, prefix: Optional[str] = None, retries: int = DEFAULT_RETRIES):
        self.store = store
        self.host = component(host)
        self.prefix = _check_prefix(cluster_prefix("ipam") if prefix is None else prefix)
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise InvalidParameter(f"retries must be a non-negative integer: {retries!r}")
        self.retries = retries
        self._pools: dict[tuple[str, int], _Pool] = {}
        self._latest: dict[str, _Pool] = {}  # pool -> the geometry of its record last seen
        # pool -> {block index: believed full}; only steers the search, the store decides
        self._own: dict[str, dict[int, bool]] = {}

    # --- keys --------------------------------------------------------------------------------------
    def _pool_key(self, pool: str) -> str:
        return f"{self.prefix}{pool}/pool"

    def _blocks_prefix(self, pool: str) -> str:
        return f"{self.prefix}{pool}/blocks/"

    def _handles_prefix(self, pool: str) -> str:
        return f"{self.prefix}{pool}/handles/"

    def _block_key(self, p: _Pool, index: int) -> str:
        return self._blocks_prefix(p.name) + p.block_name(index)

    def _handle_key(self, pool: str, handle: str) -> str:
        return self._handles_prefix(pool) + handle

    # --- pools ---------------------------------------------------------------------------------------
    def create_pool(self, pool: str, cidr: str, block_prefixlen: Optional[int] = None,
                    gateway: "bool | str" = True, reserved: Iterable[str] = ()) -> dict:
        """Create the cluster pool ``pool`` (create-only), or join it when it exists with the same
        settings; ``PoolMismatch`` (one line naming the differences) when they differ.

        ``gateway``: True reserves the pool's first address (Docker's default gateway), an
        address reserves that one, False none.  ``reserved``: further addresses never handed out.
        The network address (IPv6: the subnet-router anycast) and the IPv4 broadcast are always
        reserved, on /31, /32, /127 and /128 excepted as in the local IPAM."""
        pool = component(pool)
        net = parse_network(cidr)
        if block_prefixlen is None:
            block_prefixlen = max(net.prefixlen, DEFAULT_BLOCK_V4 if net.version == 4 else DEFAULT_BLOCK_V6)
        if not isinstance(block_prefixlen, int) or isinstance(block_prefixlen, bool):
            raise InvalidParameter(f"block prefix length must be an integer: {block_prefixlen!r}")
        host_bits = net.max_prefixlen - block_prefixlen
        if block_prefixlen < net.prefixlen:
            raise InvalidSubnet(f"block /{block_prefixlen} is larger than pool {net}")
        if not MIN_BLOCK_BITS <= host_bits <= MAX_BLOCK_BITS:
            raise InvalidParameter(f"block prefix length must be /{net.max_prefixlen - MAX_BLOCK_BITS}"
                                   f"../{net.max_prefixlen - MIN_BLOCK_BITS} for {net}: /{block_prefixlen}")
        g = Geometry(pool, net, None)
        ordinals = set(range(0, g.lo)) | set(range(g.hi + 1, net.num_addresses))
        gw = ""
        if gateway is True:
            if g.lo > g.hi:
                raise InvalidSubnet(f"pool {net} has no address for a gateway")
            gw = g.address(g.lo)
        elif isinstance(gateway, str) and gateway:
            gw = str(self._inside(net, gateway, "gateway"))
        elif gateway not in (False, "", None):
            raise InvalidParameter(f"gateway must be True, False or an address: {gateway!r}")
        if gw:
            ordinals.add(int(ipaddress.ip_address(gw)) - g.base)
        if isinstance(reserved, str):
            raise InvalidParameter("reserved must be a list of addresses, not one string")
        for a in reserved:
            ordinals.add(int(self._inside(net, a, "reserved address")) - g.base)
        settings = {"cidr": str(net), "block_prefixlen": block_prefixlen, "gateway": gw,
                    "reserved": [g.address(o) for o in sorted(ordinals)]}
        key = self._pool_key(pool)

        def fn(t):
            rec = t.get(key)
            if rec is None:
                t.put(key, settings)
                return settings
            have = rec.value
            diff = [f"{k} {have.get(k)!r} (asked {settings[k]!r})"
                    for k in settings if have.get(k) != settings[k]]
            if diff:
                raise PoolMismatch(f"cluster pool {pool} exists with other settings: " + ", ".join(diff))
            return have

        return self._describe_settings(pool, self.store.txn(fn, retries=self.retries))

    @staticmethod
    def _inside(net, value, what: str):
        addr = parse_address(value)
        if isinstance(value, str) and "/" in value:
            raise InvalidParameter(f"{what} must be a bare address: {value!r}")
        if addr.version != net.version or addr not in net:
            raise InvalidParameter(f"{what} {addr} is outside pool {net}")
        return addr

    @staticmethod
    def _describe_settings(pool: str, s: dict) -> dict:
        return {"pool": pool, "cidr": s["cidr"], "block_prefixlen": s["block_prefixlen"],
                "gateway": s["gateway"], "reserved": list(s["reserved"])}

    def _geometry(self, pool: str, rec: Record) -> _Pool:
        got = self._pools.get((pool, rec.version))
        if got is None:
            v = rec.value
            net = ipaddress.ip_network(v["cidr"])
            base = int(net.network_address)
            got = _Pool(pool, net, int(v["block_prefixlen"]),
                        tuple(sorted(int(ipaddress.ip_address(a)) - base for a in v["reserved"])),
                        v.get("gateway", ""))
            self._pools[(pool, rec.version)] = got
        self._latest[pool] = got
        return got

    def _load(self, t, pool: str, cached: bool = True) -> _Pool:
        rec = t.get(self._pool_key(pool), cached=cached)
        if rec is None:
            raise PoolNotFound(f"cluster pool {pool} not found")
        return self._geometry(pool, rec)

    def get_pool(self, pool: str) -> dict:
        """Settings and usage: blocks claimed (per host), addresses used and free."""
        pool = component(pool)

        def fn(t):
            p = self._load(t, pool, cached=False)
            hosts: dict[str, int] = {}
            used = 0
            for rec in t.list(self._blocks_prefix(pool)):
                i = p.block_index(rec.key.rsplit("/", 1)[1])
                hosts[rec.value["host"]] = hosts.get(rec.value["host"], 0) + 1
                used += (_bits(rec.value) & ~p.reserved_mask(i)).bit_count()
            rec = t.get(self._pool_key(pool))
            return p, rec.value, hosts, used

        p, settings, hosts, used = self.store.txn(fn, retries=self.retries)
        size = p.net.num_addresses - len(p.reserved)
        return {**self._describe_settings(pool, settings), "blocks": p.block_count,
                "blocks_claimed": sum(hosts.values()), "hosts": hosts,
                "size": size, "used": used, "free": size - used}

    def delete_pool(self, pool: str) -> bool:
        """Forget the pool and its blocks; ``InUse`` while any handle holds an address.  False
        when there was no such pool."""
        pool = component(pool)
        key = self._pool_key(pool)

        def fn(t):
            if t.get(key) is None:
                return False
            held = t.list(self._handles_prefix(pool))
            if held:
                raise InUse(f"cluster pool {pool} still has {len(held)} address(es) allocated")
            t.delete_prefix(self._blocks_prefix(pool))
            t.delete(key)
            return True

        done = self.store.txn(fn, retries=self.retries)
        self._own.pop(pool, None)
        self._latest.pop(pool, None)
        return done

    def forget(self, pool: str) -> None:
        """Drop what this process remembers of ``pool`` (its blocks, its geometry): the pool was
        deleted by other means (the overlay frees it with its network, in that commit)."""
        pool = component(pool)
        self._own.pop(pool, None)
        self._latest.pop(pool, None)

    # --- allocation ------------------------------------------------------------------------------------
    def allocate(self, pool: str, handle: str, address: Optional[str] = None) -> str:
        """An address of the pool for ``handle`` (``addr/prefixlen``); the same one again when the
        handle already holds one.  Own blocks first, then a newly claimed block, then another
        host's block; ``PoolExhausted`` when the pool has no free address.

        ``address``: that address (``docker run --ip``), wherever its block is: in a block no
        host holds yet, this host claims the block.  ``AddressInUse`` when another handle holds
        it or this handle holds another one; ``InvalidAddress`` outside the pool or reserved."""
        pool, handle = component(pool), component(handle)
        hkey = self._handle_key(pool, handle)
        if address is not None:
            return self._allocate_explicit(pool, handle, hkey, parse_address(address), address)
        for _ in range(_LISTINGS):
            own = self._own.get(pool)
            # no own block with room known to this process (a fresh one, or all full): straight to
            # the listing -- a txn that tries nothing would still cost a commit validating the
            # presumed-absent handle, and the claim or borrow below checks the handle anyway
            if own and not all(own.values()):
                _presume_absent(self.store, hkey)
                got, full = self.store.txn(lambda t: self._from_own(t, pool, hkey), retries=self.retries)
                for i, gone in full.items():
                    if gone:
                        own.pop(i, None)
                    elif i in own:
                        own[i] = True
                if got is not None:
                    return got
            got = self._from_listing(pool, hkey)
            if got is not None:
                return got
        raise StoreConflict(f"cluster pool {pool}: every free address seen was taken by others "
                            f"{_LISTINGS} times in a row")

    def _allocate_explicit(self, pool: str, handle: str, hkey: str, addr, raw: str) -> str:
        def fn(t):
            p = self._load(t, pool)
            if addr.version != p.net.version or addr not in p.net:
                raise InvalidAddress(f"address {raw} is outside cluster pool {pool} ({p.net})")
            if "/" in raw and raw.split("/", 1)[1].strip() != str(p.net.prefixlen):
                raise InvalidAddress(f"address {raw} does not have the prefix length of {p.net}")
            index, o = p.locate(addr)
            want = p.cidr(index, o)
            seen = self._existing(t, hkey)
            if seen is not None:
                if seen != want:
                    raise AddressInUse(f"handle {handle} already holds {seen} in cluster pool {pool}")
                return seen
            if p.reserved_mask(index) >> o & 1:
                raise InvalidAddress(f"address {addr} is reserved in cluster pool {pool} "
                                     "(network, broadcast or gateway)")
            key = self._block_key(p, index)
            rec = t.get(key, cached=True)
            value = rec.value if rec is not None else {"host": self.host,
                                                       "bits": format(p.reserved_mask(index), "x")}
            x = _bits(value)
            if x >> o & 1:
                raise AddressInUse(f"address {addr} is already allocated in cluster pool {pool}")
            t.put(key, {**value, "bits": format(x | 1 << o, "x")})
            t.put(hkey, {"cidr": want, "block": p.block_name(index), "host": self.host})
            return want, index, rec is None

        _presume_absent(self.store, hkey)
        got = self.store.txn(fn, retries=self.retries)
        if isinstance(got, str):
            return got
        cidr, index, claimed = got
        if claimed:
            self._own.setdefault(pool, {})[index] = False
        return cidr

    def _existing(self, t, hkey: str) -> Optional[str]:
        rec = t.get(hkey, cached=True)
        return None if rec is None else rec.value["cidr"]

    def _take(self, t, p: _Pool, index: int, value: dict, hkey: str) -> Optional[str]:
        """Set the lowest free bit of block ``index`` (record value ``value``) and write the block
        and the handle; None when the block is full."""
        bits = _BlockBits(_bits(value))
        bm = Bitmap(bits, p.layout)
        o = bm.find_free(0, p.block_size - 1)
        if o is None:
            return None
        bm.set(o)
        t.put(self._block_key(p, index), {**value, "bits": format(bits.x, "x")})
        cidr = p.cidr(index, o)
        t.put(hkey, {"cidr": cidr, "block": p.block_name(index), "host": self.host})
        return cidr

    def _from_own(self, t, pool: str, hkey: str):
        """(address or None, {block: gone?}) -- the handle's address, or one from an own block
        this process does not believe full.  No side effects: ``fn`` may run several times."""
        p = self._load(t, pool)
        seen = self._existing(t, hkey)
        if seen is not None:
            return seen, {}
        full: dict[int, bool] = {}
        tried = 0
        for i, believed_full in list(self._own.get(pool, {}).items()):
            if believed_full:
                continue
            if tried == _OWN_PER_TXN:
                break
            tried += 1
            rec = t.get(self._block_key(p, i), cached=True)
            if rec is None or rec.value.get("host") != self.host:
                full[i] = True  # released, or claimed again by another host: no longer ours
                continue
            got = self._take(t, p, i, rec.value, hkey)
            if got is not None:
                return got, full
            full[i] = False
        return None, full

    def _from_listing(self, pool: str, hkey: str) -> Optional[str]:
        """List the pool's blocks (a plain read: only steers the choice; each write below is
        checked by its own compares), learn this host's blocks from it, then claim a free block,
        else borrow.  None: an own block has room (the caller tries it first) or what the
        listing offered was taken meanwhile (the caller lists again)."""
        p = self._latest.get(pool)
        if p is None:  # the pool's record and its blocks in one snapshot
            p, blocks = self.store.txn(lambda t: (self._load(t, pool, cached=True),
                                                  t.list(self._blocks_prefix(pool))), retries=self.retries)
        else:  # the geometry is known: every txn below compares the pool record anyway
            blocks = self.store.list(self._blocks_prefix(pool))
        claimed: set[int] = set()
        own: dict[int, bool] = {}
        others: list[tuple[int, int]] = []  # (free count, index)
        for rec in blocks:
            i = p.block_index(rec.key.rsplit("/", 1)[1])
            claimed.add(i)
            free = p.block_size - _bits(rec.value).bit_count()
            if rec.value.get("host") == self.host:
                own[i] = free == 0
            elif free:
                others.append((free, i))
        previous = self._own.get(pool, {})
        self._own[pool] = dict(sorted(own.items()))
        if any(not f for f in own.values()) and own != previous:
            return None  # news about our own blocks: the fast path tries them
        # claim: the first unclaimed blocks in address order, create-only
        tries = 0
        for i in range(p.block_count):
            if i in claimed:
                continue
            if tries == _CLAIMS_PER_LIST:
                return None  # lost many races: list again
            tries += 1
            key = self._block_key(p, i)
            _presume_absent(self.store, key)
            _presume_absent(self.store, hkey)
            got = self.store.txn(lambda t: self._claim(t, p, i, key, hkey), retries=self.retries)
            if got is not None:
                self._own[pool][i] = False
                return got
        # borrow: other hosts' blocks with room, the fullest first -- the emptiest is likely the
        # one its owner allocates from now, and every address taken there costs it a conflict
        for _, i in sorted(others):
            key = self._block_key(p, i)
            _presume_absent(self.store, hkey)
            got = self.store.txn(lambda t: self._borrow(t, p, i, key, hkey), retries=self.retries)
            if got is not None:
                return got
        if others or any(not f for f in own.values()):
            return None  # what the listing said had room was taken meanwhile: look again
        seen = self.lookup(pool, hkey[len(self._handles_prefix(pool)):])
        if seen is not None:
            return seen  # a retry of an allocation that committed: its address, full pool or not
        raise PoolExhausted(f"no free address left in cluster pool {pool} ({p.net})")

    def _same_pool(self, t, p: _Pool) -> bool:
        """The pool record is still the one ``p`` was made from (compared at commit)."""
        return self._load(t, p.name) is p

    def _claim(self, t, p: _Pool, index: int, key: str, hkey: str) -> Optional[str]:
        if not self._same_pool(t, p):
            return None  # deleted and made again meanwhile: list again
        seen = self._existing(t, hkey)
        if seen is not None:
            return seen
        if t.get(key, cached=True) is not None:
            return None  # another host claimed it first
        return self._take(t, p, index, {"host": self.host, "bits": format(p.reserved_mask(index), "x")}, hkey)

    def _borrow(self, t, p: _Pool, index: int, key: str, hkey: str) -> Optional[str]:
        if not self._same_pool(t, p):
            return None
        seen = self._existing(t, hkey)
        if seen is not None:
            return seen
        rec = t.get(key, cached=True)
        if rec is None:
            return None  # released meanwhile: the next listing offers it as a free block
        return self._take(t, p, index, rec.value, hkey)

    # --- release and lookup -------------------------------------------------------------------------
    def release(self, pool: str, handle: str) -> bool:
        """Free the address ``handle`` holds; False (nothing written) when it holds none -- a
        second release, or a release of an allocation that never committed."""
        pool, handle = component(pool), component(handle)
        hkey = self._handle_key(pool, handle)

        def fn(t):
            h = t.get(hkey, cached=True)
            if h is None:
                return None
            p = self._load(t, pool)
            addr = ipaddress.ip_address(h.value["cidr"].split("/")[0])
            index, o = p.locate(addr)
            t.delete(hkey)
            key = self._block_key(p, index)
            rec = t.get(key, cached=True)
            if rec is not None and not p.reserved_mask(index) >> o & 1:
                bits = _BlockBits(_bits(rec.value))
                if Bitmap(bits, p.layout).clear(o):
                    t.put(key, {**rec.value, "bits": format(bits.x, "x")})
            return rec.value.get("host") if rec is not None else None, index

        got = self.store.txn(fn, retries=self.retries)
        if got is None:
            return False
        host, index = got
        own = self._own.get(pool)
        if host == self.host and own is not None and index in own:
            own[index] = False  # room again in an own block
        return True

    def lookup(self, pool: str, handle: str) -> Optional[str]:
        """The address (``addr/prefixlen``) ``handle`` holds, or None."""
        pool, handle = component(pool), component(handle)
        hkey = self._handle_key(pool, handle)
        return self.store.txn(lambda t: self._existing(t, hkey), retries=self.retries)

    def handles(self, pool: str) -> dict[str, dict]:
        """Every allocation of the pool: handle -> {"cidr", "block", "host"}."""
        pool = component(pool)
        prefix = self._handles_prefix(pool)
        return {r.key[len(prefix):]: dict(r.value) for r in self.store.list(prefix)}

    def blocks(self, pool: str) -> list[dict]:
        """The claimed blocks: cidr, affine host, addresses used (reserved ones not counted), free."""
        pool = component(pool)

        def fn(t):
            p = self._load(t, pool, cached=False)
            out = []
            for rec in t.list(self._blocks_prefix(pool)):
                i = p.block_index(rec.key.rsplit("/", 1)[1])
                x = _bits(rec.value)
                used = (x & ~p.reserved_mask(i)).bit_count()
                out.append({"cidr": str(p.block_net(i)), "host": rec.value["host"], "used": used,
                            "free": p.block_size - x.bit_count(), "revision": rec.create_revision})
            return sorted(out, key=lambda b: ipaddress.ip_network(b["cidr"]))

        return self.store.txn(fn, retries=self.retries)

    def release_empty_blocks(self, pool: str, host: Optional[str] = None) -> list[str]:
        """Give back ``host``'s blocks (default: this host's) that hold no allocation, so other
        hosts may claim them.  Each deletion compares the block, so an allocation committed into
        it meanwhile keeps it.  Returns the released blocks' CIDRs."""
        pool = component(pool)
        host = self.host if host is None else component(host)

        def fn(t):
            p = self._load(t, pool, cached=False)
            gone = []
            for rec in t.list(self._blocks_prefix(pool)):
                i = p.block_index(rec.key.rsplit("/", 1)[1])
                if rec.value.get("host") == host and _bits(rec.value) == p.reserved_mask(i):
                    t.delete(rec.key)
                    gone.append(i)
            return p, gone

        p, gone = self.store.txn(fn, retries=self.retries)
        own = self._own.get(pool)
        for i in gone:
            if own is not None and host == self.host:
                own.pop(i, None)
        return [str(p.block_net(i)) for i in gone]

    # --- consistency ------------------------------------------------------------------------------------
    def verify(self, pool: str) -> list[str]:
        """Problems of the pool's state, read in one snapshot (empty list = sound): a handle whose
        bit is free, a set bit no handle names, two handles on one address, a reserved bit clear,
        a block outside the pool."""
        pool = component(pool)
        hprefix = self._handles_prefix(pool)

        def fn(t):
            p = self._load(t, pool, cached=False)
            problems = []
            bits: dict[int, int] = {}
            for rec in t.list(self._blocks_prefix(pool)):
                name = rec.key.rsplit("/", 1)[1]
                i = p.block_index(name)
                if not 0 <= i < p.block_count or p.block_name(i) != name:
                    problems.append(f"block {name} is not a block of {p.net}")
                    continue
                bits[i] = _bits(rec.value)
                r = p.reserved_mask(i)
                if bits[i] & r != r:
                    problems.append(f"block {name}: a reserved address is marked free")
                if bits[i] >> p.block_size:
                    problems.append(f"block {name}: bits beyond the block")
            named: dict[tuple[int, int], str] = {}
            for rec in t.list(hprefix):
                h = rec.key[len(hprefix):]
                addr = ipaddress.ip_address(rec.value["cidr"].split("/")[0])
                i, o = p.locate(addr)
                if (i, o) in named:
                    problems.append(f"address {addr} held by handles {named[(i, o)]} and {h}")
                named[(i, o)] = h
                if not bits.get(i, 0) >> o & 1:
                    problems.append(f"handle {h} holds {addr}, whose bit is free")
                elif p.reserved_mask(i) >> o & 1:
                    problems.append(f"handle {h} holds reserved address {addr}")
            for i, x in bits.items():
                x &= ~p.reserved_mask(i)
                while x:
                    low = x & -x
                    o = low.bit_length() - 1
                    if (i, o) not in named:
                        problems.append(f"address {p.address(i, o)} is allocated but no handle holds it")
                    x ^= low
            return problems

        return self.store.txn(fn, retries=self.retries)

    def allocated(self, pool: str) -> Iterator[str]:
        """Allocated addresses (bare), ascending."""
        return iter(sorted((h["cidr"].split("/")[0] for h in self.handles(pool).values()),
                           key=ipaddress.ip_address))
