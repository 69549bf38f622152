"""The bridge driver, in CNM order (compare libnetwork's drivers/bridge).

    create network  -> a Linux bridge with the gateway address(es), up
    create endpoint -> a veth pair: host end on the bridge and up, container end
                       (with the endpoint's MAC and MTU) left in the host namespace
    join            -> tell the runtime which interface to move and the gateways
    leave           -> nothing: the runtime moves the interface back itself
    delete endpoint -> delete the host end (the container end goes with it)
    delete network  -> delete the bridge if pynet created it
    restore         -> make the kernel match the store after a reboot / `ip link del`

The host end is enslaved and brought up at create-endpoint time, like
libnetwork, so the container end only needs moving.

Naming:
    bridge          ``com.docker.network.bridge.name`` or ``pn-`` + 12 chars of
                    the network id (15 bytes)
    host veth       ``pv`` + 11 chars of the endpoint id
    container veth  ``pc`` + 11 chars of the endpoint id
(ids that are not lower-case hex, e.g. from the CNI path, are hashed first.)
Every link pynet creates carries the alias ``pynet:<instance>:<object id>`` so
that ``restore`` can tell its own links, and only this instance's, from others.

What the driver remembers lives in ``net.driver_state`` / ``ep.driver_state``:
    net: bridge, created (bool), mtu (int|None), enable_icc, enable_ip_masquerade,
         host_binding_ipv4, spoof_check, dst_prefix
    ep:  host_veth, container_veth, bridge
The firewall reads the first group (icc, masquerade, host binding) from there.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import logging
import re
import socket
from typing import Optional

from pynet import errors, validate
from pynet.cnm.driver import CniNetConf, DriverBase, Remember
from pynet.cnm.model import Endpoint, JoinInfo, Network
from pynet.drivers.options import (ALIAS_PREFIX, OPT_IFACE_PREFIX, OPT_MTU, address_option, alias_for, driver_mtu,
                                   iface_prefix, ifname_option, parse_alias)
from pynet.netlink import IFNAMSIZ, check_mac, random_mac

log = logging.getLogger("pynet.drivers.bridge")

# -- options ------------------------------------------------------------------
OPT_NAME = "com.docker.network.bridge.name"
OPT_ICC = "com.docker.network.bridge.enable_icc"
OPT_MASQ = "com.docker.network.bridge.enable_ip_masquerade"
OPT_HOST_BINDING = "com.docker.network.bridge.host_binding_ipv4"
OPT_SPOOF_CHECK = "pynet.bridge.spoof_check"
OPT_HOST_IPV4 = "com.docker.network.host_ipv4"  # SNAT source (read by bridge_firewall)
BRIDGE_OPTION_PREFIXES = ("com.docker.network.bridge.", "pynet.bridge.")
KNOWN_OPTIONS = {OPT_NAME, OPT_MTU, OPT_ICC, OPT_MASQ, OPT_HOST_BINDING, OPT_SPOOF_CHECK,
                 OPT_IFACE_PREFIX}

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _short(object_id: str, n: int) -> str:
    if re.fullmatch(r"[0-9a-f]+", object_id or "") and len(object_id) >= n:
        return object_id[:n]
    return hashlib.sha256((object_id or "").encode()).hexdigest()[:n]


def default_bridge_name(network_id: str) -> str:
    return "pn-" + _short(network_id, 12)


def host_veth_name(endpoint_id: str) -> str:
    return "pv" + _short(endpoint_id, 11)


def container_veth_name(endpoint_id: str) -> str:
    return "pc" + _short(endpoint_id, 11)


def mac_from_ipv4(address: str) -> str:
    """Docker's derivation: 02:42 followed by the four bytes of the IPv4 address."""
    ip = ipaddress.ip_interface(address).ip if "/" in address else ipaddress.ip_address(address)
    return "02:42:" + ":".join(f"{b:02x}" for b in ip.packed)


def _bool(key: str, value) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise errors.InvalidOption(f"invalid value {value!r} for option {key}: expected true or false")


def parse_options(net: Network) -> dict:
    """The driver's configuration of a network from ``net.options``; one
    readable InvalidOption line for anything wrong."""
    opts = net.options or {}
    cfg = {"bridge": default_bridge_name(net.id), "mtu": None, "enable_icc": True,
           "enable_ip_masquerade": True, "host_binding_ipv4": "", "spoof_check": False,
           "dst_prefix": "eth"}
    for key, value in opts.items():
        if key.startswith(BRIDGE_OPTION_PREFIXES) and key not in KNOWN_OPTIONS:
            raise errors.InvalidOption(f"unknown bridge option {key}")
    name = ifname_option(opts, OPT_NAME, "bridge name")
    if name:
        cfg["bridge"] = name
    cfg["mtu"] = driver_mtu(opts)
    if OPT_ICC in opts:
        cfg["enable_icc"] = _bool(OPT_ICC, opts[OPT_ICC])
    if OPT_MASQ in opts:
        cfg["enable_ip_masquerade"] = _bool(OPT_MASQ, opts[OPT_MASQ])
    if OPT_SPOOF_CHECK in opts:
        cfg["spoof_check"] = _bool(OPT_SPOOF_CHECK, opts[OPT_SPOOF_CHECK])
    cfg["host_binding_ipv4"] = address_option(opts, OPT_HOST_BINDING)
    address_option(opts, OPT_HOST_IPV4, version=4)  # kept in net.options, checked here
    cfg["dst_prefix"] = iface_prefix(opts)
    return cfg


def host_address_is_local(ip: str) -> bool:
    """Docker's built-in driver binds each published host address (and so refuses one
    that is not on this host); pynet has no proxy, so it tries the same bind once."""
    a = ipaddress.ip_address(ip)
    if a.is_unspecified:
        return True
    fam = socket.AF_INET6 if a.version == 6 else socket.AF_INET
    try:
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


def check_host_address(host_ip: str, what: str, is_local=host_address_is_local) -> str:
    """A published port's host address: a plain IP address (no IPv6 zone: Python's
    ipaddress takes any text after ``%``, and ``::%x`` counted as unspecified) that is
    this host's.  InvalidAddress otherwise."""
    if not isinstance(host_ip, str) or "%" in host_ip or host_ip.strip() != host_ip:
        raise errors.InvalidAddress(f"invalid host address {host_ip!r} for {what}: "
                                    "a plain IP address without zone is required")
    try:
        ipaddress.ip_address(host_ip)
    except ValueError:
        raise errors.InvalidAddress(f"invalid host address {host_ip!r} for {what}") from None
    if not is_local(host_ip):
        raise errors.InvalidAddress(f"host address {host_ip} for {what} is not an address of this host")
    return host_ip


def _cni_bool(conf: dict, key: str, default=None):
    v = conf.get(key, default)
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise errors.InvalidOption(f"{key} must be true or false, got {v!r}")


def _cni_ifname(conf: dict, key: str, what: str) -> str:
    v = conf.get(key)
    if v is None or v == "":
        return ""
    return validate.ifname(v, what)


def _flag(value, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


# -- firewall: Docker's bridge layout, from the stored records -----------------
def firewall_network(net: Network):
    """The firewall's NetworkSpec of a bridge network (None before its
    driver_state exists)."""
    from pynet.firewall import NetworkSpec

    st = net.driver_state
    if not st.get("bridge"):
        return None
    return NetworkSpec(
        id=net.id, bridge=st["bridge"],
        subnets_v4=[d.pool for d in net.ipv4], subnets_v6=[d.pool for d in net.ipv6],
        icc=_flag(st.get("enable_icc"), True), internal=net.internal,
        masquerade=_flag(st.get("enable_ip_masquerade"), True),
        host_ipv4=net.options.get(OPT_HOST_IPV4) or None,
        spoof_check=_flag(st.get("spoof_check"), False))


def firewall_endpoint(net: Network, ep: Endpoint):
    """The firewall's EndpointSpec: published ports (the network's host
    binding when a mapping names no host address), MAC and host veth."""
    from pynet.firewall import EndpointSpec, PortMapping as FwPortMapping

    binding = net.driver_state.get("host_binding_ipv4") or ""
    ports = [FwPortMapping(proto=p.proto, host_ip=p.host_ip or binding,
                           host_port=p.host_port, container_port=p.container_port)
             for p in (ep.ports if ep.external else [])]
    return EndpointSpec(id=ep.id, network_id=ep.network_id, ipv4=ep.ip or None, ipv6=ep.ip6 or None,
                        mac=ep.mac or None, ports=ports, host_veth=ep.driver_state.get("host_veth"))


def firewall_affects(net: Network, ep: Endpoint) -> bool:
    """Published ports, or the anti-spoofing rules of a spoof_check network;
    everything else about an endpoint is covered by its network's rules."""
    return bool(ep.external and ep.ports) or _flag(net.driver_state.get("spoof_check"), False)


class BridgeDriver(DriverBase):
    name = "bridge"
    scope = "local"

    def __init__(self, netlink, sysctl, instance: str, is_local=None):
        """``is_local(ip) -> bool``: whether a published port's host address is this
        host's (default :func:`host_address_is_local`)."""
        if not instance or ":" in instance:
            raise errors.InvalidParameter(f"invalid pynet instance name {instance!r}")
        self.nl = netlink
        self.sysctl = sysctl
        self.instance = instance
        self._is_local = is_local

    def is_local(self, ip: str) -> bool:
        return (self._is_local or host_address_is_local)(ip)

    # the tag on this driver's links; a driver built on this one (the overlay) has its own,
    # so neither one's restore takes the other's links for its orphans
    alias_prefix = ALIAS_PREFIX

    def _tag(self, object_id: str) -> str:
        return alias_for(self.instance, object_id)

    def _owner(self, alias: str):
        return parse_alias(alias, (self.alias_prefix,))

    def _state(self, net: Network) -> dict:
        """driver_state, or the configuration recomputed for records made
        before it was filled in."""
        if net.driver_state.get("bridge"):
            return net.driver_state
        cfg = parse_options(net)
        cfg["created"] = True
        return cfg

    # ======================================================== create network
    def validate_network(self, net: Network, others: list[Network]) -> None:
        cfg = parse_options(net)
        name = cfg["bridge"]
        if len(name.encode()) > IFNAMSIZ:
            raise errors.InvalidOption(f"bridge name {name!r} is longer than {IFNAMSIZ} bytes")
        for other in others:
            if other.id == net.id or other.driver != net.driver:
                continue
            try:
                theirs = self._state(other)["bridge"]
            except errors.PynetError:
                continue
            if theirs == name:
                raise errors.Conflict(
                    f"bridge {name} is already used by network {other.name or other.id[:12]}")
        if self.nl.link_exists(name):
            link = self.nl.get_link(name)
            if link.kind != "bridge":
                raise errors.Conflict(
                    f"cannot use {name} as bridge: a {link.kind or 'non-bridge'} link of that name exists")
            owner = parse_alias(link.alias)
            if owner and owner != (self.instance, net.id):
                raise errors.Conflict(f"bridge {name} belongs to pynet instance {owner[0]} "
                                      f"(object {owner[1][:12]})")

    def create_network(self, net: Network) -> None:
        cfg = parse_options(net)
        name = cfg["bridge"]
        existed = self.nl.link_exists(name)
        if existed:
            owner = parse_alias(self.nl.get_link(name).alias)
            created = owner == (self.instance, net.id)   # a retry of our own create
        else:
            created = True
        cfg["created"] = created
        with contextlib.ExitStack() as undo:
            if not existed:
                undo.callback(self.nl.delete_link, name, True)
            self._setup_bridge(net, cfg, tag=created)
            net.driver_state = cfg
            undo.pop_all()
        log.info("network %s: bridge %s%s", net.id[:12], name, "" if created else " (existing)")
        return cfg

    def _setup_bridge(self, net: Network, cfg: dict, tag: bool) -> None:
        """libnetwork's setup_* steps, chosen by conditions, in order.
        Idempotent: restore runs it again on a bridge that may be missing."""
        name = cfg["bridge"]
        # setup_device
        self.nl.ensure_bridge(name, mtu=cfg["mtu"], alias=self._tag(net.id) if tag else None)
        # setup_ipv6 (before the v6 addresses: the kernel refuses them with IPv6 disabled)
        want_v6 = bool(net.ipv6) or net.enable_ipv6
        if want_v6:
            self.sysctl.set(f"net/ipv6/conf/{name}/disable_ipv6", 0)
        # setup_bridge_ipv4 / setup_bridge_ipv6 (internal networks too, like Docker)
        for d in net.ipv4 + (net.ipv6 if want_v6 else []):
            if d.gateway:
                cidr = self._gateway_cidr(d)
                # no duplicate address detection: the gateway answers at once
                self.nl.ensure_address(name, cidr, nodad=ipaddress.ip_interface(cidr).version == 6)
        # setup_ip_forwarding
        if not net.internal:
            self.sysctl.set("net/ipv4/ip_forward", 1)
            if want_v6 and net.ipv6:
                self.sysctl.set("net/ipv6/conf/all/forwarding", 1)
        # setup_device_up
        self.nl.set_up(name)

    @staticmethod
    def _gateway_cidr(d) -> str:
        gw = d.gateway
        if "/" not in gw:
            gw = f"{gw}/{ipaddress.ip_network(d.pool, strict=False).prefixlen}"
        return gw

    # ======================================================= create endpoint
    def plan_endpoint(self, net: Network, ep: Endpoint) -> dict:
        """The pair's names (from the endpoint ID) and the MAC, recorded by
        the controller before the pair exists."""
        st = self._state(net)
        mac = check_mac(ep.mac or (mac_from_ipv4(ep.address) if ep.address else random_mac()))
        return {"mac": mac, "driver_state": {"host_veth": host_veth_name(ep.id),
                                             "container_veth": container_veth_name(ep.id),
                                             "bridge": st["bridge"]}}

    def create_endpoint(self, net: Network, ep: Endpoint) -> Optional[dict]:
        st = self._state(net)
        planned = None
        if not ep.driver_state.get("host_veth"):  # a caller that did not plan: plan now
            planned = self.plan_endpoint(net, ep)
            ep = dataclasses.replace(ep, **planned)
        self._remove_stale_veth(ep, ep.driver_state["host_veth"])
        with contextlib.ExitStack() as undo:
            self._create_veth(st, ep, undo)
            undo.pop_all()
        return planned

    def _remove_stale_veth(self, ep: Endpoint, host: str) -> None:
        """A host end left by an interrupted create of this same endpoint."""
        if self.nl.link_exists(host):
            if self.nl.get_link(host).alias == self._tag(ep.id):
                self.nl.delete_link(host)
            else:
                raise errors.Conflict(f"interface {host} already exists and is not endpoint "
                                      f"{ep.id[:12]}'s")

    def _create_veth(self, st: dict, ep: Endpoint, undo: contextlib.ExitStack) -> None:
        host, cont = ep.driver_state["host_veth"], ep.driver_state["container_veth"]
        self.nl.add_veth(host, cont, mtu=st.get("mtu"), peer_mac=ep.mac, alias=self._tag(ep.id))
        undo.callback(self.nl.delete_link, host, True)
        self.nl.set_master(host, st["bridge"])
        # as Docker without its userland proxy: a container reaches its own
        # published port through the host's address (DNAT sends it back)
        self.nl.set_hairpin(host, True)
        self.nl.set_up(host)

    # ================================================================= join
    def join(self, net: Network, ep: Endpoint, sandbox_key: str) -> JoinInfo:
        st = self._state(net)
        host, cont = self._veths(ep)
        remember: dict = {}
        if not self.nl.link_exists(cont):
            if self.nl.link_exists(host):
                raise errors.Conflict(f"interface {cont} of endpoint {ep.id[:12]} is not in the "
                                      f"host namespace (already joined?)")
            # the pair vanished (reboot, manual delete): recreate it
            state = dict(ep.driver_state, host_veth=host, container_veth=cont)
            state.setdefault("bridge", st["bridge"])
            with contextlib.ExitStack() as undo:
                self._create_veth(st, dataclasses.replace(ep, driver_state=state), undo)
                undo.pop_all()
            if state != ep.driver_state:
                remember = {"driver_state": state}
        if net.internal:
            return JoinInfo(src_name=cont, dst_prefix=st.get("dst_prefix", "eth"),
                            disable_gateway_service=True, remember=remember)
        return JoinInfo(src_name=cont, dst_prefix=st.get("dst_prefix", "eth"),
                        gateway=net.gateway_v4, gateway_v6=net.gateway_v6, remember=remember)

    def _veths(self, ep: Endpoint) -> tuple[str, str]:
        return (ep.driver_state.get("host_veth") or host_veth_name(ep.id),
                ep.driver_state.get("container_veth") or container_veth_name(ep.id))

    # ---- external connectivity: the firewall (controller.sync) does the work
    def program_external_connectivity(self, net: Network, ep: Endpoint) -> Optional[dict]:
        """The door for published ports: each mapping is checked here, when it is
        programmed -- before it is stored and before any rule exists -- so a refused
        mapping changes nothing, on the Docker path and on every CNI exec alike (a
        check in the firewall's sync used to be skipped on a process's first sync,
        which is every CNI process).  The firewall then only renders what passed."""
        from pynet.firewall.model import EndpointSpec
        from pynet.firewall.model import PortMapping as FwPortMapping
        from pynet.firewall.render import expand_ports

        st = self._state(net)
        binding = st.get("host_binding_ipv4") or ""
        mappings = []
        for pm in ep.ports:
            host_ip = pm.host_ip or binding
            if host_ip:
                check_host_address(host_ip, f"{pm.host_port}/{pm.proto}", self.is_local)
            mappings.append(FwPortMapping(proto=pm.proto, host_ip=host_ip, host_port=pm.host_port,
                                          container_port=pm.container_port))
        # what the renderer would refuse for this endpoint alone (e.g. a host address of a
        # family the endpoint has no address of)
        expand_ports(EndpointSpec(id=ep.id, network_id=net.id, ipv4=ep.ip or None,
                                  ipv6=ep.ip6 or None, ports=mappings))
        return None

    def revoke_external_connectivity(self, net: Network, ep: Endpoint) -> None:
        return None

    # ================================================================ leave
    def leave(self, net: Network, ep: Endpoint) -> None:
        """dockerd / the sandbox moves the interface back or deletes the
        namespace; nothing on the host side needs undoing."""
        return None

    # ====================================================== delete endpoint
    def delete_endpoint(self, net: Network, ep: Endpoint) -> None:
        host, _ = self._veths(ep)
        self.nl.delete_link(host, missing_ok=True)

    def forget_endpoint(self, net: Network, endpoint_id: str) -> list[str]:
        """The host end an interrupted create of ``endpoint_id`` left (no
        record of it exists, so its name derives from the id); only if it
        carries our tag for that id.  Returns the deleted links."""
        host = host_veth_name(endpoint_id)
        try:
            if self.nl.get_link(host).alias != self._tag(endpoint_id):
                return []
        except errors.NotFound:
            return []
        self.nl.delete_link(host, missing_ok=True)
        return [host]

    # ======================================================= delete network
    def delete_network(self, net: Network) -> None:
        st = self._state(net)
        name = st["bridge"]
        if st.get("created"):
            self.nl.delete_link(name, missing_ok=True)
            return
        # someone else's bridge: take back only the addresses pynet put on it
        if self.nl.link_exists(name):
            for d in net.ipv4 + net.ipv6:
                if d.gateway:
                    self.nl.remove_address(name, self._gateway_cidr(d), missing_ok=True)

    # ============================================================== restore
    def restore(self, networks: list[Network], endpoints: list[Endpoint], keep=()) -> Remember:
        """Make the kernel match the store: (a) recreate missing bridges with
        their addresses, re-enslave surviving host veths, recreate the pair of
        endpoints not yet joined; (b) remove bridges and veths tagged for THIS
        instance that match nothing stored.  Other instances' links stay, and
        so do those of ``keep`` (endpoint IDs of attachments in flight).
        Returns what changed in the records (a recreated pair's names and MAC)."""
        remember = Remember()
        nets = {n.id: n for n in networks}
        known = set(nets) | {e.id for e in endpoints} | set(keep)
        # (b) first, so a stale bridge of a deleted network cannot be mistaken
        for link in self.nl.list_links(alias_prefix=f"{self.alias_prefix}:{self.instance}:"):
            owner = self._owner(link.alias)
            if owner and owner[0] == self.instance and owner[1] not in known \
                    and link.kind in ("bridge", "veth"):
                log.info("restore: removing orphan %s %s", link.kind, link.name)
                self.nl.delete_link(link.name, missing_ok=True)
        # (a) networks
        for net in networks:
            st = self._state(net)
            try:
                if not self.nl.link_exists(st["bridge"]):
                    log.info("restore: recreating bridge %s of network %s", st["bridge"], net.id[:12])
                self._setup_bridge(net, st, tag=bool(st.get("created")))
            except errors.PynetError as e:
                log.error("restore: network %s: %s", net.id[:12], e)
        # (a) endpoints
        for ep in endpoints:
            net = nets.get(ep.network_id)
            if net is None:
                continue
            st = self._state(net)
            host, cont = self._veths(ep)
            try:
                if self.nl.link_exists(host):
                    link = self.nl.get_link(host)
                    if link.master != st["bridge"]:
                        self.nl.set_master(host, st["bridge"])
                        self.nl.set_hairpin(host, True)
                    if link.state != "up":
                        self.nl.set_up(host)
                elif not ep.sandbox_key:
                    log.info("restore: recreating veth pair of endpoint %s", ep.id[:12])
                    # a new record, handed back: the stored one is not changed here
                    new = dataclasses.replace(
                        ep, driver_state=dict(ep.driver_state, host_veth=host, container_veth=cont,
                                              bridge=st["bridge"]),
                        mac=ep.mac or (mac_from_ipv4(ep.address) if ep.address else random_mac()))
                    with contextlib.ExitStack() as undo:
                        self._create_veth(st, new, undo)
                        undo.pop_all()
                    if (new.driver_state, new.mac) != (ep.driver_state, ep.mac):
                        remember.endpoint(ep, driver_state=new.driver_state, mac=new.mac)
                else:
                    log.info("restore: endpoint %s is joined but its veth is gone", ep.id[:12])
            except errors.PynetError as e:
                log.error("restore: endpoint %s: %s", ep.id[:12], e)
        return remember

    # ============================================================ oper info
    def oper_info(self, net: Network, ep: Endpoint) -> dict:
        host, cont = self._veths(ep)
        return {"bridge": self._state(net)["bridge"], "host_veth": host, "container_veth": cont,
                "mac": ep.mac}

    # ============================================================= firewall
    def firewall_network(self, net: Network):
        return firewall_network(net)

    def firewall_endpoint(self, net: Network, ep: Endpoint):
        return firewall_endpoint(net, ep)

    def firewall_affects(self, net: Network, ep: Endpoint) -> bool:
        return firewall_affects(net, ep)

    @classmethod
    def check_published_address(cls, host_ip: str) -> bool:
        """One of this host's addresses (the CNI door's check, before the
        network exists; program_external_connectivity checks again)."""
        return host_address_is_local(host_ip)

    # ================================================================= CNI
    # The conflist keys of a ``pynet-bridge`` entry (the reference bridge
    # plugin's names): bridge, isGateway, isDefaultGateway, ipMasq, hairpinMode
    # (accepted: the port mapping DNAT covers hairpin traffic), macspoofchk.
    @classmethod
    def cni_netconf(cls, conf: dict) -> CniNetConf:
        bridge = _cni_ifname(conf, "bridge", "bridge name")
        is_default_gateway = bool(_cni_bool(conf, "isDefaultGateway", False))
        is_gateway = bool(_cni_bool(conf, "isGateway", False)) or is_default_gateway
        ip_masq = _cni_bool(conf, "ipMasq", None)
        _cni_bool(conf, "hairpinMode", False)
        spoof_check = _cni_bool(conf, "macspoofchk", None)
        o = {OPT_MASQ: "true" if ip_masq else "false"}
        if bridge:
            o[OPT_NAME] = bridge
        if spoof_check is not None:
            o[OPT_SPOOF_CHECK] = "true" if spoof_check else "false"
        return CniNetConf(options=o, is_gateway=is_gateway, is_default_gateway=is_default_gateway,
                          settings={"bridge": bridge, "ip_masq": ip_masq, "is_gateway": is_gateway})

    @classmethod
    def cni_compare(cls, settings: dict, net: Network) -> list[str]:
        diffs = []
        st = net.driver_state or {}
        want = settings.get("bridge")
        if want and st.get("bridge") and st["bridge"] != want:
            diffs.append(f"bridge {st['bridge']} (conflist: {want})")
        if settings.get("is_gateway") and net.ipv4 and not net.ipv4[0].gateway:
            diffs.append("no gateway on the bridge (conflist: isGateway)")
        masq = settings.get("ip_masq")
        if masq is not None and bool(st.get("enable_ip_masquerade", True)) != masq:
            diffs.append(f"ipMasq {str(bool(st.get('enable_ip_masquerade', True))).lower()} "
                         f"(conflist: {str(masq).lower()})")
        return diffs

    @classmethod
    def cni_example(cls) -> dict:
        return {"name": "pynet-cni", "plugin": {
            "bridge": "pynet-cni0", "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
            "hairpinMode": True,
            "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": "10.88.0.0/16"}]]},
            "capabilities": {"portMappings": True, "ips": True, "mac": True}}}

    @classmethod
    def cni_from_options(cls, options: dict) -> dict:
        out = {"ipMasq": str(options.get(OPT_MASQ, "true")).lower() == "true"}
        if options.get(OPT_NAME):
            out["bridge"] = options[OPT_NAME]
        return out

    @classmethod
    def cni_defaults(cls) -> dict:
        return {"isGateway": True, "isDefaultGateway": True, "ipMasq": True}

    def host_interfaces(self, net: Network, ep: Endpoint) -> list[str]:
        st = ep.driver_state or {}
        return [n for n in (st.get("bridge"), st.get("host_veth")) if n]

    def check_endpoint(self, net: Network, ep: Endpoint, host_netlink) -> list[str]:
        st = ep.driver_state or {}
        if not st.get("host_veth"):
            return []
        if not host_netlink.link_exists(st["host_veth"]):
            return [f"host interface {st['host_veth']} is missing"]
        if st.get("bridge") and host_netlink.get_link(st["host_veth"]).master != st["bridge"]:
            return [f"host interface {st['host_veth']} is not on bridge {st['bridge']}"]
        return []

    def orphan_links(self, net: Network, links, known: set) -> list:
        bridge = (net.driver_state or {}).get("bridge")
        return [link for link, oid in links
                if link.kind == "veth" and oid not in known and bridge and link.master == bridge]
