"""Cluster membership: this host in a pynet cluster that shares one etcd.

A host is an identity (``host_id``: kept in the state dir, or ``--host-id``)
with an underlay address (``--advertise-address``, default: the address of
the interface holding the default route) and one lease (TTL 15 s by default)
that its daemon keeps alive every TTL/3 (:class:`pynet.store.lease.LeaseKeeper`).
Everything a host announces about itself lives on that lease and vanishes
with it; what outlives a dead agent (endpoints of running containers) does not.

Keys, under ``pynet/v2/cluster/[<namespace>/]`` (the namespace is the cluster
store URL's path, ``etcd://h1:2379,h2:2379/<namespace>``, so two clusters --
or two test runs -- can share one etcd)::

    hosts/<host>                 {"address", "name"}          on the host's lease
    networks/<network id>        {"name", "vni", "port", "subnets", "mtu"}   create-only
    vni/<vni>                    {"network"}                   create-only claim
    members/<network id>/<host>  {}      the host instantiated the network (not leased:
                                         the cluster network goes with its last member)
    vteps/<network id>/<host>    {"address"}   on the lease: the host has endpoints on
                                         the network (peers add its flood entry)
    endpoints/<network id>/<ep>  {"host", "ip", "ip6", "mac"}   not leased: a restarted
                                         agent must not wipe running containers

Nothing here touches the kernel: :mod:`pynet.cluster.agent` keeps a view of
these keys up to date (list, then watch) and hands it to the overlay driver,
which programs the VXLAN device (:func:`peers` says what it should hold).
"""
from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from pynet import errors
from pynet.store import keys

log = logging.getLogger("pynet.cluster")

FLOOD_MAC = "00:00:00:00:00:00"
HOST_ID_FILE = "host-id"
HOST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class NoClusterStore(errors.InvalidOption):
    """A cluster-wide thing asked of a host that belongs to no cluster."""


def split_url(url: str) -> tuple[str, str]:
    """``etcd://a:1,b:2/ns`` -> ("etcd://a:1,b:2", "ns"); no path -> namespace ""."""
    if not url.startswith("etcd://"):
        raise errors.InvalidParameter(f"invalid cluster store {url!r}: expected etcd://HOST:PORT[,...]")
    rest = url[len("etcd://"):].rstrip("/")
    hosts, _, ns = rest.partition("/")
    if not hosts:
        raise errors.InvalidParameter(f"invalid cluster store {url!r}: no endpoint")
    return "etcd://" + hosts, ns


def host_identity(state_dir: str) -> str:
    """This host's ID, created once in the state dir (``host-id``, as dockerd
    keeps its engine ID): the daemon and every CNI process of the host agree
    on it, and a reinstalled host with a fresh state dir is a new host."""
    path = os.path.join(state_dir, HOST_ID_FILE)
    try:
        with open(path) as f:
            value = f.read().strip()
        if HOST_ID_RE.fullmatch(value):
            return value
    except FileNotFoundError:
        pass
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    value = uuid.uuid4().hex[:16]
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(value + "\n")
    try:
        os.link(tmp, path)           # atomic create-if-absent: the first writer wins
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    with open(path) as f:
        return f.read().strip()


def default_route_address() -> str:
    """The source address of the default route (the address of the interface
    holding it).  A connected UDP socket sends nothing; the kernel only picks
    the route and its source."""
    for probe, fam in (("198.51.100.1", socket.AF_INET), ("2001:db8::1", socket.AF_INET6)):
        try:
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                return s.getsockname()[0]
        except OSError:
            continue
    raise errors.InvalidParameter("no default route: give this host's underlay address "
                                  "(--advertise-address / PYNET_ADVERTISE_ADDRESS)")


def check_local_address(address: str) -> str:
    """The advertise address must be one of this host's (peers send VXLAN to it)."""
    import ipaddress

    a = ipaddress.ip_address(address)
    fam = socket.AF_INET6 if a.version == 6 else socket.AF_INET
    try:
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.bind((str(a), 0))
    except OSError:
        raise errors.InvalidParameter(f"advertise address {address} is not an address of this host") from None
    return str(a)


class ClusterStore:
    """The cluster's store, riding through an election and its failures named.

    A member's death (the leader's) leaves the others electing for an election
    timeout or two; a request sent meanwhile gets no answer within the
    client's read timeout.  So one ``StoreUnavailable`` is followed by one
    resend after ``RIDE_THROUGH`` s -- safe for these calls: puts, deletes and
    reads are idempotent, and a v2 ``txn`` re-reads and re-decides (the block
    IPAM writes a handle with its bit, so a resent allocation finds its own).
    A cluster without quorum fails the resend too, a few seconds after the
    call: fast, not hung.  Then the error is named: an etcd without quorum or
    out of reach says "etcd at http://...: timed out", which means nothing to a
    ``docker network create`` user; what failed is the cluster store, so it is
    raised again as ``cluster store <url> unavailable: ...`` (still transient:
    Docker gets the ``Err``, CNI code 11).  Everything else passes through."""

    RIDE_THROUGH = 1.0
    RESENT = frozenset({"get", "put", "delete", "delete_prefix", "list", "txn", "update", "grant",
                        "keepalive", "revoke", "revision"})

    def __init__(self, store, url: str):
        self._store, self.url = store, url

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if not (callable(attr) and getattr(attr, "__self__", None) is self._store):
            return attr
        tries = 2 if name in self.RESENT else 1

        def call(*a, **kw):
            for attempt in range(tries):
                try:
                    return attr(*a, **kw)
                except errors.StoreUnavailable as e:
                    if str(e).startswith("cluster store "):
                        raise
                    if attempt + 1 < tries:
                        log.info("cluster store %s: %s; resending %s once", self.url, e, name)
                        time.sleep(self.RIDE_THROUGH)
                        continue
                    raise errors.StoreUnavailable(f"cluster store {self.url} unavailable: {e}") from e
        return call


@dataclass
class Peers:
    """What a host's VXLAN device of one network should hold: ``fdb`` {(mac,
    underlay address)} with the flood MAC once per VTEP, ``neigh`` {(ip, mac)}."""
    fdb: set
    neigh: set


class Cluster:
    """This host's handle on the cluster store (opened on first use, so a
    CNI process that never touches an overlay never imports the etcd client)."""

    def __init__(self, open_store: Callable[[], object], *, host: str, address: str = "",
                 namespace: str = "", lease_ttl: int = 15, vni_range: tuple = (4096, 0xFFFFFF),
                 vxlan_port: int = 4789, name: str = "", url: str = ""):
        self._open = open_store
        self.url = url
        self._store = None
        self._lock = threading.Lock()
        self.host = keys.component(host)
        self._address = address
        self.namespace = keys.component(namespace) if namespace else ""
        self.lease_ttl = int(lease_ttl)
        self.vni_range = (int(vni_range[0]), int(vni_range[1]))
        self.vxlan_port = int(vxlan_port)
        self.name = name or socket.gethostname()
        self.lease = 0
        # every key is under it (computed once: the agent parses every key of every pass)
        self._root = keys.cluster_prefix(self.namespace) if self.namespace else keys.cluster_prefix()
        self._checked_address = ""

    # ---- the store
    @property
    def store(self):
        with self._lock:
            if self._store is None:
                store = self._open()
                self._store = ClusterStore(store, self.url) if self.url else store
            return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    @property
    def address(self) -> str:
        """This host's VTEP address (checked to be local when first asked)."""
        if not self._address:
            self._address = default_route_address()
        if self._checked_address != self._address:
            self._checked_address = check_local_address(self._address)
        return self._checked_address

    # ---- keys
    @property
    def root(self) -> str:
        return self._root

    def key(self, *parts) -> str:
        return self.root + "/".join(keys.component(p) for p in parts)

    def prefix(self, *parts) -> str:
        return self.key(*parts) + "/" if parts else self.root

    def hosts_view(self) -> list[dict]:
        """Every host whose lease is alive (an expired host is gone from the
        store), its VTEP address, lease and the overlay networks it has
        endpoints on -- ``pynet host ls``'s rows (the CLI never reads the store)."""
        hosts, vteps = {}, {}
        for r in self.store.list(self.root):
            parts = self.parse(r.key)
            if len(parts) == 2 and parts[0] == "hosts":
                hosts[parts[1]] = dict(r.value or {}, lease=f"{r.lease:x}" if r.lease else "")
            elif len(parts) == 3 and parts[0] == "vteps":
                vteps.setdefault(parts[2], []).append(parts[1][:12])
        return [{"host": h, "name": v.get("name", ""), "address": v.get("address", ""), "lease": v["lease"],
                 "self": h == self.host, "networks": sorted(vteps.get(h, []))}
                for h, v in sorted(hosts.items())]

    def network_view(self, network_id: str) -> dict:
        """The cluster-wide network ``network_id`` as ``pynet network inspect`` shows it, from
        one read of the cluster keys: its record (VNI, port, subnets, MTU; None once freed),
        the hosts that instantiated it or have endpoints on it (VTEP address, lease alive,
        endpoint count), and its endpoints on other hosts than this one."""
        rec, alive, members, eps, vteps = None, {}, {}, [], set()
        for r in self.store.list(self.root):
            parts = self.parse(r.key)
            value = r.value or {}
            if len(parts) == 2 and parts == ["networks", network_id]:
                rec = value
            elif len(parts) == 2 and parts[0] == "hosts":
                alive[parts[1]] = value
            elif len(parts) == 3 and parts[1] == network_id:
                if parts[0] == "members":
                    members[parts[2]] = value.get("address", "")
                elif parts[0] == "endpoints":
                    eps.append(dict(value, id=parts[2]))
                elif parts[0] == "vteps":
                    vteps.add(parts[2])
        count: dict = {}
        for ep in eps:
            count[ep.get("host")] = count.get(ep.get("host"), 0) + 1
        hosts = []
        for h in sorted(set(members) | set(count) | vteps):
            live = alive.get(h)
            hosts.append({"host": h, "name": (live or {}).get("name", ""),
                          "address": (live or {}).get("address") or members.get(h, ""),
                          "alive": live is not None, "member": h in members, "self": h == self.host,
                          "endpoints": count.get(h, 0)})
        remote = sorted(({k: ep.get(k, "") for k in ("id", "host", "ip", "ip6", "mac")}
                         for ep in eps if ep.get("host") != self.host), key=lambda e: (e["host"], e["ip"] or ""))
        return {"network": network_id, "record": rec, "vni": (rec or {}).get("vni"), "hosts": hosts,
                "remote_endpoints": remote}

    def keys(self) -> list[str]:
        """Every key under this cluster's namespace: what a teardown must leave
        empty (the scenario runner's leftovers check; the front ends never read
        the store themselves)."""
        return [r.key for r in self.store.list(self.root)]

    def parse(self, key: str) -> list[str]:
        """A key under the root -> its components ([] for anything else)."""
        return key[len(self.root):].split("/") if key.startswith(self.root) else []

    # ---- membership
    def join(self) -> int:
        """Grant this host's lease and announce the host on it.  Returns the lease."""
        store = self.store
        lease = store.grant(self.lease_ttl)
        store.put(self.key("hosts", self.host), {"address": self.address, "name": self.name}, lease=lease)
        self.lease = lease
        log.info("host %s (%s) joined the cluster at %s, lease %x (TTL %ss)",
                 self.host, self.name, self.address, lease, self.lease_ttl)
        return lease

    def leave(self, revoke: bool = True) -> None:
        """``revoke``: the host's announcements go at once (else with the TTL)."""
        lease, self.lease = self.lease, 0
        if lease and revoke:
            try:
                self.store.revoke(lease)
            except (errors.LeaseNotFound, errors.StoreUnavailable) as e:
                log.info("lease %x: %s", lease, e)

    def hosts(self) -> dict:
        """host id -> its record, of the hosts alive now."""
        pre = self.prefix("hosts")
        return {r.key[len(pre):]: r.value for r in self.store.list(pre)}


def peers(cluster_root_view: dict, parse: Callable[[str], list], network_id: str, me: str) -> Peers:
    """The FDB and neighbour entries host ``me`` should hold for a network,
    from a view of the cluster keys ({key: value}): every remote endpoint of
    a live host (its MAC toward that host, its IPs answered locally), and a
    flood entry toward every live host with endpoints on the network.  A host
    whose lease expired is no longer in ``hosts/``: its entries drop out, and
    come back when it re-announces itself (its endpoints were never freed)."""
    alive, eps, vteps = {}, [], []
    for key, value in cluster_root_view.items():
        parts = parse(key)
        if len(parts) == 2 and parts[0] == "hosts":
            alive[parts[1]] = (value or {}).get("address")
        elif len(parts) == 3 and parts[1] == network_id:
            if parts[0] == "endpoints":
                eps.append(value or {})
            elif parts[0] == "vteps":
                vteps.append(parts[2])
    fdb, neigh = set(), set()
    for ep in eps:
        host = ep.get("host")
        if host == me or not alive.get(host) or not ep.get("mac"):
            continue
        fdb.add((ep["mac"], alive[host]))
        for ip in (ep.get("ip"), ep.get("ip6")):
            if ip:
                neigh.add((ip, ep["mac"]))
    for host in vteps:
        if host != me and alive.get(host):
            fdb.add((FLOOD_MAC, alive[host]))
    return Peers(fdb=fdb, neigh=neigh)
