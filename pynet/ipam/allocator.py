"""The IPAM: pools and addresses, persistent in the Store.

Every verb that changes state is one store transaction, so a SIGKILL at any
instant leaves either the whole change or none of it, and the daemon and the
CNI binaries can allocate from one pool at the same time.  Inputs are parsed
before the transaction starts, so garbage never touches the store.

Transactions (Store v2).  Each verb is a function of a v2 txn (``get``,
``list``, ``put``, ``delete``, ``create``, ``delete_prefix``, ``hint``), run
in one of two ways (``pynet.store.optimistic.run``) -- the function is the same, so the semantics are too:

* ``txn=t`` given: it runs in the caller's ``store.txn(fn)`` (the caller
  passes its transaction down; nothing nests, one commit for everything).
* otherwise ``store.txn(fn)``: optimistic.  On etcd that is all there is
  (``retries`` bounds the attempts; conflicts are transient
  ``StoreConflict``).  On a store with a write lock (SQLite, memory) a
  second conflict falls back to running the function under the lock
  (``store.transaction()``): several processes on one SQLite file then
  queue as they always did instead of starving each other.

No hot key.  Nothing every allocation writes is shared by all allocators
unless the allocation itself is: the pool record is written when the pool
is made (and by the rare ``hold_pool``/``release_pool`` flag changes), never
by an allocation.  An allocation writes its bitmap block (and a summary
block when a block fills or stops being full), its holder record, and the
next-fit cursor as a *hint*:

* ``used`` is not stored: ``get_pool``/``list_pools`` count the bits of the
  pool's leaf blocks (one listing of ``ipam/bits/<pid>/``; a block is 512
  bytes per 4096 addresses, so a full /16 is 8 KiB).  Per-block counts
  would be a second key written per allocation; a pool-wide counter is the
  hot key again.
* the cursor (``ipam/cursors/<pid>``, ``{"cursor": ordinal}``) keeps
  Docker's behaviour -- the next free address after the last one handed
  out, so a just released address is not reused at once; wraps at the end;
  persistent across restarts and processes -- but is read with
  ``t.hint()`` (not recorded, so no compare) and written blindly.  Two
  allocators never conflict on it; any free address is a correct answer,
  the cursor only says which one is preferred.  The price: a long-lived
  allocator continues from the cursor it last saw.  It sees a fresh one
  whenever its commit conflicts (the failure branch returns it) -- which
  is whenever another process changed the block it allocates from, i.e.
  whenever someone released or took an address there since -- and every
  new process (a CNI binary, a restarted daemon) reads it anew.
* concurrent allocations in different bitmap blocks do not conflict; in
  the same block they do, and the loser runs again (bounded).

One round trip on etcd.  Reads of the pool record, the bitmap blocks and
the cursor go through the store's per-process record cache
(``t.get(key, cached=True)``, ``t.hint``): a warm allocation sends only its
commit, one etcd Txn whose compares validate every cached read (pool
record and block ``mod_revision``); when a compare fails, the Txn's failure
branch returns the current records, the cache refreshes from them and the
allocation runs again (see ``pynet.store.optimistic``).

Store keys (all under ``ipam/``; ``<pid>`` is the pool ID with ``%`` and ``/``
percent-escaped):

* ``ipam/pools/<pid>``                 pool record (JSON): CIDRs, options, flags
                                       (pools of before v2 also carry a frozen
                                       ``cursor``/``used``, read only as the
                                       cursor's fallback)
* ``ipam/cursors/<pid>``               next-fit cursor hint (``{"cursor": n}``)
* ``ipam/bits/<pid>/<hex block>``      allocation bitmap blocks (bytes, absent = free)
* ``ipam/full/<pid>/<level>/<hex>``    summary bitmaps: which blocks are full
* ``ipam/pool-holders/<pid>/<holder>`` who holds the pool (``{}``)
* ``ipam/holders/<pid>/<addr>/<holder>`` who holds an address (``{}``, or
  ``{"gateway": true}`` for a runtime's automatic gateway)

Holders (``<holder>`` percent-escaped like ``<pid>``) say *why* a pool or an
address is reserved: ``docker`` (dockerd asked through the IPAM API), a
network (``network/<id>``: its gateway and aux addresses, its pool), a CNI
attachment (``endpoint/<net>/<ep>``, ``cni-ipam/<name>/<container>/<ifname>``).
A holder's record is written in the same transaction as the allocation and
deleted in the same transaction as the release, so a crash never separates
them (an etcd store does the same in one Txn).  Releasing frees an address
only when its last holder lets go, and a pool that has ever had a holder is
forgotten only when none is left -- so dockerd's ReleasePool of a pool that
CNI pods still use leaves it reserved until the last pod leaves.  An empty
holder (``""``) is the anonymous caller of before holders existed: its
allocations carry no record and its releases are unconditional.
"""
from __future__ import annotations

import ipaddress
from typing import Callable, Iterable, Iterator, Optional

from pynet.errors import (AddressInUse, InvalidAddress, InvalidParameter, InvalidSubnet,
                          PoolExhausted, PoolNotFound, PoolOverlap)
from pynet.ipam.bitmap import Bitmap, iter_set, prefixes
from pynet.store.optimistic import run as run_txn
from pynet.ipam.pools import (GATEWAY_TYPE, REQUEST_ADDRESS_TYPE, Geometry, choose_default_pool,
                              key_id, make_pool_id, parse_address, parse_address_space,
                              parse_network, parse_options, parse_routes, read_host_routes)

LOCAL_DEFAULT = "LocalDefault"
GLOBAL_DEFAULT = "GlobalDefault"

# etcd: attempts of one verb before StoreConflict.  Allocators on one block conflict by design
# (next-fit sends them all to the same block); each round (one round trip: the failed commit
# brings the current block) one of them wins, so with n contenders a verb fails only after
# losing 200 rounds in a row, (1 - 1/n) ** 200: 2e-25 for 4, 3e-6 for 16.
DEFAULT_RETRIES = 200

# Addresses one transaction of a release of many frees (release_holder without a caller's
# txn): each costs a recorded read of its holds, and the bitmap blocks add a few more, under
# etcd's --max-txn-ops (128) compares per Txn.  A bigger release is several such commits.
RELEASE_BATCH = 48
# Bounds the commits of one release (RELEASE_BATCH addresses each: a /13 worth).
MAX_RELEASE_BATCHES = 10_000

_POOLS = "ipam/pools/"
_CURSORS = "ipam/cursors/"
_POOL_HOLDERS = "ipam/pool-holders/"
_HOLDERS = "ipam/holders/"


def _unescape(k: str) -> str:
    return k.replace("%2F", "/").replace("%25", "%")


def _pool_key(pool_id: str) -> str:
    return _POOLS + key_id(pool_id)


def _cursor_key(pool_id: str) -> str:
    return _CURSORS + key_id(pool_id)


def _pool_holders_prefix(pool_id: str) -> str:
    return f"{_POOL_HOLDERS}{key_id(pool_id)}/"


def _holders_prefix(pool_id: str, addr: str = "") -> str:
    """Every address hold of the pool, or (``addr`` given) of one address."""
    return f"{_HOLDERS}{key_id(pool_id)}/" + (f"{addr}/" if addr else "")


def _check_holder(holder) -> str:
    if not isinstance(holder, str):
        raise InvalidParameter(f"holder must be a string, got {holder!r}")
    return holder


def _check_pool_id(pool_id) -> str:
    if not isinstance(pool_id, str):
        raise InvalidParameter(f"pool id must be a string, got {pool_id!r}")
    return pool_id


def _listed(t, prefix: str):
    """``t.list(prefix)`` recording the range only (see ``OptimisticTxn.list``)."""
    try:
        return t.list(prefix, keys=False)
    except TypeError:  # a txn of another kind (a test's): every key recorded
        return t.list(prefix)


class Ipam:
    """Docker-style IPAM over a Store.

    ``default_pools``: list of (base CIDR, prefix length) to carve pools from
    when a request names no subnet; IPv6 entries serve ``v6=True`` requests.
    The shipped defaults (``Config.default_pools``) are IPv4 only, so an IPv6
    request without a subnet raises NoDefaultPool, as Docker 20.10 does.
    ``host_routes``: callable returning CIDR strings that default pools must
    not overlap (default: the kernel's routing tables from /proc).
    ``retries``: optimistic attempts of one verb on a store without a write
    lock (etcd) before ``StoreConflict``.

    Address spaces: ``address_spaces()`` advertises Docker's two names, but
    any name without '/' works, so a CNI network may keep its own space in
    which the same CIDR can exist again.  Pools never overlap within a space.

    Every verb takes ``txn=``: a v2 txn of the same store to run in (see the
    module docstring); without it the verb runs its own transaction.
    """

    def __init__(self, store, default_pools: Optional[Iterable] = None,
                 host_routes: Optional[Callable[[], Iterable[str]]] = None,
                 retries: int = DEFAULT_RETRIES):
        self.store = store
        if default_pools is None:
            from pynet.config import Config
            default_pools = Config().default_pools
        self.default_pools = [tuple(p) for p in default_pools]
        self.host_routes = host_routes or read_host_routes
        self.retries = retries
        # a pool ID names its CIDRs, so its geometry never changes
        self._geometry: dict[str, Geometry] = {}

    # --- running a verb ------------------------------------------------------------
    def _run(self, fn, txn=None):
        """``fn(t)`` in the caller's txn or a txn of its own (``pynet.store.optimistic.run``)."""
        return run_txn(self.store, fn, txn, retries=self.retries)

    # --- address spaces and pools ----------------------------------------------
    def address_spaces(self) -> dict:
        return {"LocalDefaultAddressSpace": LOCAL_DEFAULT,
                "GlobalDefaultAddressSpace": GLOBAL_DEFAULT}

    def request_pool(self, address_space: str, pool: str = "", sub_pool: str = "",
                     options: Optional[dict] = None, v6: bool = False,
                     holder: str = "", txn=None) -> tuple[str, str, dict]:
        """Reserve a pool for ``holder``; returns (pool_id, pool CIDR, data).

        With ``pool`` empty a default pool is chosen (``sub_pool`` must then
        be empty too).  The family follows ``pool`` when given, ``v6`` otherwise.
        """
        _check_holder(holder)
        space = parse_address_space(address_space)
        opts = parse_options(options)
        if not isinstance(v6, bool):
            raise InvalidParameter(f"v6 must be a boolean, got {v6!r}")
        pool = "" if pool is None else pool
        sub_pool = "" if sub_pool is None else sub_pool
        asked = parse_network(pool) if pool else None
        sub = parse_network(sub_pool, "sub-pool") if sub_pool else None
        if sub is not None:
            if asked is None:
                raise InvalidParameter("a sub-pool needs an explicit pool")
            if sub.version != asked.version or not sub.subnet_of(asked):
                raise InvalidSubnet(f"sub-pool {sub} does not lie inside pool {asked}")

        def fn(t):
            net = asked
            # a pool gone meanwhile only makes the overlap check conservative
            held = [rec.value for rec in _listed(t, _POOLS + key_id(space) + "%2F")]
            held_nets = [ipaddress.ip_network(p["pool"]) for p in held]
            if net is None:
                version = 6 if v6 else 4
                net = choose_default_pool(self.default_pools, version, held_nets,
                                          parse_routes(self.host_routes))
            else:
                for other, p in zip(held_nets, held):
                    if other.version == net.version and other.overlaps(net):
                        still = "" if p.get("requested", True) else (
                            " (released by its requester but still held by "
                            + ", ".join(self._holder_names(t, p["id"])) + ")")
                        raise PoolOverlap(f"pool {net} overlaps pool {other} in address space {space}{still}")
            pool_id = make_pool_id(space, net, sub)
            t.put(_pool_key(pool_id), {
                "id": pool_id, "address_space": space, "pool": str(net),
                "sub_pool": str(sub) if sub is not None else "", "v6": net.version == 6,
                "options": opts, "managed": bool(holder),
            })
            # made with the pool, so its presence never depends on what was allocated
            t.put(_cursor_key(pool_id), {"cursor": 0})
            if holder:
                t.put(_pool_holders_prefix(pool_id) + key_id(holder), {})
            return pool_id, str(net), {}

        return self._run(fn, txn)

    def hold_pool(self, pool_id: str, holder: str, txn=None) -> None:
        """Add ``holder`` to an existing pool's holders (a network over a pool
        its runtime requested).  Raises PoolNotFound."""
        if not _check_holder(holder):
            raise InvalidParameter("holder is empty")

        def fn(t):
            p = self._load(pool_id, t)
            t.put(_pool_holders_prefix(pool_id) + key_id(holder), {})
            if not p.get("managed"):
                p["managed"] = True
                t.put(_pool_key(pool_id), p)

        self._run(fn, txn)

    def find_pool(self, address_space: str, cidr: str, txn=None) -> Optional[str]:
        """The ID of the pool of ``cidr`` in the address space (with or
        without a sub-pool), None if pynet's IPAM has none."""
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except (TypeError, ValueError):
            return None

        def fn(t):
            for rec in t.list(_POOLS + key_id(address_space) + "%2F"):
                if rec.value.get("pool") == str(net):
                    return rec.value["id"]
            return None

        return self._run(fn, txn)

    def release_pool(self, pool_id: str, holder: str = "", txn=None) -> bool:
        """``holder`` lets go of the pool and of every address it holds in
        it; the pool is forgotten (every address with it) when no holder of
        the pool or of one of its addresses is left.  ``holder=""``: forget
        it whoever holds it.  An unknown pool is already released.  Returns
        whether the pool is gone."""
        _check_pool_id(pool_id)
        _check_holder(holder)

        def fn(t):
            rec = t.get(_pool_key(pool_id))
            if rec is None:
                return True
            if holder:
                t.delete(_pool_holders_prefix(pool_id) + key_id(holder))
                self._drop_holds(t, rec.value, lambda h: h == holder)
                if self._held(t, pool_id):
                    p = rec.value
                    if p.get("requested", True):
                        p["requested"] = False  # shown by ipam ls, named by PoolOverlap
                        t.put(_pool_key(pool_id), p)
                    return False
            self._forget(t, pool_id)
            return True

        return self._run(fn, txn)

    def _forget(self, t, pool_id: str) -> None:
        kid = key_id(pool_id)
        t.delete(_pool_key(pool_id))
        t.delete(_cursor_key(pool_id))
        for prefix in (*prefixes(kid), _pool_holders_prefix(pool_id), _holders_prefix(pool_id)):
            t.delete_prefix(prefix)

    @staticmethod
    def _held(t, pool_id: str) -> bool:
        # keys=False: a holder gone meanwhile only keeps the pool one release longer, and
        # a pool with hundreds of holders stays one compare (etcd's --max-txn-ops)
        return bool(_listed(t, _pool_holders_prefix(pool_id)) or _listed(t, _holders_prefix(pool_id)))

    @staticmethod
    def _holder_names(t, pool_id: str) -> list[str]:
        names = {_unescape(r.key.rsplit("/", 1)[1]) for r in t.list(_pool_holders_prefix(pool_id))}
        names |= {_unescape(r.key.rsplit("/", 1)[1]) for r in t.list(_holders_prefix(pool_id))}
        return sorted(names)

    def _drop_holds(self, t, p: dict, which, limit: Optional[int] = None) -> tuple[list[str], bool]:
        """Delete the address holds whose holder satisfies ``which``; free
        the addresses left without a holder.  Returns the freed ones, and
        whether addresses past ``limit`` (a bounded transaction's share) are
        left for another transaction."""
        g = self._geom(p)
        prefix = _holders_prefix(p["id"])
        by_addr: dict[str, list[tuple[str, str]]] = {}
        # the pool's holds, not recorded (a pool may have thousands: etcd's --max-txn-ops);
        # what the decision rests on is: an address is freed only after its own holds are
        # listed again, recorded, and none but the dropped ones is left
        for r in getattr(t, "scan", t.list)(prefix):
            addr, h = r.key[len(prefix):].split("/", 1)
            by_addr.setdefault(addr, []).append((r.key, _unescape(h)))
        freed = []
        bits = Bitmap(t, g.layout, cached=True)
        todo = [(addr, [k for k, h in holds if which(h)]) for addr, holds in by_addr.items()]
        todo = [(addr, dropped) for addr, dropped in todo if dropped]
        more = limit is not None and len(todo) > limit
        for addr, dropped in todo[:limit] if more else todo:
            others = [r for r in t.list(_holders_prefix(p["id"], addr)) if r.key not in dropped]
            for k in dropped:
                t.delete(k)
            if not others and bits.clear(g.ordinal(ipaddress.ip_address(addr))):
                freed.append(addr)
        return freed, more

    # --- addresses ------------------------------------------------------------------
    def request_address(self, pool_id: str, address: str = "",
                        options: Optional[dict] = None, holder: str = "", txn=None) -> str:
        """Allocate an address for ``holder``; returns it as ``addr/prefixlen``.

        * explicit ``address``: anywhere in the pool, even outside the sub-pool
          (gateway and auxiliary addresses of ``--ip-range`` networks).
        * gateway request without address: the lowest free address of the
          dynamic range (sub-pool, else pool), as Docker's default IPAM does --
          ``.1`` of a fresh pool, the first address of ``--ip-range`` if given.
        * otherwise: the next free address after the last one handed out, so
          a just released address is not reused at once; wraps at the end
          (the cursor is a hint: see the module docstring).
        """
        _check_pool_id(pool_id)
        _check_holder(holder)
        opts = parse_options(options)
        wanted = None if address is None or address == "" else parse_address(address)
        gateway = opts.get(REQUEST_ADDRESS_TYPE) == GATEWAY_TYPE
        key, cursor_key = _pool_key(pool_id), _cursor_key(pool_id)

        def fn(t):
            rec = t.get(key, cached=True)
            if rec is None:
                raise PoolNotFound(f"pool {pool_id} not found")
            p = rec.value
            g = self._geom(p)
            bits = Bitmap(t, g.layout, cached=True)
            if wanted is not None:
                o = self._check_explicit(g, pool_id, wanted, address)
                if bits.test(o):
                    raise AddressInUse(f"address {wanted} is already allocated in pool {pool_id}")
            elif gateway:
                o = bits.find_free(g.rlo, g.rhi)
            else:
                hint = t.hint(cursor_key)
                cursor = hint.value.get("cursor", 0) if hint is not None else p.get("cursor", 0)
                cursor = min(max(int(cursor), g.rlo), g.rhi + 1)
                o = bits.find_free(cursor, g.rhi)
                if o is None:
                    o = bits.find_free(g.rlo, cursor - 1)
                if o is not None:
                    t.put(cursor_key, {"cursor": o + 1 if o < g.rhi else g.rlo})
            if o is None:
                where = f"sub-pool {g.sub_pool} of pool {pool_id}" if g.sub_pool else f"pool {pool_id}"
                raise PoolExhausted(f"no free address left in {where}")
            bits.set(o)
            if holder:
                t.put(_holders_prefix(pool_id, g.address(o)) + key_id(holder),
                      {"gateway": True} if gateway else {})
            return g.cidr(o)

        return self._run(fn, txn)

    def hold_address(self, pool_id: str, address: str, holder: str, txn=None) -> bool:
        """Add ``holder`` to the holders of an allocated address (a network
        holding the gateway its runtime requested).  False (nothing written)
        when the pool is unknown or the address not allocated."""
        if not _check_holder(holder):
            raise InvalidParameter("holder is empty")
        addr = parse_address(address)

        def fn(t):
            rec = t.get(_pool_key(pool_id), cached=True)
            if rec is None:
                return False
            g = self._geom(rec.value)
            if addr.version != g.pool.version or addr not in g.pool:
                return False
            o = g.ordinal(addr)
            if not Bitmap(t, g.layout, cached=True).test(o):
                return False
            t.put(_holders_prefix(pool_id, g.address(o)) + key_id(holder), {})
            return True

        return self._run(fn, txn)

    def release_address(self, pool_id: str, address: str, holder: str = "", txn=None) -> None:
        """``holder`` lets go of an address (bare or CIDR); it is freed when
        no holder is left (``holder=""``: freed whoever holds it).  The last
        address hold of a pool no holder holds any more forgets the pool.
        An unknown pool or an address not allocated is already released."""
        _check_pool_id(pool_id)
        _check_holder(holder)
        addr = parse_address(address)
        key = _pool_key(pool_id)

        def fn(t):
            rec = t.get(key, cached=True)
            if rec is None:
                return
            p = rec.value
            g = self._geom(p)
            if addr.version != g.pool.version or addr not in g.pool:
                return
            o = g.ordinal(addr)
            hp = _holders_prefix(pool_id, g.address(o))
            if holder:
                t.delete(hp + key_id(holder))
                if t.list(hp):
                    return  # someone else still holds it
            else:
                t.delete_prefix(hp)
            if not g.lo <= o <= g.hi or not Bitmap(t, g.layout, cached=True).clear(o):
                return
            if p.get("managed") and not self._held(t, pool_id):
                self._forget(t, pool_id)

        self._run(fn, txn)

    def release_holder(self, pool_id: str, holder: str, prefix: bool = False, txn=None) -> list[str]:
        """``holder`` lets go of every address it holds in the pool, whichever
        they are (``prefix=True``: every holder whose name starts with
        ``holder``, e.g. all ``endpoint/<net>/`` of a network).  This is how an
        attachment is released when its records are gone or were never
        written (an ADD killed halfway): the holder names it, the addresses
        need not be known.  Addresses other holders keep stay allocated; the
        pool is forgotten as by ``release_address``.  An unknown pool holds
        nothing.  Returns the freed addresses."""
        _check_pool_id(pool_id)
        if not _check_holder(holder):
            raise InvalidParameter("holder is empty")
        which = (lambda h: h.startswith(holder)) if prefix else (lambda h: h == holder)

        def fn(t, limit=None):
            rec = t.get(_pool_key(pool_id), cached=True)
            if rec is None:
                return [], False
            freed, more = self._drop_holds(t, rec.value, which, limit)
            if freed and not more and rec.value.get("managed") and not self._held(t, pool_id):
                self._forget(t, pool_id)
            return freed, more

        if txn is not None:  # the caller's one commit: all of it (the caller bounds it)
            return self._run(lambda t: fn(t)[0], txn)
        # A transaction of its own: RELEASE_BATCH addresses per commit, so a release of
        # hundreds (a network's killed attachments, a forced delete) stays under etcd's
        # --max-txn-ops.  Each commit is whole; a release killed between two leaves the
        # rest held by the same holder, and calling it again finishes.
        out: list[str] = []
        for _ in range(MAX_RELEASE_BATCHES):
            freed, more = self._run(lambda t: fn(t, RELEASE_BATCH))
            out += freed
            if not more:
                break
        return out

    def holders(self, pool_id: str, txn=None) -> dict:
        """{"pool": [holders of the pool], "addresses": {bare address: [holders]}}."""
        def fn(t):
            self._load(pool_id, t)
            prefix = _holders_prefix(pool_id)
            addrs: dict[str, list[str]] = {}
            for r in t.list(prefix):
                addr, h = r.key[len(prefix):].split("/", 1)
                addrs.setdefault(addr, []).append(_unescape(h))
            pool = [_unescape(r.key.rsplit("/", 1)[1]) for r in t.list(_pool_holders_prefix(pool_id))]
            return {"pool": pool, "addresses": addrs}

        return self._run(fn, txn)

    # --- inspection and repair --------------------------------------------------------
    def list_pools(self, txn=None) -> list[dict]:
        return self._run(lambda t: [self._describe(t, rec.value) for rec in t.list(_POOLS)], txn)

    def get_pool(self, pool_id: str, txn=None) -> dict:
        return self._run(lambda t: self._describe(t, self._load(pool_id, t)), txn)

    def allocated(self, pool_id: str, txn=None) -> Iterator[str]:
        """Allocated addresses (bare), ascending."""
        def fn(t):
            g = self._geom(self._load(pool_id, t))
            return [g.address(o) for o in iter_set(t, g.layout)]

        return iter(self._run(fn, txn))

    def reconcile(self, pool_id: str, held: set[str], txn=None) -> list[str]:
        """Release every allocated address of the pool that is not in ``held``
        (what the runtime really uses) and that no holder record names, and
        return the released ones.

        The caller must include allocations still in flight in ``held``;
        this cannot tell a leak from an answer on its way.  An unknown pool
        has nothing to reconcile."""
        _check_pool_id(pool_id)
        keep = {str(parse_address(a)) for a in held}
        key = _pool_key(pool_id)

        def fn(t):
            rec = t.get(key)
            if rec is None:
                return []
            g = self._geom(rec.value)
            bits = Bitmap(t, g.layout)
            prefix = _holders_prefix(pool_id)
            # An address someone holds by record is never a leak: an ADD
            # that committed its first step after the caller listed what
            # is in flight holds its address this way (orphaned holds are
            # released by their holder's own clean-up, not here).
            by_record = {r.key[len(prefix):].split("/", 1)[0] for r in t.list(prefix)}
            released = []
            for o in list(iter_set(t, g.layout)):
                a = g.address(o)
                if a not in keep and a not in by_record:
                    bits.clear(o)
                    released.append(a)
            return released

        return self._run(fn, txn)

    def reconcile_holder(self, pool_id: str, holder: str, held: set[str], txn=None) -> list[str]:
        """``holder`` (a runtime) lets go of every address of the pool it
        holds but no longer lists in ``held`` -- except the automatic
        gateways it asked for, which it never lists.  Addresses other holders
        keep (a CNI pod's on a Docker network) and allocations without a
        holder record stay: only what the runtime itself asked for is
        released.  Returns the freed addresses."""
        _check_pool_id(pool_id)
        if not _check_holder(holder):
            raise InvalidParameter("holder is empty")
        keep = {str(parse_address(a)) for a in held}
        hk = key_id(holder)

        def fn(t):
            rec = t.get(_pool_key(pool_id))
            if rec is None:
                return []
            prefix = _holders_prefix(pool_id)
            gone = set()
            for r in t.list(prefix):
                addr, h = r.key[len(prefix):].split("/", 1)
                if h == hk and addr not in keep and not (r.value or {}).get("gateway"):
                    gone.add(addr)
            if not gone:
                return []
            return self._drop_addr_holds(t, rec.value, holder, gone)

        return self._run(fn, txn)

    def _drop_addr_holds(self, t, p: dict, holder: str, addrs: set[str]) -> list[str]:
        g = self._geom(p)
        bits = Bitmap(t, g.layout, cached=True)
        freed = []
        for a in sorted(addrs, key=lambda x: ipaddress.ip_address(x)):
            hp = _holders_prefix(p["id"], a)
            t.delete(hp + key_id(holder))
            if not t.list(hp) and bits.clear(g.ordinal(ipaddress.ip_address(a))):
                freed.append(a)
        return freed

    def verify(self, pool_id: str, txn=None) -> list[str]:
        """Consistency problems of one pool's state (empty list = sound):
        bits set outside the pool, and every summary bit against the blocks
        below it."""
        def fn(t):
            problems = []
            g = self._geom(self._load(pool_id, t))
            lay = g.layout
            blocks: dict[int, dict[int, int]] = {0: {}}
            leaf_prefix, full_prefix = prefixes(g.key)
            for rec in t.list(leaf_prefix):
                blocks[0][int(rec.key[len(leaf_prefix):], 16)] = int.from_bytes(rec.value, "little")
            for rec in t.list(full_prefix):
                level, block = rec.key[len(full_prefix):].split("/")
                blocks.setdefault(int(level), {})[int(block, 16)] = int.from_bytes(rec.value, "little")
            for k, x in blocks[0].items():
                if x & ~lay.valid(0, k):
                    problems.append(f"block {k:x} marks reserved or out-of-pool addresses")
            for level in range(1, len(lay.counts)):
                want: dict[int, int] = {}
                for k, x in blocks.get(level - 1, {}).items():
                    if lay.is_full(level - 1, k, x):
                        hi, j = divmod(k, lay.bits)
                        want[hi] = want.get(hi, 0) | 1 << j
                if want != {k: x for k, x in blocks.get(level, {}).items() if x}:
                    problems.append(f"summary level {level} disagrees with level {level - 1}")
            return problems

        return self._run(fn, txn)

    # --- helpers ------------------------------------------------------------------------
    def _load(self, pool_id: str, t) -> dict:
        _check_pool_id(pool_id)
        rec = t.get(_pool_key(pool_id))
        if rec is None:
            raise PoolNotFound(f"pool {pool_id} not found")
        return rec.value

    def _geom(self, p: dict) -> Geometry:
        g = self._geometry.get(p["id"])
        if g is None:
            sub = ipaddress.ip_network(p["sub_pool"]) if p["sub_pool"] else None
            g = Geometry(p["id"], ipaddress.ip_network(p["pool"]), sub)
            self._geometry[p["id"]] = g
        return g

    @staticmethod
    def _check_explicit(g: Geometry, pool_id: str, addr, raw: str) -> int:
        if addr.version != g.pool.version or addr not in g.pool:
            raise InvalidAddress(f"address {raw} is outside pool {g.pool} ({pool_id})")
        if "/" in raw and raw.split("/", 1)[1].strip() != str(g.pool.prefixlen):
            raise InvalidAddress(f"address {raw} does not have the prefix length of pool {g.pool}")
        o = g.ordinal(addr)
        if not g.lo <= o <= g.hi:
            kind = "subnet-router anycast" if g.v6 else ("network" if o == 0 else "broadcast")
            raise InvalidAddress(f"address {addr} is the {kind} address of pool {g.pool}")
        return o

    def _describe(self, t, p: dict) -> dict:
        g = self._geom(p)
        # counted, not stored: a stored count would be rewritten by every allocation
        used = sum(int.from_bytes(r.value, "little").bit_count()
                   for r in t.list(prefixes(g.key)[0]))
        return {
            "id": p["id"], "address_space": p["address_space"], "pool": p["pool"],
            "sub_pool": p["sub_pool"], "v6": p["v6"], "options": dict(p.get("options") or {}),
            "size": g.size, "dynamic_size": max(0, g.rhi - g.rlo + 1),
            "used": used, "free": g.size - used,
            "requested": p.get("requested", True),
        }
