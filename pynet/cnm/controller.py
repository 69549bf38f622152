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
import ipaddress
import logging
import threading
import time
from typing import Iterable, Optional

from pynet import errors
from pynet.cnm.driver import Driver
from pynet.cnm.model import Endpoint, IPData, JoinInfo, Network, PortMapping

log = logging.getLogger("pynet.controller")

NETWORKS = "networks/"
REQUESTER_OPTION = "pynet.requester"
ENDPOINTS = "endpoints/"


def _net_key(nid: str) -> str:
    return NETWORKS + nid


def _ep_key(nid: str, eid: str) -> str:
    return f"{ENDPOINTS}{nid}/{eid}"


GATEWAYS = "gateways/"
GATEWAY_REQUEST = "com.docker.network.gateway"


def _gateway_key(pool_id: str, addr: str) -> str:
    # pool ids contain '/', which is fine inside a key; the trailing '/' keeps
    # one pool's prefix from matching another's.
    return f"{GATEWAYS}{pool_id}/" + addr


def parse_cidr(value: str, what: str, strict: bool = False):
    """``10.1.0.0/24`` -> ip_network; raises InvalidSubnet with one readable line."""
    try:
        if not isinstance(value, str) or "/" not in value:
            raise ValueError("not in CIDR form")
        return ipaddress.ip_network(value, strict=strict)
    except ValueError as e:
        raise errors.InvalidSubnet(f"invalid {what} {value!r}: {e}") from None


def parse_interface(value: str, what: str):
    """``10.1.0.5/24`` -> ip_interface; raises InvalidAddress."""
    try:
        if not isinstance(value, str) or "/" not in value:
            raise ValueError("not in CIDR form")
        return ipaddress.ip_interface(value)
    except ValueError as e:
        raise errors.InvalidAddress(f"invalid {what} {value!r}: {e}") from None


class Controller:
    def __init__(self, store, ipam, drivers: dict[str, Driver], firewall=None,
                 port_allocator=None):
        self.store = store
        self.ipam = ipam
        self.drivers = drivers
        self.firewall = firewall
        self.port_allocator = port_allocator
        # One writer at a time inside this process; the store's transactions
        # serialise writers across processes (CNI binaries beside the daemon).
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ IPAM
    def address_spaces(self) -> dict:
        return self.ipam.address_spaces()

    def request_pool(self, address_space: str, pool: str = "", sub_pool: str = "",
                     options: Optional[dict] = None, v6: bool = False, requester: str = ""):
        """``requester`` (e.g. "docker") is remembered with the pool so that
        reconcile_runtime() only ever releases pools that runtime asked for."""
        options = dict(options or {})
        if requester:
            options[REQUESTER_OPTION] = requester
        with self._lock:
            return self.ipam.request_pool(address_space, pool, sub_pool, options, v6)

    def release_pool(self, pool_id: str) -> None:
        with self._lock:
            self.ipam.release_pool(pool_id)
            self.store.delete_prefix(_gateway_key(pool_id, ""))

    def request_address(self, pool_id: str, address: str = "", options: Optional[dict] = None) -> str:
        options = options or {}
        with self._lock:
            addr = self.ipam.request_address(pool_id, address, options)
            if options.get("RequestAddressType") == GATEWAY_REQUEST:
                # Docker does not show an automatic gateway in `network
                # inspect`; remember it so reconcile_runtime() knows it is held.
                self.store.put(_gateway_key(pool_id, addr.split("/")[0]), {})
            return addr

    def release_address(self, pool_id: str, address: str) -> None:
        with self._lock, self.store.transaction():  # one commit for both
            self.ipam.release_address(pool_id, address)
            self.store.delete(_gateway_key(pool_id, address.split("/")[0]))

    # ------------------------------------------------------------- lookups
    def driver_for(self, net: Network) -> Driver:
        try:
            return self.drivers[net.driver]
        except KeyError:
            raise errors.InvalidOption(
                f"unknown driver {net.driver!r} (known: {', '.join(sorted(self.drivers))})") from None

    def networks(self) -> list[Network]:
        return [Network.from_json(r.value) for r in self.store.list(NETWORKS)]

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

    def endpoints(self, network_id: Optional[str] = None) -> list[Endpoint]:
        prefix = f"{ENDPOINTS}{network_id}/" if network_id else ENDPOINTS
        return [Endpoint.from_json(r.value) for r in self.store.list(prefix)]

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

    def _save_network(self, net: Network) -> None:
        self.store.put(_net_key(net.id), net.to_json())

    def _save_endpoint(self, ep: Endpoint) -> None:
        self.store.put(_ep_key(ep.network_id, ep.id), ep.to_json())

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
            drv.validate_network(net, others)
            with contextlib.ExitStack() as undo:
                drv.create_network(net)
                undo.callback(drv.delete_network, net)
                self._save_network(net)
                undo.callback(self.store.delete, _net_key(net.id))
                self._sync_firewall()
                undo.pop_all()
            log.info("created network %s (%s)", net.id[:12], net.driver)
            return net

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
        for other in others:
            for d in other.ipv4 + other.ipv6:
                theirs = ipaddress.ip_network(d.pool, strict=False)
                for s in mine:
                    if s.version == theirs.version and s.overlaps(theirs):
                        raise errors.PoolOverlap(
                            f"subnet {s} overlaps subnet {theirs} of network "
                            f"{other.name or other.id[:12]}")

    @staticmethod
    def _bare_ip(value: str, what: str):
        try:
            return ipaddress.ip_address(value)
        except ValueError:
            raise errors.InvalidAddress(f"invalid {what} {value!r}") from None

    def delete_network(self, network_id: str, force_endpoints: bool = False) -> None:
        with self._lock:
            rec = self.store.get(_net_key(network_id))
            if rec is None:
                return  # Docker: deleting something unknown succeeds
            net = Network.from_json(rec.value)
            eps = self.endpoints(net.id)
            if eps and not force_endpoints:
                raise errors.InUse(
                    f"network {net.name or net.id[:12]} has active endpoints "
                    f"({', '.join(e.id[:12] for e in eps)})")
            drv = self.driver_for(net)
            try:
                for ep in eps:
                    self._teardown_endpoint(net, ep, drv)
                drv.delete_network(net)
            finally:
                # Docker forgets the network even when DeleteNetwork fails; a
                # record kept here would block its subnet forever.  Kernel
                # leftovers carry our alias, so restore() removes them.
                self.store.delete(_net_key(net.id))
                for d in net.ipv4 + net.ipv6:
                    if d.pool_id and net.created_by != "docker":
                        self.release_pool(d.pool_id)   # its gateway records too
                self._sync_firewall()
            log.info("deleted network %s", net.id[:12])

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
            with contextlib.ExitStack() as undo:
                drv.create_endpoint(net, ep)
                undo.callback(drv.delete_endpoint, net, ep)
                self._save_endpoint(ep)
                undo.callback(self.store.delete, _ep_key(ep.network_id, ep.id))
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
                self._sync_firewall()

    def _teardown_endpoint(self, net: Network, ep: Endpoint, drv: Driver) -> None:
        # Each step tolerates what is already gone, so a teardown that was
        # interrupted can simply run again.
        if ep.external:
            ep.external = False
            ep.ports = []
        if ep.sandbox_key:
            drv.leave(net, ep)
        drv.delete_endpoint(net, ep)
        self.store.delete(_ep_key(net.id, ep.id))

    # ------------------------------------------------------------ join/leave
    def join(self, network_id: str, endpoint_id: str, sandbox_key: str,
             options: Optional[dict] = None) -> JoinInfo:
        with self._lock:
            net = self.network(network_id)
            ep = self.endpoint(net.id, endpoint_id)
            drv = self.driver_for(net)
            info = drv.join(net, ep, sandbox_key)
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
            ep.ports = self._resolve_host_ports(ep, requested)
            ep.exposed = list(exposed) or ep.exposed
            ep.external = True
            before = self.store.get(_ep_key(net.id, ep.id))
            drv = self.driver_for(net)
            drv.program_external_connectivity(net, ep)
            self._save_endpoint(ep)
            try:
                if had_rules or self._firewall_affects(net, ep):
                    self._sync_firewall()
            except BaseException:
                self.store.put(_ep_key(net.id, ep.id), before.value)
                drv.revoke_external_connectivity(net, ep)
                self._sync_firewall()
                raise
            return ep

    def _resolve_host_ports(self, ep: Endpoint, requested: list[PortMapping]) -> list[PortMapping]:
        """Choose host ports as Docker's bridge driver does: an explicit port
        as given, 0 = first free from the ephemeral range, a range = first free
        in it; a port another endpoint holds is refused."""
        # Only programmed endpoints hold host ports: Docker sends a container's
        # port map to CreateEndpoint of every network it joins, but programs
        # it on one of them.
        held = {(p.proto, p.host_ip, p.host_port)
                for other in self.endpoints() if other.id != ep.id and other.external
                for p in other.ports}
        chosen: list[PortMapping] = []
        for pm in requested:
            if pm.proto not in ("tcp", "udp", "sctp"):
                raise errors.InvalidParameter(f"unsupported protocol {pm.proto!r}")
            if pm.host_ip:
                self._bare_ip(pm.host_ip, "host address")
            taken = {hp for proto, hip, hp in held
                     if proto == pm.proto and (not hip or not pm.host_ip or hip == pm.host_ip)}
            port = self._pick_port(pm, taken)
            held.add((pm.proto, pm.host_ip, port))
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

    def revoke_external_connectivity(self, network_id: str, endpoint_id: str) -> None:
        with self._lock:
            try:
                net = self.network(network_id)
                ep = self.endpoint(net.id, endpoint_id)
            except errors.NotFound:
                return
            had_rules = self._firewall_affects(net, ep)
            ep.ports = []
            ep.external = False
            self.driver_for(net).revoke_external_connectivity(net, ep)
            self._save_endpoint(ep)
            if had_rules:
                self._sync_firewall()

    # ----------------------------------------------------------- reconcile
    def restore(self) -> None:
        """Daemon start: make kernel and firewall match the store."""
        with self._lock:
            nets = self.networks()
            eps = self.endpoints()
            for name, drv in self.drivers.items():
                mine = [n for n in nets if n.driver == name]
                ids = {n.id for n in mine}
                drv.restore(mine, [e for e in eps if e.network_id in ids])
            self._sync_firewall()

    def reconcile_runtime(self, networks_held: dict, pools_held: list, requester: str) -> dict:
        """Forget what a runtime (``requester``) no longer holds.

        ``networks_held``: network id -> endpoint ids the runtime still has, for
        every network of ours it knows; ``pools_held``: (pool, sub_pool, bare
        addresses) for every pool it holds through our IPAM.  Only records the
        runtime made are touched (networks created_by it, endpoints without a
        CNI container id, pools requested by it).
        """
        done = {"networks": [], "endpoints": [], "pools": [], "addresses": []}
        with self._lock:
            for net in self.networks():
                if net.created_by != requester:
                    continue
                if net.id not in networks_held:
                    self.delete_network(net.id, force_endpoints=True)
                    done["networks"].append(net.id)
                    continue
                for ep in self.endpoints(net.id):
                    if not ep.container_id and ep.id not in networks_held[net.id]:
                        self.delete_endpoint(net.id, ep.id)
                        done["endpoints"].append(ep.id)
            held = {(p, sp or ""): addrs for p, sp, addrs in pools_held}
            for pool in self.ipam.list_pools():
                if (pool.get("options") or {}).get(REQUESTER_OPTION) != requester:
                    continue
                key = (pool["pool"], pool.get("sub_pool") or "")
                if key not in held:
                    self.release_pool(pool["id"])
                    done["pools"].append(pool["id"])
                else:
                    gateways = {r.key.rsplit("/", 1)[1]
                                for r in self.store.list(_gateway_key(pool["id"], ""))}
                    done["addresses"] += self.ipam.reconcile(pool["id"], held[key] | gateways)
        return done

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
            self._sync_firewall()

    def _sync_firewall(self) -> None:
        if self.firewall is None:
            return
        self.firewall.sync(self.networks(), self.endpoints())

    def recheck_firewall(self) -> None:
        """Compare the kernel's rules with the store's and repair them (the
        daemon's periodic re-check, SIGHUP), between two verbs."""
        if self.firewall is None:
            return
        with self._lock:
            self.firewall.sync(self.networks(), self.endpoints(), force=True)


def ephemeral_port_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = f.read().split()
            return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999
