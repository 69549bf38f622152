"""Cluster-wide IPAM without a hot key: a pool split into blocks that hosts claim.

    ipam = BlockIpam(cluster, "10.77.0.0/16", reserved=["10.77.0.1"])
    ip = ipam.allocate("pod/<container>/<ifname>")    # idempotent per handle
    ipam.release("pod/<container>/<ifname>")          # a second release is a no-op

Keys, under the cluster root (``pynet.cluster``)::

    ipam/<pool>/blocks/<block>   {"host", "used": hex bitmap}   one per block (default /26)
    ipam/<pool>/handles/<handle> {"ip", "block", "host"}        one per allocation

(``<pool>`` and ``<block>`` are CIDRs with ``/`` written ``-``.)  Calico's block IPAM in essence:

- a host allocates from its own blocks with ONE optimistic transaction per address (the block's
  bitmap compared by ``mod_revision`` and rewritten, the handle created, in one commit; warm, the
  block comes from the record cache, so one etcd round trip).  Hosts write disjoint keys, so they
  do not conflict with each other (design.md: one key written by every allocation collapses to
  less than one writer's rate);
- a host with no free address in its blocks claims the next unclaimed block by a create-only
  write in that same transaction;
- only when no block is left unclaimed does it borrow a free address from another host's block
  (a compare-and-swap on that block, which may then conflict with its owner: retried).

The guarantee of the local bitmap IPAM holds: an address is handed out by a commit that sets its
bit, so no address is handed out twice, even across SIGKILL (a killed allocation either committed
both the bit and the handle, or nothing).  The pool's network and broadcast addresses and the
``reserved`` ones are never handed out.
"""
from __future__ import annotations

import ipaddress
import logging
from typing import Iterable, Optional

from pynet import errors

log = logging.getLogger("pynet.cluster.ipam")

DEFAULT_BLOCK = 26          # IPv4: 64 addresses a block
DEFAULT_BLOCK_V6 = 122      # IPv6: 64 addresses a block too (Calico's sizes)
MAX_ATTEMPTS = 1000


def _esc(cidr) -> str:
    return str(cidr).replace("/", "-")


def _unesc(name: str):
    return ipaddress.ip_network(name.replace("-", "/"))


class BlockIpam:
    def __init__(self, cluster, pool: str, block_prefix: Optional[int] = None,
                 reserved: Iterable[str] = ()):
        self.cluster = cluster
        self.pool = ipaddress.ip_network(pool, strict=False)
        if block_prefix is None:
            block_prefix = max(self.pool.prefixlen,
                               DEFAULT_BLOCK if self.pool.version == 4 else DEFAULT_BLOCK_V6)
        if not self.pool.prefixlen <= block_prefix <= self.pool.max_prefixlen:
            raise errors.InvalidParameter(f"block size /{block_prefix} does not fit pool {self.pool}")
        self.block_prefix = block_prefix
        self.reserved = {ipaddress.ip_address(a) for a in reserved}
        if self.pool.version == 4 and self.pool.prefixlen < 31:
            self.reserved |= {self.pool.network_address, self.pool.broadcast_address}
        else:
            self.reserved.add(self.pool.network_address)   # IPv6: the subnet-router anycast

    def _all_blocks(self):
        """The pool's blocks in order, lazily (an IPv6 /64 has 2^58 /122s)."""
        return self.pool.subnets(new_prefix=self.block_prefix)

    # ---- keys
    def _block_key(self, block) -> str:
        return self.cluster.key("ipam", _esc(self.pool), "blocks", _esc(block))

    def _handle_key(self, handle: str) -> str:
        from pynet.store.keys import component
        return self.cluster.key("ipam", _esc(self.pool), "handles", component(handle.replace("/", ":")))

    def _blocks_prefix(self) -> str:
        return self.cluster.prefix("ipam", _esc(self.pool), "blocks")

    # ---- bitmap
    def _free_index(self, block, used: int) -> Optional[int]:
        size = block.num_addresses
        for i in range(size):
            if not used >> i & 1 and block.network_address + i not in self.reserved:
                return i
        return None

    # ---- verbs
    def _owners(self) -> dict:
        """block name -> owning host, read outside any transaction: a listing
        recorded in a txn would make every host's allocation conflict with
        every other's (any write under the prefix).  Only the one block a
        transaction uses is compared."""
        pre = self._blocks_prefix()
        return {r.key[len(pre):]: (r.value or {}).get("host") for r in self.cluster.store.list(pre)}

    def allocate(self, handle: str, want: str = "") -> str:
        """An address for ``handle`` (the same one again for a handle that has one);
        ``want``: exactly that address (AddressInUse when the cluster has it)."""
        c = self.cluster
        hkey = self._handle_key(handle)
        if want:
            return self._reserve(hkey, ipaddress.ip_address(want))
        full: set = set()            # blocks found full in this call
        for _ in range(MAX_ATTEMPTS):          # bounded: a block claimed or full is not tried again
            owners = self._owners()
            mine = [n for n, h in owners.items() if h == c.host and n not in full]
            free = next((_esc(b) for b in self._all_blocks() if _esc(b) not in owners), None)
            theirs = [n for n, h in owners.items() if h != c.host and n not in full]
            if mine:
                name, claim = mine[0], False
            elif free:
                name, claim = free, True
            elif theirs:
                name, claim = theirs[0], False
            else:
                raise errors.PoolExhausted(f"no free address left in cluster pool {self.pool}")
            got = c.store.txn(lambda t: self._take(t, hkey, _unesc(name), claim), retries=20)
            if got == "full":
                full.add(name)
                continue
            if got == "claimed":        # another host claimed it first
                continue
            if claim:
                log.info("host %s claimed block %s of %s", c.host, _unesc(name), self.pool)
            return got
        raise errors.StoreConflict(f"cluster pool {self.pool}: no allocation after trying every block")

    def _reserve(self, hkey: str, ip) -> str:
        if ip not in self.pool:
            raise errors.InvalidAddress(f"address {ip} is outside cluster pool {self.pool}")
        if ip in self.reserved:
            raise errors.AddressInUse(f"address {ip} is reserved in cluster pool {self.pool}")
        block = ipaddress.ip_network(f"{ip}/{self.block_prefix}", strict=False)
        key = self._block_key(block)
        c = self.cluster

        def step(t):
            have = t.get(hkey)
            if have is not None:
                if (have.value or {}).get("ip") == str(ip):
                    return str(ip)
                raise errors.AddressInUse(f"this endpoint already has {have.value.get('ip')} in the cluster")
            rec = t.get(key, cached=True)
            used = int((rec.value or {}).get("used", "0"), 16) if rec is not None else 0
            i = int(ip) - int(block.network_address)
            if used >> i & 1:
                raise errors.AddressInUse(f"address {ip} is already in use in the cluster")
            value = {"host": (rec.value or {}).get("host") if rec is not None else c.host,
                     "used": format(used | 1 << i, "x")}
            (t.put if rec is not None else t.create)(key, value)
            t.create(hkey, {"ip": str(ip), "block": _esc(block), "host": c.host})
            return str(ip)

        return c.store.txn(step, retries=20)

    def _take(self, t, hkey: str, block, claim: bool) -> str:
        c = self.cluster
        have = t.get(hkey)
        if have is not None:
            return (have.value or {}).get("ip")          # a retried allocation: the same address
        key = self._block_key(block)
        rec = t.get(key, cached=True)
        if claim and rec is not None:
            return "claimed"
        if not claim and rec is None:
            return "claimed"                              # released meanwhile: look again
        used = int((rec.value or {}).get("used", "0"), 16) if rec is not None else 0
        i = self._free_index(block, used)
        if i is None:
            return "full"
        value = {"host": (rec.value or {}).get("host") if rec is not None else c.host,
                 "used": format(used | 1 << i, "x")}
        if claim:
            t.create(key, value)
        else:
            t.put(key, value)
        ip = str(block.network_address + i)
        t.create(hkey, {"ip": ip, "block": _esc(block), "host": c.host})
        return ip

    def release(self, handle: str) -> Optional[str]:
        """Free ``handle``'s address (None when it had none: an idempotent DEL)."""
        c = self.cluster
        hkey = self._handle_key(handle)

        def step(t):
            h = t.get(hkey)
            if h is None:
                return None
            ip = ipaddress.ip_address(h.value["ip"])
            block = _unesc(h.value["block"])
            bkey = self._block_key(block)
            rec = t.get(bkey)
            if rec is not None:
                used = int((rec.value or {}).get("used", "0"), 16)
                i = int(ip) - int(block.network_address)
                t.put(bkey, dict(rec.value, used=format(used & ~(1 << i), "x")))
            t.delete(hkey)
            return str(ip)

        return c.store.txn(step, retries=20)

    def blocks(self) -> dict:
        """block CIDR -> owning host."""
        return {str(_unesc(n)): h for n, h in self._owners().items()}

    def release_host_blocks(self, host: str) -> list[str]:
        """Give back the empty blocks of ``host`` (its last address released)."""
        c = self.cluster
        pre = self._blocks_prefix()

        def step(t):
            gone = []
            for r in t.list(pre):
                if (r.value or {}).get("host") == host and int((r.value or {}).get("used", "0"), 16) == 0:
                    t.delete(r.key)
                    gone.append(str(_unesc(r.key[len(pre):])))
            return gone

        return c.store.txn(step)
