"""The CNI verbs -> the CNM core (in-process; the daemon runs the same code).

``VERBS`` (verb -> ``cmd_*(ctx, plugin, conf, args)``) is the interface;
``pynet.cni.dispatch.run`` picks it for an invocation (in-process or in the
daemon's ``POST /Pynet.CNI`` route) and answers errors in CNI terms.  The
``Ctx`` builds its controller through the composition root (``pynet.root``).

Plugins: ``bridge`` (driver ``bridge``), ``macvlan`` (driver ``macvlan``,
when the core has it) and ``ipam`` (``pynet.cni.ipam_plugin``).

The conflist keys pynet understands (a plugin entry of type ``pynet-bridge``)::

    name                 the pynet network (created on first ADD, kept after the last DEL)
    bridge               bridge name (default pn-<hash of the network id>)
    isGateway            the bridge gets the gateway address, results name it  (default false)
    isDefaultGateway     + a default route via it in the container; implies isGateway
    ipMasq               masquerade traffic leaving the subnet            (default false)
    mtu                  MTU of bridge and veths
    hairpinMode          accepted (the port mapping DNAT covers hairpin traffic)
    macspoofchk          pynet's spoof check (only the endpoint's MAC/IP may leave)
    ipam                 {"type": "pynet-ipam" | omitted, "ranges": [[{"subnet", "gateway"?}], ...],
                          "subnet"?, "gateway"?, "routes": [{"dst", "gw"?}]}  -- dual stack:
                          one range set per family; no subnet: a default pool like Docker's
    dns                  passed through to the result
    capabilities         portMappings, ips, mac (runtimeConfig keys matched case-insensitively;
                          CNI_ARGS IP= and MAC= work too)
    pynet                {"stateDir", "socket", "chainPrefix", "instance", "daemon"}
    macvlan: master, mode (bridge|private|vepa|passthru)

Nothing here imports Flask, scapy or an etcd client.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from pynet import drivers as registry
from pynet import errors, validate
from pynet.cni import spec
from pynet.cni.spec import CniError
from pynet.cnm import networks
from pynet.cnm.driver import CniNetConf
from pynet.cnm.networks import Range

log = logging.getLogger("pynet.cni")

LOCAL_DEFAULT = "LocalDefault"
GATEWAY_OPTS = {"RequestAddressType": "com.docker.network.gateway"}
LABEL_CONFLIST = "pynet.cni.network"
DRIVER_OF = registry.REGISTRY  # plugin ``pynet-<name>`` runs driver <name> (pynet.drivers)
DOCKER_SOCKET = "/var/run/docker.sock"


# ============================================================ context
class Ctx:
    """Where one invocation works: the Config, the Controller and the host
    Netlink -- built lazily in-process, or handed in by the daemon."""

    def __init__(self, settings: dict, controller=None, netlink=None, instance: str = ""):
        self.settings = settings
        self._controller = controller
        self._netlink = netlink
        self.instance = instance or settings.get("instance") or "pynet"
        self.state_dir = settings["state_dir"]

    ipam_only = False  # pynet-ipam needs the store and the IPAM, no kernel

    @property
    def controller(self):
        if self._controller is None:
            self._controller = (build_ipam_controller(self.settings) if self.ipam_only
                                else build_controller(self.settings))
        return self._controller

    @property
    def netlink(self):
        if self._netlink is None:
            from pynet.cni.netns import FdNetnsNetlink
            self._netlink = FdNetnsNetlink()
        return self._netlink

    def lock(self, what: str = "cni"):
        from pynet.root import state_lock

        return state_lock(self.state_dir, what)


def _fast_pyroute2() -> None:
    """Import pyroute2's IPRoute without the package's __init__, which loads
    every module of the library (~100 ms more on each CNI call)."""
    import sys
    if "pyroute2" in sys.modules:
        return
    import importlib.util
    import types
    found = importlib.util.find_spec("pyroute2")
    if found is None or not found.submodule_search_locations:
        return
    pkg = types.ModuleType("pyroute2")
    pkg.__path__ = list(found.submodule_search_locations)
    pkg.__file__ = found.origin
    pkg.__spec__ = found
    sys.modules["pyroute2"] = pkg
    try:
        from pyroute2.iproute.linux import IPRoute
        pkg.IPRoute = IPRoute
    except Exception:  # noqa: BLE001 -- fall back to the full package
        del sys.modules["pyroute2"]


def _config(settings: dict):
    """The invocation's settings (``pynet.cni.settings``) as the root's Config."""
    from pynet.config import Config

    return Config.from_env(state_dir=settings["state_dir"], plugin_name=settings.get("instance"),
                           chain_prefix=settings.get("chain_prefix"),
                           firewall_backend=settings.get("firewall_backend"),
                           iptables_backend=settings.get("iptables_backend"), **settings.get("cluster", {}))


def build_ipam_controller(settings: dict):
    """What pynet-ipam needs in-process: the store and the IPAM (the root's
    IPAM-only wiring: no drivers, no firewall, no pyroute2)."""
    from pynet import root

    return root.build_ipam_controller(_config(settings))


def build_controller(settings: dict):
    """The daemon's implementations, built by the composition root (firewall
    syncs serialised across processes), after the lean pyroute2 import."""
    _fast_pyroute2()
    from pynet import root

    return root.build_controller(_config(settings))


# ================================================================== config
@dataclass
class NetConf:
    """An interface plugin's entry: the keys every pynet plugin reads, and
    what its driver read from the others (``driver_conf``, the driver's
    ``cni_netconf``)."""
    name: str
    version: str
    driver: str
    is_gateway: bool = False
    is_default_gateway: bool = False
    mtu: Optional[int] = None
    ranges: dict = field(default_factory=dict)       # {4: Range, 6: Range}
    routes: list = field(default_factory=list)
    dns: dict = field(default_factory=dict)
    driver_conf: CniNetConf = field(default_factory=CniNetConf)


@contextlib.contextmanager
def config_value():
    """A value of the conflist refused by ``pynet.validate``: CNI code 7
    (invalid configuration), the validator's line as the message."""
    try:
        yield
    except errors.InvalidParameter as e:
        raise CniError(spec.INVALID_CONFIG, str(e)) from None


def _absent(v) -> bool:
    """JSON ``null``, a missing key or ``""``: the field is not given.  Any
    other falsy value (``0``, ``false``, ``[]``) is a value of the wrong type,
    refused by the field's check -- not read as "absent" (Go's decoder, which
    the reference plugins use, refuses it too)."""
    return v is None or v == ""


def parse_ranges(ipam: dict) -> dict:
    """``ranges`` (one range set per family) or the older ``subnet``/``gateway``."""
    if not isinstance(ipam, dict):
        raise CniError(spec.INVALID_CONFIG, "ipam must be an object")
    sets = ipam.get("ranges")
    if sets is None and not _absent(ipam.get("subnet")):
        sets = [[{"subnet": ipam["subnet"], "gateway": ipam.get("gateway")}]]
    if sets is None:
        sets = []
    if not isinstance(sets, list):
        raise CniError(spec.INVALID_CONFIG, f"ipam.ranges must be a list of range sets, "
                                            f"not {validate.shown(sets)}")
    out: dict[int, Range] = {}
    for rs in sets:
        if not isinstance(rs, list) or not rs:
            raise CniError(spec.INVALID_CONFIG, "ipam.ranges must be a list of non-empty lists")
        if len(rs) > 1:
            raise CniError(spec.UNSUPPORTED_FIELD, "pynet takes one range per range set "
                                                   "(one subnet per address family)")
        r = rs[0]
        if not isinstance(r, dict):
            raise CniError(spec.INVALID_CONFIG, "an ipam range must be an object")
        for k in ("rangeStart", "rangeEnd"):
            if not _absent(r.get(k)):
                raise CniError(spec.UNSUPPORTED_FIELD, f"ipam range {k} is not supported by pynet "
                                                       "(the whole subnet is allocated from)")
        with config_value():
            net = validate.ip_network(r.get("subnet"), "ipam subnet")
        gw = r.get("gateway")
        if _absent(gw):
            gw = ""
        else:
            with config_value():
                g = validate.ip_address(gw, "ipam gateway", version=net.version)
            if g not in net:
                raise CniError(spec.INVALID_CONFIG, f"gateway {g} is outside subnet {net}")
            if net.num_addresses > 2 and (g == net.network_address or (
                    net.version == 4 and g == net.broadcast_address)):
                # as the IPAM's pool geometry: no network (or subnet-router anycast) and
                # no broadcast address, except on /31, /32, /127 and /128
                raise CniError(spec.INVALID_CONFIG, f"gateway {g} is not a host address of subnet {net}")
            gw = str(g)
        if net.version in out:
            raise CniError(spec.UNSUPPORTED_FIELD, f"more than one IPv{net.version} range set")
        out[net.version] = Range(str(net), gw)
    return out


def parse_routes(routes, ranges: Optional[dict] = None) -> list:
    """``ipam.routes``: ``[{"dst": CIDR, "gw"?: address}]``, normalised (the
    kernel refuses a dst with host bits).  A gateway must be on-link -- in the
    subnet of its family, when ``ranges`` (from ``parse_ranges``) names one --
    or the kernel refuses the route after the interface is set up
    (``check_route_gateways`` checks it against a default pool's subnet)."""
    if routes is None:
        return []
    if not isinstance(routes, list):
        raise CniError(spec.INVALID_CONFIG, f"ipam.routes must be a list, not {validate.shown(routes)}")
    out = []
    for r in routes:
        if not isinstance(r, dict) or _absent(r.get("dst")):
            raise CniError(spec.INVALID_CONFIG, f"invalid route {validate.shown(r)}: needs dst")
        with config_value():
            dst = validate.ip_network(r["dst"], "route dst")
            gw = None if _absent(r.get("gw")) else validate.ip_address(r["gw"], "route gw", version=dst.version)
        route = {"dst": str(dst)}
        if gw is not None:
            if gw.is_unspecified or gw.is_multicast or (gw.version == 4 and gw == ipaddress.IPv4Address(
                    "255.255.255.255")):
                raise CniError(spec.INVALID_CONFIG, f"route {dst} via {gw}: not a gateway address")
            rng = (ranges or {}).get(gw.version)
            if rng is not None and gw not in ipaddress.ip_network(rng.subnet):
                raise CniError(spec.INVALID_CONFIG, f"route {dst} via {gw}: the gateway is not in "
                                                    f"subnet {rng.subnet}")
            route["gw"] = str(gw)
        if route in out:
            raise CniError(spec.INVALID_CONFIG, f"route {dst} is given twice")
        out.append(route)
    return out


def network_subnets(net) -> dict:
    """{4: subnet, 6: subnet} of a pynet network (its first pool per family)."""
    out = {}
    for fam, datas in ((4, net.ipv4), (6, net.ipv6)):
        if datas:
            out[fam] = str(ipaddress.ip_network(datas[0].pool, strict=False))
    return out


def check_route_gateways(routes: list, subnets: dict, name: str) -> None:
    """Each route's gateway inside the network's subnet of its family
    (``subnets``: {4: "10.1.0.0/24", 6: ...}); code 7 otherwise."""
    for r in routes:
        if not r.get("gw"):
            continue
        gw = ipaddress.ip_address(r["gw"])
        sub = subnets.get(gw.version)
        if sub is None or gw not in ipaddress.ip_network(sub, strict=False):
            raise CniError(spec.INVALID_CONFIG, f"route {r['dst']} via {gw}: the gateway is not in "
                                                f"{'subnet ' + str(sub) if sub else f'an IPv{gw.version} subnet'} "
                                                f"of network {name}")


_DNS_LISTS = ("nameservers", "search", "options")


def parse_dns(dns, where: str = "dns") -> dict:
    """A ``dns`` object (passed through to the result): its fields' types as the spec gives them."""
    if dns is None:
        return {}
    if not isinstance(dns, dict):
        raise CniError(spec.INVALID_CONFIG, f"{where} must be an object")
    d = dns.get("domain")
    if d is not None and not isinstance(d, str):
        raise CniError(spec.INVALID_CONFIG, f"{where}.domain must be a string")
    for k in _DNS_LISTS:
        v = dns.get(k)
        if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) for x in v)):
            raise CniError(spec.INVALID_CONFIG, f"{where}.{k} must be a list of strings")
    return dict(dns)


def ipam_section(conf: dict) -> dict:
    ipam = conf.get("ipam")
    if ipam is None:
        return {}
    if not isinstance(ipam, dict):
        raise CniError(spec.INVALID_CONFIG, "ipam must be an object")
    t = ipam.get("type", "")
    if t not in ("", "pynet", "pynet-ipam"):
        raise CniError(spec.UNSUPPORTED_FIELD,
                       f"ipam type {validate.shown(t)}: pynet's interface plugins allocate from pynet's IPAM "
                       f"(type pynet-ipam); use pynet-ipam with other interface plugins")
    return ipam


def driver_type(plugin: str):
    """The driver class of an interface plugin (``pynet-<name>``: driver
    <name>), from the registry: its CNI hooks read a conflist before any
    store or kernel is touched."""
    try:
        return registry.driver_class(plugin)
    except KeyError:
        raise CniError(spec.INTERNAL, f"unknown pynet plugin {plugin!r}") from None


def parse_netconf(plugin: str, conf: dict) -> NetConf:
    """The interface plugin's network configuration, every field checked by
    type and by value before anything is looked up or created (code 7, or 2
    for what pynet does not support).  The keys of one driver only are read
    by the driver (``cni_netconf``)."""
    ipam = ipam_section(conf)
    nc = NetConf(name=conf["name"], version=conf["cniVersion"], driver=plugin)
    with config_value():
        nc.driver_conf = driver_type(plugin).cni_netconf(conf)
    nc.is_gateway, nc.is_default_gateway = nc.driver_conf.is_gateway, nc.driver_conf.is_default_gateway
    if conf.get("mtu") not in (None, 0) or isinstance(conf.get("mtu"), bool):
        with config_value():
            nc.mtu = validate.mtu(conf["mtu"])
    nc.ranges = parse_ranges(ipam)
    nc.routes = parse_routes(ipam.get("routes"), nc.ranges)
    nc.dns = parse_dns(conf.get("dns"))
    return nc


def network_request(nc: NetConf) -> networks.NetworkRequest:
    """The conflist's network, in the core's words."""
    return networks.NetworkRequest(name=nc.name, driver=nc.driver, ranges=dict(nc.ranges),
                                   is_gateway=nc.is_gateway, mtu=nc.mtu,
                                   options=dict(nc.driver_conf.options),
                                   settings=dict(nc.driver_conf.settings),
                                   labels={LABEL_CONFLIST: nc.name}, created_by="cni")


# ======================================================== network identity
# Finding, comparing and creating a network is the core's (pynet.cnm.networks);
# what stays here is the Docker client that tells a Docker-made network's name.
network_id_for = networks.network_id_for


def find_network(c, name: str, ask_docker: bool = False, txn=None):
    """The pynet network named ``name``: a CNI-made one, or a Docker-made one
    whose Docker name is ``name`` (Docker never tells a plugin the name, so
    dockerd is asked once and the name recorded)."""
    return networks.find_network(c, name, runtime_ids=docker_network_ids if ask_docker else None,
                                 txn=txn)


def docker_network_ids(name: str, sock: str = DOCKER_SOCKET, timeout: float = 2.0) -> list[str]:
    """IDs of Docker networks named exactly ``name``, from dockerd's API (best effort)."""
    import socket
    from urllib.parse import quote

    if not os.path.exists(sock):
        return []
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sock)
        q = quote(json.dumps({"name": {name: True}}))
        s.sendall(f"GET /networks?filters={q} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        return []
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        from pynet.cni.shim import _dechunk
        body = _dechunk(body)
    try:
        nets = json.loads(body or b"[]")
    except ValueError:
        return []
    return [n.get("Id") for n in nets if isinstance(n, dict) and n.get("Name") == name]


def compare(c, nc: NetConf, net) -> list[str]:
    """How an existing network differs from what the conflist asks for."""
    return networks.compare(c, network_request(nc), net)


def ensure_network(ctx: Ctx, nc: NetConf):
    """The network the conflist names: found (settings must agree) or created."""
    return networks.ensure_network(ctx.controller, network_request(nc),
                                   lock=lambda: ctx.lock("network"), runtime_ids=docker_network_ids)


def create_network(c, nc: NetConf):
    return networks.create_network(c, network_request(nc))


# ============================================================ runtime config
def requested_addresses(conf: dict, args: spec.Args) -> dict:
    ips = spec.capability(conf, "ips")
    if ips is None and args.args.get("IP"):
        ips = args.args["IP"].split(",")
    if ips is None:
        return {}
    if not isinstance(ips, list):
        raise CniError(spec.INVALID_CONFIG, f"runtimeConfig.ips must be a list, not {validate.shown(ips)}")
    out = {}
    for ip in ips:
        with config_value():
            a = validate.ip_address(ip, "requested address", allow_prefix=True)
        if a.version in out:
            raise CniError(spec.INVALID_CONFIG, f"more than one IPv{a.version} address requested")
        out[a.version] = str(a)
    return out


def requested_mac(conf: dict, args: spec.Args) -> str:
    mac = spec.capability(conf, "mac")
    if _absent(mac):
        mac = args.args.get("MAC")
    if _absent(mac):
        return ""
    with config_value():
        return validate.mac(mac, "requested MAC address")


def port_mappings(conf: dict, driver=None) -> list:
    """``runtimeConfig.portMappings``, every field checked -- a host address
    also for being usable by the plugin's ``driver`` (the bridge: one of this
    host's, the check it makes when it publishes), so a bad one is refused
    here, before the network exists."""
    from pynet.cnm.model import PortMapping

    pms = spec.capability(conf, "portMappings")
    if pms is None:
        return []
    if not isinstance(pms, list):
        raise CniError(spec.INVALID_CONFIG, "runtimeConfig.portMappings must be a list")
    out = []
    for pm in pms:
        if not isinstance(pm, dict):
            raise CniError(spec.INVALID_CONFIG, f"invalid port mapping {validate.shown(pm)}")
        hp = spec.ci_get(pm, "hostPort")
        cp = spec.ci_get(pm, "containerPort")
        with config_value():
            hp = validate.port(0 if hp is None else hp, "portMappings hostPort", allow_zero=True)
            cp = validate.port(cp, "portMappings containerPort")
        proto = spec.ci_get(pm, "protocol")
        if _absent(proto):
            proto = "tcp"
        if not isinstance(proto, str) or proto.lower() not in ("tcp", "udp", "sctp"):
            raise CniError(spec.INVALID_CONFIG,
                           f"unsupported protocol {validate.shown(proto)} in port mapping")
        proto = proto.lower()
        host_ip = spec.ci_get(pm, "hostIP")
        if _absent(host_ip):
            host_ip = ""
        else:
            # it becomes an iptables token: no zone text, nothing but an address
            with config_value():
                host_ip = str(validate.ip_address(host_ip, "portMappings hostIP"))
            # refused before the network is ensured, so a refused ADD creates nothing;
            # the driver checks the same again when the mapping is programmed
            if driver is not None and not driver.check_published_address(host_ip):
                raise CniError(spec.INVALID_CONFIG, f"portMappings hostIP {host_ip} is not an address "
                                                    "of this host")
        m = PortMapping(proto=proto, container_port=cp, host_port=hp, host_ip=host_ip)
        if m in out:
            raise CniError(spec.INVALID_CONFIG, f"port mapping {hp}/{proto} -> {cp} is given twice")
        out.append(m)
    return out


# ================================================================ prevResult
_PREV_STR_LISTS = ("nameservers", "search", "options")


def prev_result(conf: dict) -> dict:
    """The conflist's ``prevResult``, checked field by field before anything is
    done (code 7 naming the field), then normalised (``spec.from_any``): its
    entries are copied into our ADD result and read by CHECK, so a malformed
    one used to fail only after the ADD had attached (code 999)."""
    raw = conf.get("prevResult")
    if isinstance(raw, dict) and "ip4" not in raw and "ip6" not in raw:
        _check_prev(raw)
    return spec.from_any(raw)


def _bad_prev(where: str, what: str):
    return CniError(spec.INVALID_CONFIG, f"prevResult.{where} {what}")


def _list_of_dicts(raw: dict, key: str) -> list:
    v = raw.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise _bad_prev(key, "must be a list")
    for i, item in enumerate(v):
        if not isinstance(item, dict):
            raise _bad_prev(f"{key}[{i}]", "must be an object")
    return v


def _opt_str(d: dict, key: str, where: str) -> str:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise _bad_prev(f"{where}.{key}", "must be a string")
    return v or ""


def _check_prev(raw: dict) -> None:
    ifaces = _list_of_dicts(raw, "interfaces")
    for i, f in enumerate(ifaces):
        for k in ("name", "mac", "sandbox", "socketPath", "pciID"):
            _opt_str(f, k, f"interfaces[{i}]")
        mtu = f.get("mtu")
        if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int) or not 0 <= mtu <= 65535):
            raise _bad_prev(f"interfaces[{i}].mtu", "must be a number 0..65535")
    for i, ip in enumerate(_list_of_dicts(raw, "ips")):
        where = f"ips[{i}]"
        address = _opt_str(ip, "address", where)
        if not address:
            raise _bad_prev(f"{where}.address", "is required")
        for k, parse in (("address", ipaddress.ip_interface), ("gateway", ipaddress.ip_address)):
            v = _opt_str(ip, k, where)
            if not v:
                continue
            try:
                if "%" in v:
                    raise ValueError
                parse(v)
            except ValueError:
                raise _bad_prev(f"{where}.{k}", f"{v!a} is not an IP address") from None
        _opt_str(ip, "version", where)
        idx = ip.get("interface")
        if idx is not None and (isinstance(idx, bool) or not isinstance(idx, int)
                                or not 0 <= idx < len(ifaces)):
            raise _bad_prev(f"{where}.interface", f"must index interfaces (0..{len(ifaces) - 1})")
    for i, r in enumerate(_list_of_dicts(raw, "routes")):
        where = f"routes[{i}]"
        for k in ("dst", "gw"):
            v = _opt_str(r, k, where)
            try:
                if "%" in v:
                    raise ValueError
                if k == "dst":
                    ipaddress.ip_network(v, strict=False)
                elif v:
                    ipaddress.ip_address(v)
            except ValueError:
                raise _bad_prev(f"{where}.{k}", f"{v!a} is not an IP {'network' if k == 'dst' else 'address'}") from None
    dns = raw.get("dns")
    if dns is not None:
        if not isinstance(dns, dict):
            raise _bad_prev("dns", "must be an object")
        _opt_str(dns, "domain", "dns")
        for k in _PREV_STR_LISTS:
            v = dns.get(k)
            if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) for x in v)):
                raise _bad_prev(f"dns.{k}", "must be a list of strings")


# ================================================================== verbs
def _merge(prev: dict, ours: dict) -> dict:
    """Our result appended to the prevResult (chained plugins)."""
    base = len(prev["interfaces"])
    for ip in ours["ips"]:
        if "interface" in ip:
            ip["interface"] += base
    return {"interfaces": prev["interfaces"] + ours["interfaces"],
            "ips": prev["ips"] + ours["ips"],
            "routes": prev["routes"] + [r for r in ours["routes"] if r not in prev["routes"]],
            "dns": ours["dns"] or prev["dns"]}


def cmd_add(ctx: Ctx, plugin: str, conf: dict, args: spec.Args) -> dict:
    from pynet.cnm import attach

    nc = parse_netconf(plugin, conf)
    prev = prev_result(conf)
    addrs = requested_addresses(conf, args)
    mac = requested_mac(conf, args)
    ports = port_mappings(conf, driver_type(plugin))
    if not os.path.exists(args.netns):
        raise CniError(spec.UNKNOWN_CONTAINER, f"network namespace {args.netns} does not exist")
    c = ctx.controller
    existed = find_network(c, nc.name) is not None
    net = ensure_network(ctx, nc)
    try:
        # the subnets are known now also when the conflist gave none (a default pool)
        check_route_gateways(nc.routes, network_subnets(net), nc.name)
        old = attach.find(c, net, args.container_id, args.ifname)
        if old is not None:
            # An ADD of this attachment ran before and no DEL followed: the runtime retries
            # an ADD that failed or was killed (its endpoint record written, the veth made or
            # moved into the pod, its ports not yet programmed: which step it reached is not
            # recorded).  It is redone from nothing -- the same steps a DEL takes, then the
            # attach -- so the retry's answer is a whole attachment, never EndpointExists.
            log.info("CNI ADD container_id=%s ifname=%s: an earlier ADD left endpoint %s; redoing it",
                     args.container_id[:12], args.ifname, old.id[:12])
            attach.detach_endpoint(c, net, old, netlink=ctx.netlink)  # in the netns its join recorded
        # No lock around the host-port choice: the controller reserves host ports
        # in the store transaction that records the endpoint.
        a = attach.attach(c, net, args.container_id, args.ifname, args.netns, addresses=addrs,
                          mac=mac, ports=ports, default_route=nc.is_default_gateway,
                          routes=nc.routes, netlink=ctx.netlink)
    except BaseException:
        if not existed:
            _forget_new_network(ctx, net)
        raise
    return _render_add(ctx, nc, a, args, prev)


def _forget_new_network(ctx: Ctx, net) -> None:
    """A refused first ADD leaves nothing: the network it created goes again
    (kernel, record, pool) -- unless another ADD attached to it meanwhile."""
    c = ctx.controller
    if net.created_by != "cni":
        return
    try:
        with ctx.lock("network"):
            if not c.endpoints(net.id):
                c.delete_network(net.id)
    except Exception as e:  # noqa: BLE001 -- the ADD's own error is the answer
        log.warning("network %s made by a refused ADD is kept: %s", net.name, e)


def _render_add(ctx: Ctx, nc: NetConf, a, args: spec.Args, prev: dict) -> dict:
    ep, net = a.endpoint, a.network
    ifaces = []
    for name in ctx.controller.driver(net.driver).host_interfaces(net, ep):
        if name:
            try:
                ifaces.append({"name": name, "mac": ctx.netlink.link_mac(name)})
            except errors.NotFound:
                ifaces.append({"name": name})
    link = a.link
    ifaces.append({"name": args.ifname, "mac": getattr(link, "mac", "") or ep.mac,
                   "mtu": getattr(link, "mtu", None), "sandbox": args.netns})
    idx = len(ifaces) - 1
    ips = []
    # the gateways the join gave (none on an isolated macvlan parent), not the
    # network's: a result must not name a gateway the sandbox has no route to
    for addr, gw in ((ep.address, a.join.gateway), (ep.address_v6, a.join.gateway_v6)):
        if addr:
            ips.append({"address": addr, "gateway": (gw or "") if nc.is_gateway else "", "interface": idx})
    routes = [{"dst": d, "gw": g} for d, g in a.routes]
    ours = {"interfaces": ifaces, "ips": ips, "routes": routes, "dns": dict(nc.dns)}
    return _merge(prev, ours)


def cmd_del(ctx: Ctx, plugin: str, conf: dict, args: spec.Args) -> None:
    from pynet.cnm import attach

    parse_netconf(plugin, conf)
    c = ctx.controller
    net = find_network(c, conf["name"])
    attach.detach(c, net, args.container_id, args.ifname, args.netns, netlink=ctx.netlink)
    return None


def cmd_check(ctx: Ctx, plugin: str, conf: dict, args: spec.Args) -> None:
    from pynet.cnm import attach

    if not spec.at_least(conf["cniVersion"], "0.4.0"):
        raise CniError(spec.INCOMPATIBLE_VERSION, "config version does not allow CHECK")
    nc = parse_netconf(plugin, conf)
    if "prevResult" not in conf:
        raise CniError(spec.INVALID_CONFIG, "CHECK needs the prevResult of the ADD")
    prev = prev_result(conf)
    c = ctx.controller
    net = find_network(c, nc.name)
    if net is None:
        raise CniError(spec.UNKNOWN_CONTAINER, f"network {nc.name} does not exist")
    diffs = compare(c, nc, net)
    if diffs:
        raise CniError(spec.INVALID_CONFIG, f"network {nc.name} differs from the conflist: " + "; ".join(diffs))
    mine = [i for i, f in enumerate(prev["interfaces"])
            if f.get("name") == args.ifname and f.get("sandbox")]
    expect = [ip["address"] for ip in prev["ips"] if ip.get("interface") in mine]
    attach.check(c, net, args.container_id, args.ifname, args.netns,
                 default_route=nc.is_default_gateway, routes=nc.routes, expect_ips=expect,
                 netlink=ctx.netlink)
    return None


def valid_attachments(conf: dict) -> set:
    va = conf.get("cni.dev/valid-attachments")
    if va is None:
        va = conf.get("cni.dev/attachments")
    if va is None:
        raise CniError(spec.INVALID_CONFIG, "GC needs cni.dev/valid-attachments")
    if not isinstance(va, list):
        raise CniError(spec.INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
    out = set()
    for a in va:
        if not isinstance(a, dict) or not isinstance(a.get("containerID"), str) or not a["containerID"] \
                or not isinstance(a.get("ifname") or "", str):
            raise CniError(spec.INVALID_CONFIG, f"invalid attachment {validate.shown(a)}: "
                                                "needs a containerID string (and an ifname string)")
        out.add((a["containerID"], a.get("ifname") or ""))
    return out


def cmd_gc(ctx: Ctx, plugin: str, conf: dict, args: spec.Args) -> None:
    from pynet.cnm import ipam_records as ipam_plugin  # not the plugin: ipam_plugin imports this module
    from pynet.cnm import attach

    if not spec.at_least(conf["cniVersion"], "1.1.0"):
        raise CniError(spec.INCOMPATIBLE_VERSION, "config version does not allow GC")
    parse_netconf(plugin, conf)
    valid = valid_attachments(conf)
    c = ctx.controller
    net = find_network(c, conf["name"])
    if net is None:
        return None
    with ctx.lock("network"):
        extra = ipam_plugin.held_addresses(c, conf["name"])
        attach.gc(c, net, valid, netlink=ctx.netlink, instance=ctx.instance, extra_held=extra)
    return None


def cmd_status(ctx: Ctx, plugin: str, conf: dict, args: spec.Args) -> None:
    if not spec.at_least(conf["cniVersion"], "1.1.0"):
        raise CniError(spec.INCOMPATIBLE_VERSION, "config version does not allow STATUS")
    parse_netconf(plugin, conf)
    try:
        c = ctx.controller
        net = find_network(c, conf["name"])
    except Exception as e:  # noqa: BLE001
        raise CniError(spec.PLUGIN_NOT_AVAILABLE, f"pynet's store in {ctx.state_dir} is not usable: {e}") from None
    # the driver's own readiness (an overlay: its cluster store answers; a transient
    # failure stays code 11, try again later)
    drv = (getattr(c, "drivers", None) or {}).get(net.driver if net is not None else plugin)
    if drv is not None:
        drv.cni_status(net)
    if net is not None:
        from pynet.cnm.attach import pool_id_of
        for d in net.ipv4 + net.ipv6:
            try:
                p = c.ipam.get_pool(pool_id_of(c, d))
            except errors.PynetError as e:
                raise CniError(spec.PLUGIN_NOT_AVAILABLE, str(e)) from None
            if p["free"] <= 0:
                raise CniError(spec.PLUGIN_NOT_AVAILABLE, f"no free address left in {d.pool}")
    return None


VERBS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}
