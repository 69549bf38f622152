"""The Controller: every decision of pynet is taken here.

Its verbs are CNM's (request/release pool and address, create/delete network
and endpoint, join/leave, program/revoke external connectivity).  Front ends
(the Docker plugin, the CNI binaries, the CLI, the scenario runner) translate
their protocol into these calls and render the answer; they hold no logic.

Every verb validates first, then changes the kernel through the driver with
undo registered as it goes (``ExitStack``), and records the result in the
store last -- so a failure halfway leaves neither kernel objects nor records.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import logging
import os
import threading
import time
from typing import Iterable, Optional

from pynet import errors, validate
from pynet.cnm.driver import GLOBAL, Driver, PeerEvent
from pynet.cnm.model import Endpoint, IPData, JoinInfo, Network, PortMapping
from pynet.store.keys import cluster_prefix
from pynet.store.optimistic import run as run_txn

log = logging.getLogger("pynet.controller")

NETWORKS = "networks/"
REQUESTER_OPTION = "pynet.requester"
LOCAL_DEFAULT = "LocalDefault"
ENDPOINTS = "endpoints/"


def _net_key(nid: str) -> str:
    return NETWORKS + nid


def _ep_key(nid: str, eid: str) -> str:
    return f"{ENDPOINTS}{nid}/{eid}"


# Before IPAM holders existed, the automatic gateways Docker asked for were
# remembered here; still read (reconcile) and removed (release) for stores of
# that time.  A hold with ``{"gateway": true}`` does it now.
GATEWAYS = "gateways/"
GATEWAY_REQUEST = "com.docker.network.gateway"

DOCKER = "docker"
PORTS = "ports/"


def network_holder(network_id: str) -> str:
    """The IPAM holder of a network's pools, gateways and aux addresses."""
    return f"network/{network_id}"


def endpoint_holder(network_id: str, endpoint_id: str) -> str:
    """The IPAM holder of the addresses pynet requested for an endpoint (CNI)."""
    return f"endpoint/{network_id}/{endpoint_id}"


# An attachment pynet makes itself (the CNI path, cnm/attach.py) is recorded
# under ``attachments/<net>/<ep>`` in the SAME store transaction that
# allocates its addresses for ``endpoint_holder(net, ep)``, before anything
# is created in the kernel.  The endpoint record comes later (after the
# driver made the veth) and a SIGKILL runs no undo, so without this record an
# ADD killed in between leaves an allocation nothing names: DEL and GC walk
# endpoint records only.  The record names the pools and the process making
# the attachment, so DEL (which derives the endpoint ID from the container
# ID, interface and network) releases whatever the holder holds, and GC and
# restore() tell an ADD still in flight (its process alive) from an orphan.
# It lives as long as the attachment and goes in the commit that releases
# its addresses.  Per-attachment keys and one transaction, no global lock:
# an etcd store does the same in one Txn (and could bind the record to the
# process's lease instead of recording a pid).
ATTACHMENTS = "attachments/"


def _attachment_key(nid: str, eid: str) -> str:
    return f"{ATTACHMENTS}{nid}/{eid}"


# A global-scope network's cluster-wide resources (the driver's
# allocate_network), once per network: {"driver", "options", "ipv4", "ipv6",
# "allocated": {...}}.  Local drivers allocate nothing and leave no record.
ALLOCATIONS = "allocations/"

# Where another host's endpoints are announced (the overlay issue writes
# them): ``peers/<network id>/<host>/<endpoint id>``.  A store watch on this
# prefix feeds Controller.route_peer_event.
PEERS = "peers/"


# Endpoints whose addresses one commit of a forced delete_network releases (dual stack: two
# addresses, each two recorded reads, under etcd's --max-txn-ops of 128).
FORGET_BATCH = 24


def _allocation_key(nid: str) -> str:
    return ALLOCATIONS + nid


_identity: dict = {}


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start time (clock ticks after boot, /proc/<pid>/stat
    field 22): a pid reused by another process has another one."""
    stat = _read(f"/proc/{pid}/stat")
    # the command name (field 2) may contain spaces and parentheses
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def process_identity() -> dict:
    """Who is making an attachment: pid, start time, boot (cached per process)."""
    pid = os.getpid()
    if _identity.get("pid") != pid:
        _identity.clear()
        _identity.update(pid=pid, start=_start_time(pid),
                         boot=_read("/proc/sys/kernel/random/boot_id").strip())
    return dict(_identity)


def process_alive(ident) -> bool:
    """Whether the process ``process_identity()`` described still runs (same
    boot, same pid, same start time).  Unknown -> False: an attachment whose
    maker cannot be identified is not in flight."""
    if not isinstance(ident, dict) or not isinstance(ident.get("pid"), int):
        return False
    if ident.get("boot") != _read("/proc/sys/kernel/random/boot_id").strip():
        return False
    start = _start_time(ident["pid"])
    return bool(start) and start == ident.get("start")


def _gateway_key(pool_id: str, addr: str) -> str:
    # pool ids contain '/', which is fine inside a key; the trailing '/' keeps
    # one pool's prefix from matching another's.
    return f"{GATEWAYS}{pool_id}/" + addr


# at most this many distinct host ports are read one range each when publishing (else the
# protocol's whole range as one read): few compares in an etcd txn however many ports are held
NARROW_PORT_READS = 8


def _port_prefix(proto: str, port: int) -> str:
    return f"{PORTS}{proto}/{port}/"


def _port_key(proto: str, port: int, host_ip: str) -> str:
    """One host port reservation.  The host address comes last so that one
    listing of ``ports/<proto>/<port>/`` finds every binding a new one could
    clash with (a wildcard clashes with every address); ``*`` is "every
    host address"."""
    return _port_prefix(proto, port) + (host_ip or "*")


@functools.lru_cache(maxsize=16384)
def _pool_range(pool: str) -> tuple[int, int, int]:
    """(IP version, first, last address as ints) of a stored pool: parsed once per pool, so
    checking a new network's subnets against every other network's costs integer compares,
    not an ipaddress parse of each (it ran on every network create)."""
    n = ipaddress.ip_network(pool, strict=False)
    return n.version, int(n.network_address), int(n.broadcast_address)


def parse_cidr(value: str, what: str, strict: bool = False):
    """``10.1.0.0/24`` -> ip_network; raises InvalidSubnet with one readable line
    (zones and whitespace refused: ``pynet.validate``)."""
    return validate.ip_network(value, what, strict=strict)


def parse_interface(value: str, what: str):
    """``10.1.0.5/24`` -> ip_interface; raises InvalidAddress."""
    return validate.ip_interface(value, what)


class Controller:
    def __init__(self, store, ipam, drivers: dict[str, Driver], firewall=None,
                 port_allocator=None, cluster_store=None):
        """``store``: this host's records (networks, endpoints, ...);
        ``cluster_store``: the records every host shares (``allocations/``,
        ``peers/``).  Default: the cluster namespace of the same backend
        (``pynet/v2/cluster/`` beside ``pynet/v2/local/<host>/``), or the
        store itself when it is not namespaced (unit tests)."""
        self.store = store
        if cluster_store is None:
            sibling = getattr(store, "sibling", None)
            cluster_store = sibling(cluster_prefix()) if sibling is not None else store
        self.cluster_store = cluster_store
        self.ipam = ipam
        self.drivers = drivers
        self.firewall = firewall
        self.port_allocator = port_allocator
        # drivers contribute their own firewall rules: the firewall asks them
        use = getattr(firewall, "use_drivers", None) if firewall is not None else None
        if callable(use):
            use(drivers)
        # One writer at a time inside this process; the store's transactions
        # serialise writers across processes (CNI binaries beside the daemon).
        self._lock = threading.RLock()

    # Store v2: every change is a function of a txn (``pynet.store``), run by
    # ``txn()`` -- optimistic, retried on conflict, so the function has no
    # side effects (kernel work happens before or after it, never inside).
    # Verbs that other verbs compose take ``txn=`` and run in the caller's
    # transaction (nothing nests: one commit for all); so do the IPAM's.
    def txn(self, fn, txn=None, store=None):
        """``fn(t)`` in ``txn`` (passed down) or in one store commit of its
        own, all or nothing (pynet-ipam's allocation and its attachment
        record).  The controller's lock comes first, as in every verb, so two
        threads never wait on each other in opposite orders.  ``store``: the
        cluster store (global records) instead of this host's."""
        if txn is not None:
            return fn(txn)
        with self._lock:
            return run_txn(self.store if store is None else store, fn, retries=self._retries())

    def _retries(self) -> int:
        return getattr(self.ipam, "retries", None) or 200

    def put_record(self, key: str, value, txn=None) -> None:
        self.txn(lambda t: t.put(key, value), txn)

    def delete_record(self, key: str, txn=None) -> None:  # this host's
        self.txn(lambda t: t.delete(key), txn)

    # ------------------------------------------------------------------ IPAM
    def address_spaces(self) -> dict:
        return self.ipam.address_spaces()

    # Every IPAM verb names its holder (ipam/allocator.py): "docker" for
    # dockerd's IpamDriver calls, endpoint_holder() for an attachment's
    # addresses, network_holder() for what a network keeps; "" is the
    # anonymous caller (CLI, scenarios), whose releases are unconditional.
    def request_pool(self, address_space: str, pool: str = "", sub_pool: str = "",
                     options: Optional[dict] = None, v6: bool = False, requester: str = "",
                     txn=None):
        """``requester`` (e.g. "docker") holds the pool; it is also kept in
        the options (stores of before holders identified Docker's pools so)."""
        options = dict(options or {})
        if requester:
            options[REQUESTER_OPTION] = requester
        with self._lock:
            return self.ipam.request_pool(address_space, pool, sub_pool, options, v6, holder=requester,
                                          txn=txn)

    def release_pool(self, pool_id: str, holder: str = "", txn=None) -> None:
        """``holder`` lets go of the pool; it stays reserved while another
        holder (a CNI pod's address, a network dockerd could not delete)
        keeps it, and goes with the last of them."""
        def fn(t):
            if self.ipam.release_pool(pool_id, holder, txn=t):
                t.delete_prefix(_gateway_key(pool_id, ""))
        self.txn(fn, txn)

    def request_address(self, pool_id: str, address: str = "", options: Optional[dict] = None,
                        holder: str = "", txn=None) -> str:
        # Docker does not show an automatic gateway in `network inspect`: the
        # hold records it as a gateway so reconcile_runtime() knows it is held.
        with self._lock:
            for drv in self.drivers.values() if holder == DOCKER else ():  # dockerd's: cluster-wide (overlay)
                address = getattr(drv, "pool_address", lambda *a: "")(self, pool_id, address, options) or address
            return self.ipam.request_address(pool_id, address, options or {}, holder=holder, txn=txn)

    def release_address(self, pool_id: str, address: str, holder: str = "", txn=None) -> None:
        def fn(t):  # one commit for both
            self.ipam.release_address(pool_id, address, holder, txn=t)
            t.delete(_gateway_key(pool_id, address.split("/")[0]))
        self.txn(fn, txn)
        for drv in self.drivers.values() if holder == DOCKER else ():  # and its cluster-wide record
            getattr(drv, "release_pool_address", lambda *a: None)(self, pool_id, address)

    def records_left(self) -> list[str]:
        """What the store still records of networks, endpoints, attachments,
        host ports and address pools (one line each): a scenario's teardown
        expects none."""
        out = [r.key for p in (NETWORKS, ENDPOINTS, ATTACHMENTS, GATEWAYS, PORTS)
               for r in self.store.list(p)]
        if self.ipam is not None:
            out += [f"ipam pool {p['id']}" for p in self.ipam.list_pools()]
        return out

    def close(self) -> None:
        """Let go of the store (its connection in this thread)."""
        self.store.close()

    # ------------------------------------------------------------- lookups
    def driver_for(self, net: Network) -> Driver:
        try:
            return self.drivers[net.driver]
        except KeyError:
            raise errors.InvalidOption(
                f"unknown driver {net.driver!r} (known: {', '.join(sorted(self.drivers))})") from None

    def driver(self, name: str) -> Driver:
        """The registered driver ``name``: what the front ends ask for a
        driver's behaviour (its conflist keys, example, scope...)."""
        try:
            return self.drivers[name]
        except KeyError:
            raise errors.InvalidOption(
                f"unknown driver {name!r} (known: {', '.join(sorted(self.drivers))})") from None

    def name_network(self, network_id: str, name: str) -> None:
        """Record the name a runtime knows a network by (dockerd never tells
        a plugin the name; the CNI path learns it and keeps it)."""
        def fn(t):
            rec = t.get(_net_key(network_id))
            if rec is not None:
                t.put(_net_key(network_id), dict(rec.value, name=name))
        self.txn(fn)

    def networks(self, txn=None) -> list[Network]:
        return [Network.from_json(r.value) for r in (txn or self.store).list(NETWORKS)]

    def network_by_id(self, network_id: str, txn=None) -> Optional[Network]:
        """The network stored under exactly this id (one key read), or None."""
        rec = (txn or self.store).get(_net_key(network_id))
        return Network.from_json(rec.value) if rec is not None else None

    def network(self, id_or_name: str) -> Network:
        rec = self.store.get(_net_key(id_or_name))
        if rec is not None:
            return Network.from_json(rec.value)
        matches = [n for n in self.networks()
                   if n.name == id_or_name or n.id.startswith(id_or_name)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise errors.InvalidParameter(f"network {id_or_name!r} is ambiguous")
        raise errors.NetworkNotFound(f"network {id_or_name} not found")

    def endpoints(self, network_id: Optional[str] = None, txn=None) -> list[Endpoint]:
        prefix = f"{ENDPOINTS}{network_id}/" if network_id else ENDPOINTS
        return [Endpoint.from_json(r.value) for r in (txn or self.store).list(prefix)]

    def endpoint(self, network_id: str, endpoint_id: str) -> Endpoint:
        rec = self.store.get(_ep_key(network_id, endpoint_id))
        if rec is None:
            raise errors.EndpointNotFound(f"endpoint {endpoint_id} not found in network {network_id}")
        return Endpoint.from_json(rec.value)

    def find_endpoint(self, id_prefix: str) -> Endpoint:
        matches = [e for e in self.endpoints() if e.id.startswith(id_prefix)
                   or (e.container_id and e.container_id.startswith(id_prefix))]
        if len(matches) != 1:
            raise (errors.EndpointNotFound if not matches else errors.InvalidParameter)(
                f"endpoint {id_prefix!r} {'not found' if not matches else 'is ambiguous'}")
        return matches[0]

    def _save_network(self, net: Network, txn=None) -> None:
        self.put_record(_net_key(net.id), net.to_json(), txn)

    def _save_endpoint(self, ep: Endpoint, txn=None) -> None:
        self.put_record(_ep_key(ep.network_id, ep.id), ep.to_json(), txn)

    # ------------------------------------------------------------- networks
    def create_network(self, network_id: str, ipv4: Iterable[IPData] = (), ipv6: Iterable[IPData] = (),
                       *, driver: str = "bridge", name: str = "", enable_ipv6: bool = False,
                       internal: bool = False, options: Optional[dict] = None,
                       labels: Optional[dict] = None, created_by: str = "docker") -> Network:
        net = Network(id=network_id, driver=driver, name=name, ipv4=list(ipv4), ipv6=list(ipv6),
                      enable_ipv6=enable_ipv6 or bool(list(ipv6)), internal=internal,
                      options=dict(options or {}), labels=dict(labels or {}), created_by=created_by,
                      created_at=time.time())
        with self._lock:
            if not network_id:
                raise errors.InvalidParameter("network ID is empty")
            existing = self.store.get(_net_key(network_id))
            if existing is not None:
                raise errors.NetworkExists(f"network {network_id} already exists")
            drv = self.driver_for(net)
            others = self.networks()
            self._validate_subnets(net, others)
            # validated before any cluster-wide allocation: a refusal changes nothing anywhere
            drv.validate_network(net, others)
            with contextlib.ExitStack() as undo:
                if getattr(drv, "scope", "local") == GLOBAL:
                    # Docker passes AllocateNetwork's options back in CreateNetwork;
                    # a network made without it (CNI, no swarm) is allocated here
                    alloc = self.allocate_network(net.id, driver=net.driver, options=net.options,
                                                  ipv4=net.ipv4, ipv6=net.ipv6, name=net.name,
                                                  by_create=True)
                    net.options = {**alloc, **net.options}
                    undo.callback(self._drop_allocation, drv, net)
                state = drv.create_network(net)
                if state is not None:  # what the driver remembers about the network
                    net.driver_state = state
                undo.callback(drv.delete_network, net)
                def record(t):  # the record and its holds: one commit
                    try:
                        t.create(_net_key(net.id), net.to_json())
                    except errors.KeyExists:  # another process made it meanwhile
                        raise errors.NetworkExists(f"network {network_id} already exists") from None
                    self._hold_network_addresses(net, t)
                self.txn(record)
                undo.callback(self._forget_network, net, [])
                self._sync_firewall({net.id})
                undo.pop_all()
            log.info("created network %s (%s)", net.id[:12], net.driver)
            return net

    # A network holds its pools, gateways and aux addresses in pynet's IPAM
    # (when the IPAM is pynet's), beside whoever requested them: the bridge
    # carries the gateway for as long as the network lives, whatever dockerd
    # releases meanwhile.
    def _network_pools(self, net: Network, txn=None) -> list[tuple[IPData, str]]:
        if self.ipam is None:
            return []
        out = []
        for d in net.ipv4 + net.ipv6:
            pid = d.pool_id
            if not pid:
                found = self.ipam.find_pool(d.address_space or LOCAL_DEFAULT, d.pool, txn=txn)
                # only the pool Docker requested for it (its IPAM was pynet's)
                if found and self._requested_by(found, net.created_by, txn):
                    pid = found
            if pid:
                out.append((d, pid))
        return out

    def _requested_by(self, pool_id: str, requester: str, txn=None) -> bool:
        try:
            p = self.ipam.get_pool(pool_id, txn=txn)
        except errors.NotFound:
            return False
        return (p.get("options") or {}).get(REQUESTER_OPTION) == requester

    def _hold_network_addresses(self, net: Network, t) -> None:
        holder = network_holder(net.id)
        for d, pid in self._network_pools(net, t):
            try:
                self.ipam.hold_pool(pid, holder, txn=t)
            except errors.NotFound:
                continue  # a record naming a pool already gone must not stop a start
            for a in [d.gateway, *(d.aux_addresses or {}).values()]:
                if a:
                    self.ipam.hold_address(pid, a.split("/")[0], holder, txn=t)

    def _release_endpoint_addresses(self, net: Network, eps: list[Endpoint], t) -> None:
        for d, pid in self._network_pools(net, t):
            subnet = ipaddress.ip_network(d.pool, strict=False)
            for ep in eps:
                for ip in (ep.ip, ep.ip6):
                    if ip and ipaddress.ip_address(ip) in subnet:
                        self.ipam.release_address(pid, ip, endpoint_holder(net.id, ep.id), txn=t)

    def _release_network_holds(self, net: Network, eps: list[Endpoint], t) -> None:
        """The network and the endpoints torn down with it let go of what they
        hold; a pool nobody else holds goes with them."""
        holder = network_holder(net.id)
        self._release_endpoint_addresses(net, eps, t)
        for d, pid in self._network_pools(net, t):
            # and what attachments without an endpoint record hold (killed ADDs)
            self.ipam.release_holder(pid, endpoint_holder(net.id, ""), prefix=True, txn=t)
            for a in [d.gateway, *(d.aux_addresses or {}).values()]:
                if a:
                    self.ipam.release_address(pid, a.split("/")[0], holder, txn=t)
            try:
                held = holder in self.ipam.holders(pid, txn=t)["pool"]
            except errors.NotFound:
                continue
            # a pool the network never held (a store of before holders) goes
            # with a CNI-made network, and stays for Docker to release
            if held or net.created_by != DOCKER:
                self.ipam.release_pool(pid, holder, txn=t)

    def _forget_network(self, net: Network, eps: list[Endpoint]) -> None:
        # One commit for the record and what it holds -- but a network whose hundreds of
        # endpoints go with it (a forced delete) would make it larger than one etcd Txn
        # (--max-txn-ops: two recorded reads per address).  Their addresses, and those of
        # killed attachments, go first in bounded commits (a kill between them leaves the
        # network's record, whose next delete finishes); the last commit holds the rest.
        eps = list(eps)
        while len(eps) > FORGET_BATCH:
            batch, eps = eps[:FORGET_BATCH], eps[FORGET_BATCH:]
            self.txn(lambda t, b=batch: self._release_endpoint_addresses(net, b, t))
        if self.ipam is not None:
            for _d, pid in self._network_pools(net):
                self.ipam.release_holder(pid, endpoint_holder(net.id, ""), prefix=True)

        def fn(t):
            t.delete(_net_key(net.id))
            t.delete_prefix(_attachment_key(net.id, ""))
            self._release_network_holds(net, eps, t)
        self.txn(fn)

    def _validate_subnets(self, net: Network, others: list[Network]) -> None:
        mine = []
        for fam, datas in ((4, net.ipv4), (6, net.ipv6)):
            for d in datas:
                subnet = parse_cidr(d.pool, "subnet")
                if subnet.version != fam:
                    raise errors.InvalidSubnet(f"subnet {d.pool} is not IPv{fam}")
                if d.gateway:
                    gw = parse_interface(d.gateway, "gateway")
                    if gw.ip not in subnet:
                        raise errors.InvalidAddress(f"gateway {gw.ip} is outside subnet {subnet}")
                for aux_name, aux in (d.aux_addresses or {}).items():
                    a = parse_interface(aux, f"aux address {aux_name}") if "/" in aux else None
                    ip = a.ip if a else self._bare_ip(aux, f"aux address {aux_name}")
                    if ip not in subnet:
                        raise errors.InvalidAddress(f"aux address {aux_name}={ip} is outside subnet {subnet}")
                mine.append(subnet)
        ranges = [(s, s.version, int(s.network_address), int(s.broadcast_address)) for s in mine]
        for other in others:
            for d in other.ipv4 + other.ipv6:
                ver, lo, hi = _pool_range(d.pool)
                for s, sver, slo, shi in ranges:
                    if sver == ver and slo <= hi and lo <= shi:
                        raise errors.PoolOverlap(
                            f"subnet {s} overlaps subnet {ipaddress.ip_network(d.pool, strict=False)} "
                            f"of network {other.name or other.id[:12]}")

    @staticmethod
    def _bare_ip(value: str, what: str):
        return validate.ip_address(value, what)

    def delete_network(self, network_id: str, force_endpoints: bool = False,
                       requester: str = "") -> None:
        """``requester``: the runtime asking (dockerd's DeleteNetwork).  When
        the network is its own but CNI pods are still attached, it is refused
        (dockerd forgets it anyway and releases its pool, which the network
        keeps held) and marked: it is removed when the last attachment leaves."""
        with self._lock:
            rec = self.store.get(_net_key(network_id))
            if rec is None:
                return  # Docker: deleting something unknown succeeds
            net = Network.from_json(rec.value)
            eps = self.endpoints(net.id)
            if eps and not force_endpoints:
                later = ""
                if requester and net.created_by == requester and any(e.container_id for e in eps):
                    if not net.delete_pending:
                        self._mark_delete_pending(net)
                    later = "; pynet removes it when the last CNI attachment leaves"
                raise errors.InUse(
                    f"network {net.name or net.id[:12]} has active endpoints "
                    f"({', '.join(e.id[:12] for e in eps)}){later}")
            drv = self.driver_for(net)
            try:
                for ep in eps:
                    self._teardown_endpoint(net, ep, drv)
                drv.delete_network(net)
                if getattr(drv, "scope", "local") == GLOBAL:
                    self._forget_own_allocation(net.id)
            finally:
                # Docker forgets the network even when DeleteNetwork fails; a
                # record kept here would block its subnet forever.  Kernel
                # leftovers carry our alias, so restore() removes them.
                self._forget_network(net, eps)
                self._sync_firewall({net.id, *(e.id for e in eps)})
            log.info("deleted network %s", net.id[:12])

    def _mark_delete_pending(self, net: Network) -> None:
        net.delete_pending = True
        self._update_network(net.id, delete_pending=True, default=net)
        log.info("network %s: its runtime deleted it while CNI attachments remain; "
                 "it goes with the last of them", net.id[:12])

    # ------------------------------------------------------------ endpoints
    def create_endpoint(self, network_id: str, endpoint_id: str, address: str = "",
                        address_v6: str = "", mac: str = "", options: Optional[dict] = None,
                        ports: Iterable[PortMapping] = (), exposed: Iterable[dict] = (),
                        container_id: str = "", ifname: str = "") -> Endpoint:
        with self._lock:
            net = self.network(network_id)
            if not endpoint_id:
                raise errors.InvalidParameter("endpoint ID is empty")
            if self.store.get(_ep_key(net.id, endpoint_id)) is not None:
                raise errors.EndpointExists(f"endpoint {endpoint_id} already exists")
            ep = Endpoint(id=endpoint_id, network_id=net.id, address=address,
                          address_v6=address_v6, mac=self._normalise_mac(mac),
                          options=dict(options or {}), ports=list(ports), exposed=list(exposed),
                          container_id=container_id, ifname=ifname)
            self._validate_endpoint_address(net, ep)
            drv = self.driver_for(net)
            key = _ep_key(ep.network_id, ep.id)
            with contextlib.ExitStack() as undo:
                # the record first, naming the links the driver will make (a
                # SIGKILL while they are made leaves a record that finds them)
                plan = getattr(drv, "plan_endpoint", None)  # optional: DriverBase has it
                _apply(ep, plan(net, ep) if plan is not None else None)

                def record(t):
                    try:
                        t.create(key, ep.to_json())
                    except errors.KeyExists:  # another process made it meanwhile
                        raise errors.EndpointExists(f"endpoint {endpoint_id} already exists") from None
                self.txn(record)
                undo.callback(self.delete_record, key)
                stored = ep.to_json()
                # a driver returns what to remember; one that changes ``ep``
                # in place (of before the driver API v2) is stored alike
                _apply(ep, drv.create_endpoint(net, ep))
                undo.callback(drv.delete_endpoint, net, ep)
                if ep.to_json() != stored:
                    self._save_endpoint(ep)
                # per-endpoint rules (anti-spoofing) exist before any traffic
                self._sync_firewall_for(net, ep)
                undo.pop_all()
            return ep

    @staticmethod
    def _normalise_mac(mac: str) -> str:
        if not mac:
            return ""
        parts = mac.replace("-", ":").split(":")
        if len(parts) != 6 or not all(len(p) in (1, 2) for p in parts):
            raise errors.InvalidAddress(f"invalid MAC address {mac!r}")
        try:
            return ":".join(f"{int(p, 16):02x}" for p in parts)
        except ValueError:
            raise errors.InvalidAddress(f"invalid MAC address {mac!r}") from None

    def _validate_endpoint_address(self, net: Network, ep: Endpoint) -> None:
        for addr, datas, fam in ((ep.address, net.ipv4, 4), (ep.address_v6, net.ipv6, 6)):
            if not addr:
                continue
            iface = parse_interface(addr, f"IPv{fam} address")
            if iface.version != fam:
                raise errors.InvalidAddress(f"address {addr} is not IPv{fam}")
            if datas and not any(iface.ip in ipaddress.ip_network(d.pool, strict=False) for d in datas):
                raise errors.InvalidAddress(
                    f"address {iface.ip} is outside the network's subnets "
                    f"({', '.join(d.pool for d in datas)})")

    def endpoint_oper_info(self, network_id: str, endpoint_id: str) -> dict:
        net = self.network(network_id)
        ep = self.endpoint(net.id, endpoint_id)
        return self.driver_for(net).oper_info(net, ep)

    def delete_endpoint(self, network_id: str, endpoint_id: str) -> None:
        with self._lock:
            rec = self.store.get(_ep_key(network_id, endpoint_id))
            if rec is None:
                return
            ep = Endpoint.from_json(rec.value)
            net = self.network(network_id)
            had_rules = self._firewall_affects(net, ep)
            self._teardown_endpoint(net, ep, self.driver_for(net))
            if had_rules:
                self._sync_firewall({ep.id})
            if net.delete_pending and not self.endpoints(net.id):
                self.delete_network(net.id)  # the last attachment of a network its runtime deleted

    def _teardown_endpoint(self, net: Network, ep: Endpoint, drv: Driver) -> None:
        # Each step tolerates what is already gone, so a teardown that was
        # interrupted can simply run again.
        held_ports = list(ep.ports) if ep.external else []
        if ep.external:
            ep.external = False
            ep.ports = []
        if ep.sandbox_key:
            drv.leave(net, ep)
        drv.delete_endpoint(net, ep)
        def fn(t):  # the record and its host ports: one commit
            self._unreserve_ports(t, ep, held_ports)
            t.delete(_ep_key(net.id, ep.id))
        self.txn(fn)

    # ------------------------------------------------------------ join/leave
    def join(self, network_id: str, endpoint_id: str, sandbox_key: str,
             options: Optional[dict] = None) -> JoinInfo:
        with self._lock:
            net = self.network(network_id)
            ep = self.endpoint(net.id, endpoint_id)
            drv = self.driver_for(net)
            info = drv.join(net, ep, sandbox_key)
            _apply(ep, getattr(info, "remember", None))
            ep.sandbox_key = sandbox_key or ep.sandbox_key or "-"
            try:
                self._save_endpoint(ep)
            except BaseException:
                drv.leave(net, ep)
                raise
            return info

    def leave(self, network_id: str, endpoint_id: str) -> None:
        with self._lock:
            try:
                net = self.network(network_id)
                ep = self.endpoint(net.id, endpoint_id)
            except errors.NotFound:
                return
            self.driver_for(net).leave(net, ep)
            ep.sandbox_key = ""
            self._save_endpoint(ep)

    # ------------------------------------------------- external connectivity
    def program_external_connectivity(self, network_id: str, endpoint_id: str,
                                      ports: Iterable[PortMapping] = (),
                                      exposed: Iterable[dict] = ()) -> Endpoint:
        with self._lock:
            net = self.network(network_id)
            ep = self.endpoint(net.id, endpoint_id)
            requested = list(ports)
            had_rules = self._firewall_affects(net, ep)
            before = Endpoint.from_json(self.store.get(_ep_key(net.id, ep.id)).value)
            ep.exposed = list(exposed) or ep.exposed
            ep.external = True
            # Host ports are chosen and reserved in the transaction that
            # stores the endpoint: two processes (the daemon, a CNI binary)
            # can never both store one host port, and no file lock is needed.
            def reserve(t):
                self._unreserve_ports(t, before, before.ports if before.external else [])
                ep.ports = self._reserve_host_ports(t, ep, requested)
                t.put(_ep_key(ep.network_id, ep.id), ep.to_json())
            self.txn(reserve)
            drv = self.driver_for(net)
            try:
                stored = ep.to_json()
                _apply(ep, drv.program_external_connectivity(net, ep))
                if ep.to_json() != stored:  # the driver remembered something
                    self._save_endpoint(ep)
                if had_rules or self._firewall_affects(net, ep):
                    self._sync_firewall({ep.id})
            except BaseException:
                def undo(t):
                    self._unreserve_ports(t, ep, ep.ports)
                    if before.external:
                        self._reserve_exact(t, before)
                    t.put(_ep_key(net.id, ep.id), before.to_json())
                self.txn(undo)
                drv.revoke_external_connectivity(net, ep)
                self._sync_firewall({ep.id})
                raise
            return ep

    def _reserve_host_ports(self, t, ep: Endpoint, requested: list[PortMapping]) -> list[PortMapping]:
        """Choose host ports as Docker's bridge driver does: an explicit port
        as given, 0 = first free from the ephemeral range, a range = first free
        in it; a port another endpoint holds is refused.  Each choice is
        reserved (``ports/<proto>/<port>/<host address>``) in the caller's
        transaction, which read the protocol's reservations as one range
        (``_port_records``): a reservation made meanwhile makes the commit
        conflict, and the retry sees it."""
        # Only programmed endpoints hold host ports: Docker sends a container's
        # port map to CreateEndpoint of every network it joins, but programs
        # it on one of them.
        owner = f"{ep.network_id}/{ep.id}"
        held_by_proto: dict = {}
        chosen: list[PortMapping] = []
        # a protocol whose mappings all name one host port (the usual -p 8080:80) reads only
        # those ports' reservations, so publishing costs what it asks for, not every port the
        # host holds; a few (one range compare each, inside etcd's --max-txn-ops), else the
        # protocol's whole range as one
        narrow = set()
        if self.port_allocator is None:
            for proto in {pm.proto for pm in requested}:
                mine = [pm for pm in requested if pm.proto == proto]
                if all(pm.host_port and pm.host_port_end in (0, pm.host_port) for pm in mine) \
                        and len({pm.host_port for pm in mine}) <= NARROW_PORT_READS:
                    narrow.add(proto)
        for pm in requested:
            if pm.proto not in ("tcp", "udp", "sctp"):
                raise errors.InvalidParameter(f"unsupported protocol {pm.proto!r}")
            if pm.host_ip:
                self._bare_ip(pm.host_ip, "host address")
            slot = (pm.proto, pm.host_port) if pm.proto in narrow else pm.proto
            held = held_by_proto.get(slot)
            if held is None:
                held = held_by_proto[slot] = self._reserved_ports(
                    t, pm.proto, owner, port=pm.host_port if pm.proto in narrow else None)
            taken = {hp for hip, hp in held if not hip or not pm.host_ip or hip == pm.host_ip}
            port = self._pick_port(pm, taken)
            if any(hp == port and (not hip or not pm.host_ip or hip == pm.host_ip) for hip, hp in held):
                # a port allocator that ignored ``taken``
                raise errors.PortInUse(f"host port {port}/{pm.proto} is already allocated")
            t.put(_port_key(pm.proto, port, _esc(pm.host_ip)), {"endpoint": owner})
            held.add((pm.host_ip, port))
            chosen.append(PortMapping(proto=pm.proto, container_port=pm.container_port,
                                      host_port=port, host_ip=pm.host_ip))
        return chosen

    def _pick_port(self, pm: PortMapping, taken: set[int]) -> int:
        if self.port_allocator is not None:
            return self.port_allocator(pm, taken)
        lo, hi = pm.host_port, pm.host_port_end or pm.host_port
        if lo == 0:
            lo, hi = ephemeral_port_range()
        if not (0 < lo <= hi <= 65535):
            raise errors.InvalidParameter(f"invalid host port range {pm.host_port}-{pm.host_port_end}")
        for port in range(lo, hi + 1):
            if port not in taken:
                return port
        if pm.host_port and pm.host_port == (pm.host_port_end or pm.host_port):
            raise errors.PortInUse(f"host port {pm.host_port}/{pm.proto} is already allocated")
        raise errors.PortInUse(f"no free host port in {lo}-{hi}/{pm.proto}")

    @staticmethod
    def _port_records(t, proto: str, port: Optional[int] = None) -> dict:
        """The protocol's host port reservations, key -> value, read as ONE
        recorded range (``keys=False``): a reservation made or changed meanwhile
        fails the commit, one released meanwhile only made the answer
        conservative -- one compare however many ports are held, within etcd's
        --max-txn-ops.  ``port``: that host port's reservations only (its own range)."""
        prefix = f"{PORTS}{proto}/" if port is None else _port_prefix(proto, port)
        try:
            recs = t.list(prefix, keys=False)
        except TypeError:  # a txn of another kind (a test's): every key recorded
            recs = t.list(prefix)
        return {r.key: r.value or {} for r in recs}

    @classmethod
    def _reserved_ports(cls, t, proto: str, owner: str, port: Optional[int] = None) -> set:
        out = set()
        prefix = f"{PORTS}{proto}/"
        for key, value in cls._port_records(t, proto, port).items():
            if value.get("endpoint") == owner:
                continue
            port, hip = key[len(prefix):].split("/", 1)
            out.add(("" if hip == "*" else _unesc(hip), int(port)))
        return out

    @classmethod
    def _unreserve_ports(cls, t, ep: Endpoint, ports: Iterable[PortMapping]) -> None:
        owner = f"{ep.network_id}/{ep.id}"
        records = cls._records_of(t, list(ports))
        for pm in ports:
            key = _port_key(pm.proto, pm.host_port, _esc(pm.host_ip))
            if records(pm).get(key, {}).get("endpoint") == owner:
                t.delete(key)

    @classmethod
    def _records_of(cls, t, ports: list[PortMapping]):
        """pm -> the reservations that can hold ``pm``'s key: its own port's range when the
        endpoint has a few ports of that protocol (NARROW_PORT_READS), else the protocol's."""
        counts: dict[str, set] = {}
        for pm in ports:
            counts.setdefault(pm.proto, set()).add(pm.host_port)
        have: dict = {}

        def records(pm: PortMapping) -> dict:
            port = pm.host_port if len(counts[pm.proto]) <= NARROW_PORT_READS else None
            if (pm.proto, port) not in have:
                have[(pm.proto, port)] = cls._port_records(t, pm.proto, port)
            return have[(pm.proto, port)]
        return records

    @classmethod
    def _reserve_exact(cls, t, ep: Endpoint) -> None:
        owner = f"{ep.network_id}/{ep.id}"
        records = cls._records_of(t, list(ep.ports))
        for pm in ep.ports:
            key = _port_key(pm.proto, pm.host_port, _esc(pm.host_ip))
            if key not in records(pm):
                t.put(key, {"endpoint": owner})

    def revoke_external_connectivity(self, network_id: str, endpoint_id: str) -> None:
        with self._lock:
            try:
                net = self.network(network_id)
                ep = self.endpoint(net.id, endpoint_id)
            except errors.NotFound:
                return
            had_rules = self._firewall_affects(net, ep)
            held_ports = list(ep.ports) if ep.external else []
            ep.ports = []
            ep.external = False
            self.driver_for(net).revoke_external_connectivity(net, ep)
            def fn(t):
                self._unreserve_ports(t, ep, held_ports)
                t.put(_ep_key(net.id, ep.id), ep.to_json())
            self.txn(fn)
            if had_rules:
                self._sync_firewall({ep.id})

    # ------------------------------------------------ attachments (CNI path)
    def attachments(self, network_id: Optional[str] = None) -> list[dict]:
        """The attachment records (see ATTACHMENTS), with ``network_id`` and
        ``endpoint_id`` added."""
        prefix = _attachment_key(network_id, "") if network_id else ATTACHMENTS
        out = []
        for r in self.store.list(prefix):
            nid, _, eid = r.key[len(ATTACHMENTS):].partition("/")
            out.append(dict(r.value or {}, network_id=nid, endpoint_id=eid))
        return out

    def begin_attachment(self, network_id: str, endpoint_id: str, requests: list,
                         container_id: str = "", ifname: str = "") -> dict:
        """An attachment's addresses and its record, in one commit (nothing
        else of it exists yet).  ``requests``: [(family, pool id, address or
        "")].  Returns {family: "addr/len"}.  What an earlier attempt of the
        same attachment, killed and never DEL'd, still holds is released in
        the same commit: the runtime retries the ADD instead."""
        holder = endpoint_holder(network_id, endpoint_id)
        key = _attachment_key(network_id, endpoint_id)
        def fn(t):
            if t.get(_ep_key(network_id, endpoint_id)) is not None:
                raise errors.EndpointExists(f"endpoint {endpoint_id} already exists")
            stale = t.get(key)
            if stale is not None:
                for pid in dict.fromkeys((stale.value or {}).get("pools", {}).values()):
                    self.ipam.release_holder(pid, holder, txn=t)
            got = {}
            for fam, pid, want in requests:
                got[fam] = self.request_address(pid, want, holder=holder, txn=t)
            t.put(key, {"container_id": container_id, "ifname": ifname,
                        "pools": {str(fam): pid for fam, pid, _ in requests},
                        "process": process_identity()})
            return got
        return self.txn(fn)

    def release_attachment(self, network_id: str, endpoint_id: str, pools: Iterable[str] = (),
                           addresses: Iterable[tuple[str, str]] = (),
                           only_if=None) -> Optional[list[str]]:
        """One commit: the ``addresses`` ([(pool id, addr)], an endpoint
        record's: they name all the attachment holds, and allocations of
        before holders carry no hold record) -- or, without them, everything
        ``endpoint_holder(network, endpoint)`` holds in ``pools`` and in the
        pools its record names (a pool-wide scan: only when no endpoint
        record says which) -- and the attachment record.  ``only_if``: the record's value
        as read by a caller that judged it an orphan -- nothing is released
        when it changed meanwhile (the runtime retried the ADD), and None is
        returned.  Returns the freed addresses."""
        holder = endpoint_holder(network_id, endpoint_id)
        key = _attachment_key(network_id, endpoint_id)
        addresses, pools = list(addresses), list(pools)

        def fn(t):
            freed: list[str] = []
            rec = t.get(key)
            if only_if is not None and (rec is None or rec.value != only_if
                                        or t.get(_ep_key(network_id, endpoint_id)) is not None):
                return None
            named = list((rec.value or {}).get("pools", {}).values()) if rec is not None else []
            for pid, addr in addresses:
                self.release_address(pid, addr, holder, txn=t)
            if not addresses:
                for pid in dict.fromkeys([*pools, *named]):
                    freed += self.ipam.release_holder(pid, holder, txn=t)
            if rec is not None:
                t.delete(key)
            return freed
        return self.txn(fn)

    def forget_attachment(self, net: Network, endpoint_id: str, only_if=None) -> dict:
        """Remove what an attach of ``endpoint_id`` left when no endpoint
        record exists (an ADD killed before or while the driver created the
        endpoint): its addresses and record, then the links tagged for it.
        Addresses first: a kill in between leaves only a tagged link, which a
        DEL again, GC and restore() remove.  Returns what was removed."""
        with self._lock:
            if self.store.get(_ep_key(net.id, endpoint_id)) is not None:
                return {"addresses": [], "links": []}  # a real endpoint: detach's work
            pools = [pid for _, pid in self._network_pools(net)]
            had = self.store.get(_attachment_key(net.id, endpoint_id)) is not None
            freed = self.release_attachment(net.id, endpoint_id, pools, only_if=only_if)
            if freed is None:
                return {"addresses": [], "links": []}  # changed meanwhile: in flight again
            forget = getattr(self.driver_for(net), "forget_endpoint", None)
            links = forget(net, endpoint_id) if forget is not None else []
            return {"addresses": freed, "links": links, "record": had}

    def forget_orphan_attachments(self, network_id: Optional[str] = None) -> tuple[dict, set]:
        """restore() and CNI GC: attachments without an endpoint record whose
        process is gone (an ADD killed for good, never DEL'd), and endpoint
        holds that no record explains at all (a DEL killed after deleting
        the endpoint record), of one network or all.  Returns (what was
        removed, endpoint IDs of ADDs still in flight -- their links and
        addresses are not leaks)."""
        done = {"attachments": [], "addresses": [], "links": []}
        in_flight: set[str] = set()
        if self.ipam is None:
            return done, in_flight
        with self._lock:
            nets = {n.id: n for n in self.networks()}
            eps = {(e.network_id, e.id) for e in self.endpoints(network_id)}
            for a in self.attachments(network_id):
                nid, eid = a.pop("network_id"), a.pop("endpoint_id")
                if (nid, eid) in eps:
                    continue
                if process_alive(a.get("process")):
                    in_flight.add(eid)
                    continue
                net = nets.get(nid)
                try:
                    if net is None:
                        r = {"addresses": self.release_attachment(nid, eid, only_if=a) or [], "links": []}
                    else:
                        r = self.forget_attachment(net, eid, only_if=a)
                except Exception as e:  # noqa: BLE001 -- one bad record must not stop a start
                    log.error("attachment %s/%s left by a killed ADD: %s", nid[:12], eid[:12], e)
                    continue
                done["attachments"].append(f"{nid[:12]}/{eid[:12]}")
                done["addresses"] += r["addresses"]
                done["links"] += r["links"]
            prefix = endpoint_holder(network_id, "") if network_id else "endpoint/"
            for pool in self.ipam.list_pools():
                try:
                    held = self.ipam.holders(pool["id"])["addresses"]
                except errors.NotFound:
                    continue
                for h in sorted({h for hs in held.values() for h in hs if h.startswith(prefix)}):
                    nid, _, eid = h[len("endpoint/"):].partition("/")
                    def release(t, pid=pool["id"], h=h, nid=nid, eid=eid):
                        # checked again in the commit that releases
                        if t.get(_ep_key(nid, eid)) is not None or \
                                t.get(_attachment_key(nid, eid)) is not None:
                            return []
                        return self.ipam.release_holder(pid, h, txn=t)
                    done["addresses"] += self.txn(release)
        if done["addresses"] or done["links"]:
            log.info("removed what killed attachments left: %s", done)
        return done, in_flight

    # ------------------------------------------------ cluster scope (API v2)
    def allocate_network(self, network_id: str, driver: str = "bridge", options: Optional[dict] = None,
                         ipv4: Iterable[IPData] = (), ipv6: Iterable[IPData] = (), name: str = "",
                         by_create: bool = False) -> dict:
        """Docker's AllocateNetwork: a global driver's cluster-wide resources,
        once per network (a second call answers the first allocation).  A
        local driver allocates nothing: {}.  Returns the options the network
        is created with."""
        if not network_id:
            raise errors.InvalidParameter("network ID is empty")
        # ``name``: known on the CNI path (the conflist's), so refusals name the network by it
        net = Network(id=network_id, driver=driver, name=name, options=dict(options or {}),
                      ipv4=list(ipv4), ipv6=list(ipv6))
        drv = self.driver_for(net)
        if getattr(drv, "scope", "local") != GLOBAL:
            return {}
        key = _allocation_key(network_id)
        with self._lock:
            rec = self.cluster_store.get(key)
            if rec is not None:
                return dict((rec.value or {}).get("allocated") or {})
            got = dict(drv.allocate_network(net) or {})
            value = {"driver": driver, "options": net.options,
                     "ipv4": [dataclasses.asdict(d) for d in net.ipv4],
                     "ipv6": [dataclasses.asdict(d) for d in net.ipv6], "allocated": got}
            if by_create:   # no FreeNetwork will come (CNI; dockerd sees a local driver): delete frees it
                value["by_create"] = True

            def record(t):  # created only if absent: another host may allocate it meanwhile
                have = t.get(key)
                if have is not None:
                    return dict((have.value or {}).get("allocated") or {})
                t.create(key, value)
                return None
            try:
                theirs = self.txn(record, store=self.cluster_store)
            except BaseException:
                drv.free_network(net)
                raise
            if theirs is not None:  # the first allocation stands; ours goes back
                drv.free_network(net)
                return theirs
            log.info("allocated network %s (%s): %s", network_id[:12], driver, got)
            return got

    def _drop_allocation(self, drv, net: Network) -> None:
        """Undo create_network's own allocation (a failed create): the driver's cluster-wide
        part (``net`` has the name that keys it) and the allocation record; one Docker's
        AllocateNetwork made stays for its FreeNetwork."""
        if self._forget_own_allocation(net.id):
            drv.free_network(net)

    def _forget_own_allocation(self, network_id: str) -> bool:
        """The allocation record create_network made itself goes with the network (no
        FreeNetwork comes for it); one Docker's AllocateNetwork made stays for its FreeNetwork."""
        key = _allocation_key(network_id)

        def fn(t):
            rec = t.get(key)
            if rec is not None and (rec.value or {}).get("by_create"):
                t.delete(key)
                return True
            return False
        return self.txn(fn, store=self.cluster_store)

    def free_network(self, network_id: str) -> None:
        """Docker's FreeNetwork: release what allocate_network took (nothing
        for a local driver; unknown IDs succeed, as Docker expects)."""
        key = _allocation_key(network_id)
        with self._lock:
            rec = self.cluster_store.get(key)
            if rec is None:
                return
            v = rec.value or {}
            net = Network(id=network_id, driver=v.get("driver", ""),
                          options={**(v.get("allocated") or {}), **(v.get("options") or {})},
                          ipv4=[IPData(**d) for d in v.get("ipv4") or []],
                          ipv6=[IPData(**d) for d in v.get("ipv6") or []])
            drv = self.drivers.get(net.driver)
            if drv is not None:
                drv.free_network(net)
            self.txn(lambda t: t.delete(key), store=self.cluster_store)

    def route_peer_event(self, event) -> bool:
        """A store watch event under ``peers/<network id>/...`` (another host's
        endpoint appeared or vanished) -> the ``peer_added``/``peer_removed``
        hook of the network's driver.  Returns whether a driver got it (not for
        a key outside ``peers/``, nor a network unknown here)."""
        key = getattr(event, "key", "") or ""
        if not key.startswith(PEERS):
            return False
        nid = key[len(PEERS):].split("/", 1)[0]
        rec = self.store.get(_net_key(nid)) if nid else None
        if rec is None:
            return False
        net = Network.from_json(rec.value)
        drv = self.drivers.get(net.driver)
        added = getattr(event, "type", "") != "DELETE"
        hook = getattr(drv, "peer_added" if added else "peer_removed", None)
        if hook is None:
            return False
        hook(net, PeerEvent(network_id=nid, key=key, added=added,
                            value=getattr(event, "value", None) if added else None,
                            revision=getattr(event, "revision", 0)))
        return True

    # ----------------------------------------------------------- reconcile
    def restore(self) -> None:
        """Daemon start: make kernel and firewall match the store."""
        with self._lock:
            nets = self.networks()
            eps = self.endpoints()
            self._record_holds(nets, eps)
            # before the drivers' restore, so the links of killed ADDs go with
            # their addresses, and those of ADDs in flight (a CNI binary
            # working beside a restarting daemon) stay
            _, in_flight = self.forget_orphan_attachments()
            for name, drv in self.drivers.items():
                mine = [n for n in nets if n.driver == name]
                ids = {n.id for n in mine}
                changed = drv.restore(mine, [e for e in eps if e.network_id in ids], keep=in_flight)
                self._remember(changed)
                # addresses a driver took beyond this host for a request the local IPAM never
                # recorded (a daemon killed in between: the overlay's block IPAM)
                self._reclaim(drv)
            self._sync_firewall()

    def _reclaim(self, drv) -> None:
        reclaim = getattr(drv, "reclaim_addresses", None)
        if reclaim is None:
            return
        try:
            reclaim(self)
        except errors.PynetError as e:   # the cluster store down: the next restart tries again
            log.warning("restore: driver %s: addresses not reclaimed: %s", getattr(drv, "name", "?"), e)

    def _remember(self, changes) -> None:
        """Store the record changes a driver handed back (cnm.driver.Remember),
        in one commit; a record deleted meanwhile stays deleted."""
        if not changes:
            return
        items = [*((_net_key(n), f) for n, f in changes.networks.items()),
                 *((_ep_key(n, e), f) for (n, e), f in changes.endpoints.items())]

        def fn(t):
            for key, fields in items:
                rec = t.get(key)
                if rec is not None:
                    t.put(key, dict(rec.value, **_jsonable(fields)))
        self.txn(fn)

    def _update_network(self, network_id: str, default: Optional[Network] = None, **fields) -> None:
        """Set ``fields`` of a network record (from ``default`` when it is gone)."""
        def fn(t):
            rec = t.get(_net_key(network_id))
            if rec is not None or default is not None:
                t.put(_net_key(network_id), dict(rec.value if rec is not None else default.to_json(),
                                                 **fields))
        self.txn(fn)

    def _record_holds(self, nets: list[Network], eps: list[Endpoint]) -> None:
        """Holds and host port reservations of records a pynet of before
        holders stored (idempotent): networks hold their pools, gateways and
        aux addresses, CNI endpoints their addresses, programmed endpoints
        their host ports -- so the reconcile that follows never takes them
        for Docker's."""
        if self.ipam is None:
            return
        by_net = {n.id: n for n in nets}

        def fn(t):
            for net in nets:
                self._hold_network_addresses(net, t)
            for ep in eps:
                net = by_net.get(ep.network_id)
                if net is not None and ep.container_id:
                    for d, pid in self._network_pools(net, t):
                        subnet = ipaddress.ip_network(d.pool, strict=False)
                        for ip in (ep.ip, ep.ip6):
                            if ip and ipaddress.ip_address(ip) in subnet:
                                self.ipam.hold_address(pid, ip, endpoint_holder(net.id, ep.id), txn=t)
                if ep.external:
                    self._reserve_exact(t, ep)
        self.txn(fn)

    def reconcile_runtime(self, networks_held: dict, pools_held: list, requester: str) -> dict:
        """Forget what a runtime (``requester``) no longer holds -- and only
        what it asked for itself.

        ``networks_held``: network id -> endpoint ids the runtime still has, for
        every network of ours it knows; ``pools_held``: (pool, sub_pool, bare
        addresses) for every pool it holds through our IPAM.  Only records the
        runtime made are touched (networks created_by it, endpoints without a
        CNI container id, pools and addresses it holds).  A network of the
        runtime it no longer lists but CNI pods are attached to is kept for
        them and removed with the last one; a pool it no longer lists stays
        reserved while another holder keeps an address or the pool.
        """
        done = {"networks": [], "endpoints": [], "pools": [], "addresses": []}
        with self._lock:
            for net in self.networks():
                if net.created_by != requester:
                    continue
                listed = networks_held.get(net.id)
                for ep in self.endpoints(net.id):
                    if not ep.container_id and ep.id not in (listed or ()):
                        self.delete_endpoint(net.id, ep.id)
                        done["endpoints"].append(ep.id)
                if listed is not None:
                    if net.delete_pending:  # dockerd honoured the refusal: it still has the network
                        self._update_network(net.id, delete_pending=False)
                    continue
                if any(e.container_id for e in self.endpoints(net.id)):
                    if not net.delete_pending:
                        self._mark_delete_pending(net)
                    continue
                if self.store.get(_net_key(net.id)) is not None:  # not gone with its last endpoint
                    self.delete_network(net.id, force_endpoints=True)
                done["networks"].append(net.id)
            held = {(p, sp or ""): addrs for p, sp, addrs in pools_held}
            for pool in self.ipam.list_pools():
                if not self._held_by(pool, requester):
                    continue
                key = (pool["pool"], pool.get("sub_pool") or "")
                if key not in held:
                    self.release_pool(pool["id"], requester)
                    done["pools"].append(pool["id"])
                else:
                    legacy_gateways = {r.key.rsplit("/", 1)[1]
                                       for r in self.store.list(_gateway_key(pool["id"], ""))}
                    done["addresses"] += self.ipam.reconcile_holder(
                        pool["id"], requester, held[key] | legacy_gateways)
        return done

    def _held_by(self, pool: dict, requester: str) -> bool:
        """Whether ``requester`` holds the pool: its hold, or (a store of
        before holders) its name in the pool's options."""
        h = self.ipam.holders(pool["id"])
        if h["pool"] or pool.get("requested") is False:
            return requester in h["pool"]
        return (pool.get("options") or {}).get(REQUESTER_OPTION) == requester

    def _firewall_affects(self, net: Network, ep: Endpoint) -> bool:
        """Whether the endpoint has rules of its own (published ports,
        anti-spoofing).  Most endpoints have none, and rendering the rule set
        grows with every endpoint: skipping those keeps CreateEndpoint flat."""
        if self.firewall is None:
            return False
        affects = getattr(self.firewall, "affects", None)
        return True if affects is None else bool(affects(net, ep))

    def _sync_firewall_for(self, net: Network, ep: Endpoint) -> None:
        if self._firewall_affects(net, ep):
            self._sync_firewall({ep.id})

    def _sync_firewall(self, changed: Optional[set] = None) -> None:
        """``changed``: the ids of the networks and endpoints whose rules this
        verb added, changed or removed (the firewall touches only theirs); None:
        everything is compared with the kernel (daemon start)."""
        if self.firewall is None:
            return
        state = self._firewall_state()
        if changed is None:
            self.firewall.sync(*state)
        else:
            self.firewall.sync(*state, changed=changed)

    def recheck_firewall(self) -> None:
        """Compare the kernel's rules with the store's and repair them (the
        daemon's periodic re-check, SIGHUP), between two verbs."""
        if self.firewall is None:
            return
        with self._lock:
            self.firewall.sync(*self._firewall_state(), force=True)

    def _firewall_state(self) -> tuple:
        """What sync() is handed: nothing for a firewall that reads the state again under
        its lock (SerialFirewall), since reading every record twice grows with them."""
        if getattr(self.firewall, "reads_state", False):
            return None, None
        return self.networks(), self.endpoints()


def _apply(ep: Endpoint, fields: Optional[dict]) -> None:
    """Set the endpoint fields a driver handed back (``mac``, ``driver_state``...)."""
    for name, value in (fields or {}).items():
        if not hasattr(ep, name):
            raise errors.InvalidParameter(f"a driver remembered {name!r}, which an endpoint has not")
        setattr(ep, name, value)


def _jsonable(fields: dict) -> dict:
    return {k: (v.to_json() if hasattr(v, "to_json") else v) for k, v in fields.items()}


def _esc(host_ip: str) -> str:
    # a host address is validated before it gets here; escaping keeps any
    # '/' of an odd one from splitting the key
    return host_ip.replace("%", "%25").replace("/", "%2F")


def _unesc(k: str) -> str:
    return k.replace("%2F", "/").replace("%25", "%")


def ephemeral_port_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = f.read().split()
            return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999
