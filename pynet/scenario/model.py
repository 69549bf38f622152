"""The scenario format: a topology plus expectations, parsed and validated.

A scenario is one YAML file (documented with examples in ``scenarios/README.md``)::

    name: bridge-reachability
    underlay: {subnet: 10.99.0.0/24}        # the wire between the "machines"
    hosts:                                  # each host: a netns running its own pynet
      h1:
        networks:
          front: {driver: bridge, subnet: 10.10.1.0/24}
        sandboxes:                          # "containers"
          a: {networks: [front]}
          b: {networks: {front: {address: 10.10.1.20}}}
    outside:                                # namespaces on the underlay without pynet
      ext: {}
    # CNI: hosts.h1.cni: {podnet: {subnet: 10.22.0.0/24}}   conflists by network name
    #      hosts.h1.sandboxes.p1: {cni: [podnet]}           attached by executing the plugin
    # overlay: cluster: {store: etcd}        an etcd cluster on the underlay (a member per host)
    #          hosts.*.networks.blue: {driver: overlay, subnet: 10.30.0.0/24}
    #                                        one network across every host that declares it
    expect:
      - reach: {from: a, to: b, proto: icmp}
      - isolated: {from: a, to: ext, proto: tcp, port: 80}

This module is pure data + validation: it imports neither scapy nor pyroute2,
so ``pynet scenario graph`` and the unit tests stay light.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from pynet import drivers as registry
from pynet import errors

DEFAULT_UNDERLAY = "10.99.0.0/24"
# TEST-NET-1 is reserved by the project's safety rules: never used by a scenario.
FORBIDDEN_NETS = [ipaddress.ip_network("192.0.2.0/24")]
SANDBOX_MODES = ("netns", "host", "none", "container")
# the installed interface plugins: pynet-<driver> per registered driver
CNI_PLUGINS = {registry.cni_plugin_name(n): n for n in registry.names()}
CNI_VERSION = "1.0.0"
# conflist keys the runner sets itself (the host's pynet instance)
CNI_RESERVED = ("name", "pynet", "prevResult", "runtimeConfig", "args")
PROTOS = ("icmp", "tcp", "udp")
KINDS = ("reach", "isolated", "arp", "nat", "dnat", "mtu", "spoof", "encap")
DEFAULT_TIMEOUT = 1.5
CLUSTER_STORES = ("etcd",)
OVERLAY = "overlay"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,9}$")


class ScenarioError(errors.InvalidParameter):
    """The scenario file is not valid; the message names file and place."""


@dataclass
class NetSpec:
    name: str
    host: str
    driver: str = "bridge"
    subnet: str = ""             # "" = pynet's IPAM picks a default pool
    gateway: str = ""            # bare address; "" = IPAM's first address
    subnet_v6: str = ""
    internal: bool = False
    options: dict = field(default_factory=dict)
    origin: str = "runner"       # runner: created through the Controller; cni: by the first CNI ADD
    cni: Optional[dict] = None   # the conflist's plugin entry, when sandboxes attach by CNI


@dataclass
class Attachment:
    network: str
    address: str = ""            # bare address; "" = from IPAM
    mac: str = ""
    cni: bool = False            # attached by executing the CNI plugin (ADD), not the CNM verbs
    ifname: str = ""             # CNI_IFNAME (CNM attachments: eth<i>)


@dataclass
class PortSpec:
    proto: str
    container_port: int
    host_port: int = 0
    host_ip: str = ""


@dataclass
class SandboxSpec:
    name: str
    host: str
    mode: str = "netns"
    attachments: list[Attachment] = field(default_factory=list)
    container: str = ""          # mode container: whose netns is shared
    publish: list[PortSpec] = field(default_factory=list)


@dataclass
class HostSpec:
    name: str
    address: str = ""            # underlay address (bare)
    networks: dict[str, NetSpec] = field(default_factory=dict)
    sandboxes: dict[str, SandboxSpec] = field(default_factory=dict)
    ip_forward: bool = True      # dockerd's default
    firewall: Any = "auto"       # "auto" | True | False
    spoof_check: Optional[bool] = None   # firewall option, when the firewall supports it
    routes: list[dict] = field(default_factory=list)   # [{to: CIDR, via: host-or-address}]


@dataclass
class OutsideSpec:
    name: str
    address: str = ""
    routes: list[dict] = field(default_factory=list)


@dataclass
class ClusterSpec:
    """The cluster store the runner starts on the underlay (``cluster:``)."""
    backend: str = "etcd"       # the YAML's ``store``
    members: list[str] = field(default_factory=list)   # hosts running a member (default: all)
    lease_ttl: int = 5            # s; each host's liveness lease (short: a scenario is short)


@dataclass
class Expectation:
    index: int
    kind: str
    src: str
    dst: str
    proto: str = "icmp"
    port: int = 0
    params: dict = field(default_factory=dict)
    name: str = ""
    timeout: float = DEFAULT_TIMEOUT

    @property
    def expect_ok(self) -> bool:
        """True when the expectation is that traffic passes / resolves."""
        p = self.params
        if self.kind == "isolated":
            return False
        if self.kind == "mtu":
            return bool(p.get("passes", True))
        if self.kind == "spoof":
            return bool(p.get("delivered", False))
        if self.kind == "arp":
            return bool(p.get("resolves", True))
        if self.kind == "encap":
            return bool(p.get("seen", True))
        if self.kind == "dnat":
            return bool(p.get("delivered", True))
        return True

    @property
    def ident(self) -> str:
        base = self.name or f"{self.index:02d}-{self.kind}-{self.src}-{self.dst}" + (
            f"-{self.proto}{self.port or ''}" if self.kind in ("reach", "isolated") else "")
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", base)

    @property
    def what(self) -> str:
        if self.kind in ("reach", "isolated", "nat", "dnat"):
            return f"{self.proto}/{self.port}" if self.port else self.proto
        if self.kind == "mtu":
            return f"icmp size={self.params.get('size')}{' DF' if self.params.get('df', True) else ''}"
        if self.kind == "spoof":
            forged = [f"ip={self.params['src_ip']}" if self.params.get("src_ip") else "",
                      f"mac={self.params['src_mac']}" if self.params.get("src_mac") else ""]
            return "udp forged " + " ".join(x for x in forged if x)
        if self.kind == "encap":
            what = f"vxlan vni={self.params.get('vni') or self.params.get('network')}"
            return what + (", no inner arp" if self.params.get("inner_arp") is False else "")
        return "arp"

    @property
    def expected_text(self) -> str:
        k, p = self.kind, self.params
        if k == "reach":
            return "reaches"
        if k == "isolated":
            return "blocked"
        if k == "arp":
            return "is-at target MAC" if self.expect_ok else "no answer"
        if k == "nat":
            return f"source {p.get('source', '<host>')}"
        if k == "dnat":
            where = f"{p['reaches']}:{p.get('target_port', self.port)}"
            return f"reaches {where}" if self.expect_ok else f"does not reach {where}"
        if k == "mtu":
            return "passes" if self.expect_ok else "does not pass"
        if k == "spoof":
            return "delivered" if self.expect_ok else "dropped"
        if k == "encap":
            vni = p.get("vni") or f"of {p.get('network')}"
            arp = ", no inner ARP" if p.get("inner_arp") is False else ""
            return f"VXLAN VNI {vni} on underlay{arp}" if self.expect_ok else "no VXLAN"
        return ""


@dataclass
class Scenario:
    name: str
    path: str = ""
    description: str = ""
    underlay_subnet: str = DEFAULT_UNDERLAY
    underlay_mtu: int = 1500
    hosts: dict[str, HostSpec] = field(default_factory=dict)
    outside: dict[str, OutsideSpec] = field(default_factory=dict)
    expectations: list[Expectation] = field(default_factory=list)
    cluster: Optional[ClusterSpec] = None

    # ---- lookups -----------------------------------------------------------------
    def uses_cni(self) -> bool:
        return any(a.cni for s in self.sandboxes().values() for a in s.attachments)

    def sandboxes(self) -> dict[str, SandboxSpec]:
        return {s.name: s for h in self.hosts.values() for s in h.sandboxes.values()}

    def networks(self) -> list[NetSpec]:
        return [n for h in self.hosts.values() for n in h.networks.values()]

    def overlays(self) -> dict[str, list[NetSpec]]:
        """Overlay network name -> its declarations, one per host that joins it."""
        out: dict[str, list[NetSpec]] = {}
        for n in self.networks():
            if n.driver == OVERLAY:
                out.setdefault(n.name, []).append(n)
        return out

    def same_network(self, a: SandboxSpec, b: SandboxSpec, network: str) -> bool:
        """Is ``network`` of sandbox ``a`` the one of ``b``?  On one host by name;
        across hosts only an overlay is one network (two hosts' ``front`` bridges
        are two networks)."""
        if a.host == b.host:
            return True
        return self.hosts[a.host].networks.get(network, NetSpec("", "")).driver == OVERLAY

    def kind_of(self, name: str) -> str:
        if name in self.hosts:
            return "host"
        if name in self.outside:
            return "outside"
        if name.split("@")[0] in self.sandboxes():
            return "sandbox"
        try:
            ipaddress.ip_address(name)
            return "address"
        except ValueError:
            return ""

    def topology_nets(self) -> list:
        """Every subnet the scenario owns (underlay + declared subnets)."""
        out = [ipaddress.ip_network(self.underlay_subnet)]
        for n in self.networks():
            for s in (n.subnet, n.subnet_v6):
                if s:
                    out.append(ipaddress.ip_network(s, strict=False))
        return out

    def needs_firewall(self) -> bool:
        return any(e.kind in ("nat", "dnat", "spoof") for e in self.expectations) or any(
            n.internal or str(n.options.get("com.docker.network.bridge.enable_icc", "true")).lower()
            == "false" for n in self.networks())


# ---------------------------------------------------------------------- parsing
def load(path: str) -> Scenario:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ScenarioError(f"{path}: not valid YAML: {e}") from None
    stem = os.path.splitext(os.path.basename(path))[0]
    return parse(data, path=path, default_name=stem)


def parse(data: Any, path: str = "<scenario>", default_name: str = "scenario") -> Scenario:
    p = _Parser(path)
    return p.scenario(data, default_name)


class _Parser:
    def __init__(self, path: str):
        self.path = path

    def fail(self, where: str, msg: str):
        raise ScenarioError(f"{self.path}: {where}: {msg}")

    def mapping(self, v, where, allowed=None) -> dict:
        if v is None:
            return {}
        if not isinstance(v, dict):
            self.fail(where, f"expected a mapping, got {type(v).__name__}")
        if allowed is not None:
            extra = set(v) - set(allowed)
            if extra:
                self.fail(where, f"unknown key(s) {', '.join(sorted(map(str, extra)))} "
                                 f"(allowed: {', '.join(allowed)})")
        return v

    def name(self, n, where) -> str:
        if not isinstance(n, str) or not _NAME_RE.match(n):
            self.fail(where, f"name {n!r} must match {_NAME_RE.pattern} (it becomes part of "
                             "namespace and interface names)")
        return n

    def cidr(self, v, where) -> str:
        try:
            net = ipaddress.ip_network(str(v), strict=False)
        except ValueError as e:
            self.fail(where, f"invalid subnet {v!r}: {e}")
        for bad in FORBIDDEN_NETS:
            if net.version == bad.version and net.overlaps(bad):
                self.fail(where, f"subnet {net} overlaps {bad}, which scenarios must never use")
        return str(net)

    def addr(self, v, where) -> str:
        try:
            a = ipaddress.ip_address(str(v).split("/")[0])
        except ValueError as e:
            self.fail(where, f"invalid address {v!r}: {e}")
        for bad in FORBIDDEN_NETS:
            if a in bad:
                self.fail(where, f"address {a} is in {bad}, which scenarios must never use")
        return str(a)

    # ---------------------------------------------------------------- top level
    def scenario(self, data, default_name) -> Scenario:
        d = self.mapping(data, "top level",
                         ["name", "description", "underlay", "cluster", "hosts", "outside", "expect"])
        name = d.get("name", default_name)
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_.-]+$", name):
            self.fail("name", f"{name!r} must be letters, digits, '-', '_' or '.'")
        sc = Scenario(name=name, path=self.path, description=str(d.get("description", "")).strip())
        ul = self.mapping(d.get("underlay"), "underlay", ["subnet", "mtu"])
        sc.underlay_subnet = self.cidr(ul.get("subnet", DEFAULT_UNDERLAY), "underlay.subnet")
        if ipaddress.ip_network(sc.underlay_subnet).version != 4:
            self.fail("underlay.subnet", "must be IPv4")
        sc.underlay_mtu = int(ul.get("mtu", 1500))
        hosts = self.mapping(d.get("hosts"), "hosts")
        if not hosts:
            self.fail("hosts", "a scenario needs at least one host")
        seen: dict[str, str] = {}

        def claim(n, where, what):
            if n in seen:
                self.fail(where, f"name {n!r} is already used by {seen[n]}")
            seen[n] = what

        for hname, hdata in hosts.items():
            self.name(hname, f"hosts.{hname}")
            claim(hname, f"hosts.{hname}", "a host")
            sc.hosts[hname] = self.host(hname, hdata)
            for sname in sc.hosts[hname].sandboxes:
                claim(sname, f"hosts.{hname}.sandboxes.{sname}", f"a sandbox on {hname}")
        for oname, odata in self.mapping(d.get("outside"), "outside").items():
            self.name(oname, f"outside.{oname}")
            claim(oname, f"outside.{oname}", "an outside host")
            o = self.mapping(odata, f"outside.{oname}", ["address", "routes"])
            sc.outside[oname] = OutsideSpec(
                name=oname, address=self.addr(o["address"], f"outside.{oname}.address")
                if o.get("address") else "", routes=list(o.get("routes") or []))
        self.underlay_addresses(sc)
        self.check_sandboxes(sc)
        self.check_subnets(sc)
        self.cluster(sc, d.get("cluster"))
        exp = d.get("expect") or []
        if not isinstance(exp, list):
            self.fail("expect", "expected a list")
        for i, e in enumerate(exp):
            sc.expectations.append(self.expectation(sc, i, e))
        idents = [e.ident for e in sc.expectations]
        dup = {x for x in idents if idents.count(x) > 1}
        if dup:
            self.fail("expect", f"duplicate expectation name(s): {', '.join(sorted(dup))}")
        return sc

    def host(self, hname, hdata) -> HostSpec:
        where = f"hosts.{hname}"
        h = self.mapping(hdata, where, ["address", "networks", "cni", "sandboxes", "ip_forward",
                                        "firewall", "spoof_check", "routes"])
        host = HostSpec(name=hname, ip_forward=bool(h.get("ip_forward", True)),
                        firewall=h.get("firewall", "auto"), spoof_check=h.get("spoof_check"),
                        routes=list(h.get("routes") or []))
        if host.firewall not in ("auto", True, False):
            self.fail(f"{where}.firewall", "must be auto, true or false")
        if h.get("address"):
            host.address = self.addr(h["address"], f"{where}.address")
        for nname, ndata in self.mapping(h.get("networks"), f"{where}.networks").items():
            nw = f"{where}.networks.{nname}"
            self.name(nname, nw)
            n = self.mapping(ndata, nw, ["driver", "subnet", "gateway", "subnet_v6", "internal",
                                          "options"])
            spec = NetSpec(name=nname, host=hname, driver=str(n.get("driver", "bridge")),
                           internal=bool(n.get("internal", False)),
                           options={str(k): str(v) if isinstance(v, bool) is False else
                                    str(v).lower() for k, v in self.mapping(
                                        n.get("options"), f"{nw}.options").items()})
            if n.get("subnet"):
                spec.subnet = self.cidr(n["subnet"], f"{nw}.subnet")
            if n.get("subnet_v6"):
                spec.subnet_v6 = self.cidr(n["subnet_v6"], f"{nw}.subnet_v6")
            if n.get("gateway"):
                spec.gateway = self.addr(n["gateway"], f"{nw}.gateway")
                if not spec.subnet or ipaddress.ip_address(spec.gateway) not in \
                        ipaddress.ip_network(spec.subnet):
                    self.fail(f"{nw}.gateway", "needs a subnet that contains it")
            host.networks[nname] = spec
        self.cni_confs(host, h.get("cni"), f"{where}.cni")
        for sname, sdata in self.mapping(h.get("sandboxes"), f"{where}.sandboxes").items():
            sw = f"{where}.sandboxes.{sname}"
            self.name(sname, sw)
            s = self.mapping(sdata, sw, ["mode", "networks", "cni", "container", "publish"])
            sb = SandboxSpec(name=sname, host=hname, mode=str(s.get("mode", "netns")),
                             container=str(s.get("container", "")))
            if sb.mode not in SANDBOX_MODES:
                self.fail(f"{sw}.mode", f"{sb.mode!r} is not one of {', '.join(SANDBOX_MODES)}")
            nets = s.get("networks") or []
            cnis = s.get("cni") or []
            if sb.mode in ("host", "none", "container") and (nets or cnis):
                self.fail(f"{sw}.{'networks' if nets else 'cni'}",
                          f"a sandbox in mode {sb.mode} joins no network itself")
            if nets and cnis:
                self.fail(f"{sw}.cni", "a sandbox is attached either by pynet's CNM verbs "
                                       "(networks) or by executing the CNI plugin (cni), not both")
            if sb.mode == "netns" and not nets and not cnis:
                self.fail(f"{sw}.networks", "a sandbox in mode netns needs at least one network "
                                            "(use mode: none for a sandbox without networks)")
            if sb.mode == "container" and not sb.container:
                self.fail(f"{sw}.container", "mode container needs the sandbox to share")
            if isinstance(nets, list):
                nets = {n: {} for n in nets}
            for nname, adata in self.mapping(nets, f"{sw}.networks").items():
                a = self.mapping(adata, f"{sw}.networks.{nname}", ["address", "mac"])
                if nname not in host.networks:
                    self.fail(f"{sw}.networks", f"no network {nname!r} on host {hname}")
                att = Attachment(network=nname, mac=str(a.get("mac", "")))
                if a.get("address"):
                    att.address = self.addr(a["address"], f"{sw}.networks.{nname}.address")
                    net = host.networks[nname]
                    if not net.subnet or ipaddress.ip_address(att.address) not in \
                            ipaddress.ip_network(net.subnet):
                        self.fail(f"{sw}.networks.{nname}.address",
                                  f"{att.address} is not inside the network's subnet "
                                  f"{net.subnet or '(none declared)'}")
                sb.attachments.append(att)
            self.cni_attachments(host, sb, cnis, f"{sw}.cni")
            for i, pdata in enumerate(s.get("publish") or []):
                sb.publish.append(self.port(pdata, f"{sw}.publish[{i}]"))
                if cnis and not sb.publish[-1].host_port:
                    self.fail(f"{sw}.publish[{i}]", "a CNI port mapping names its host port "
                                                    "(runtimeConfig.portMappings[].hostPort)")
            host.sandboxes[sname] = sb
        return host

    # ------------------------------------------------------------------- CNI
    def cni_confs(self, host: HostSpec, data, where: str) -> None:
        """``cni:`` of a host: conflists by network name.  Each is the plugin
        entry of a conflist (CNI's own keys, passed through), with two
        shorthands: ``subnet`` / ``gateway`` become ``ipam.ranges``.  A name that
        is also under ``networks:`` is that network (made by the runner, joined
        by CNI); any other name is a network the first ADD creates."""
        for cname, cdata in self.mapping(data, where).items():
            cw = f"{where}.{cname}"
            self.name(cname, cw)
            c = dict(self.mapping(cdata, cw))
            bad = [k for k in CNI_RESERVED if k in c]
            if bad:
                self.fail(cw, f"{', '.join(bad)}: set by the runner (the network name is the key; "
                              "pynet.* points at the host's pynet instance)")
            typ = str(c.pop("type", "pynet-bridge"))
            if typ not in CNI_PLUGINS:
                self.fail(f"{cw}.type", f"{typ!r}: the installed plugins are {', '.join(CNI_PLUGINS)}")
            version = str(c.pop("cniVersion", CNI_VERSION))
            if not re.match(r"^\d+\.\d+\.\d+$", version):
                self.fail(f"{cw}.cniVersion", f"{version!r} is not a version")
            driver = CNI_PLUGINS[typ]
            net = host.networks.get(cname)
            subnet = self.cidr(c.pop("subnet"), f"{cw}.subnet") if c.get("subnet") else ""
            gateway = self.addr(c.pop("gateway"), f"{cw}.gateway") if c.get("gateway") else ""
            c.pop("subnet", None), c.pop("gateway", None)
            if net is not None:
                if net.driver != driver:
                    self.fail(f"{cw}.type", f"network {cname} has driver {net.driver}; {typ} is {driver}")
                if subnet and subnet != net.subnet:
                    self.fail(f"{cw}.subnet", f"network {cname} has subnet {net.subnet or '(IPAM)'}")
                if gateway and gateway != net.gateway:
                    self.fail(f"{cw}.gateway", f"network {cname} has gateway {net.gateway or '(IPAM)'}")
                subnet, gateway = net.subnet, net.gateway
                # the conflist keys that describe the network: the driver's to say
                for k, v in registry.driver_class(driver).cni_from_options(net.options).items():
                    c.setdefault(k, v)
            else:
                net = NetSpec(name=cname, host=host.name, driver=driver, origin="cni")
                net.subnet, net.gateway = subnet, gateway
                host.networks[cname] = net
            if gateway and (not subnet or ipaddress.ip_address(gateway) not in
                            ipaddress.ip_network(subnet)):
                self.fail(f"{cw}.gateway", "needs a subnet that contains it")
            entry = {"type": typ}
            entry.update(registry.driver_class(driver).cni_defaults())
            entry["capabilities"] = {"portMappings": True, "ips": True, "mac": True}
            entry.update(c)
            if "ipam" not in entry:
                rng = {"subnet": subnet} if subnet else {}
                if gateway:
                    rng["gateway"] = gateway
                entry["ipam"] = {"type": "pynet-ipam", **({"ranges": [[rng]]} if rng else {})}
            net.cni = {"cniVersion": version, "plugin": entry}

    def cni_attachments(self, host: HostSpec, sb: SandboxSpec, data, where: str) -> None:
        if isinstance(data, list):
            data = {n: {} for n in data}
        elif isinstance(data, str):
            data = {data: {}}
        for i, (nname, adata) in enumerate(self.mapping(data, where).items()):
            aw = f"{where}.{nname}"
            a = self.mapping(adata, aw, ["address", "mac", "ifname"])
            net = host.networks.get(nname)
            if net is None or net.cni is None:
                self.fail(where, f"no conflist {nname!r} under hosts.{host.name}.cni")
            att = Attachment(network=nname, mac=str(a.get("mac", "")), cni=True,
                             ifname=str(a.get("ifname", f"eth{i}")))
            if not re.match(r"^[A-Za-z0-9_.-]{1,15}$", att.ifname) or att.ifname in (".", ".."):
                self.fail(f"{aw}.ifname", f"{att.ifname!r} is not an interface name")
            if att.ifname in [x.ifname for x in sb.attachments]:
                self.fail(f"{aw}.ifname", f"{att.ifname} is used twice")
            if a.get("address"):
                att.address = self.addr(a["address"], f"{aw}.address")
                if not net.subnet or ipaddress.ip_address(att.address) not in \
                        ipaddress.ip_network(net.subnet):
                    self.fail(f"{aw}.address", f"{att.address} is not inside the network's subnet "
                                               f"{net.subnet or '(none declared)'}")
            sb.attachments.append(att)

    def port(self, v, where) -> PortSpec:
        # "8080:80/tcp", "80", or {host_port, container_port, proto, host_ip}
        if isinstance(v, (str, int)):
            m = re.match(r"^(?:(\d+):)?(\d+)(?:/(tcp|udp))?$", str(v))
            if not m:
                self.fail(where, f"{v!r} is not HOST:CONTAINER[/proto]")
            return PortSpec(proto=m.group(3) or "tcp", container_port=int(m.group(2)),
                            host_port=int(m.group(1) or 0))
        d = self.mapping(v, where, ["proto", "container_port", "host_port", "host_ip"])
        if "container_port" not in d:
            self.fail(where, "container_port is required")
        return PortSpec(proto=str(d.get("proto", "tcp")), container_port=int(d["container_port"]),
                        host_port=int(d.get("host_port", 0)), host_ip=str(d.get("host_ip", "")))

    def underlay_addresses(self, sc: Scenario) -> None:
        net = ipaddress.ip_network(sc.underlay_subnet)
        nodes = list(sc.hosts.values()) + list(sc.outside.values())
        used = set()
        for n in nodes:
            if n.address:
                if ipaddress.ip_address(n.address) not in net:
                    self.fail(n.name, f"underlay address {n.address} is outside {net}")
                if n.address in used:
                    self.fail(n.name, f"underlay address {n.address} is used twice")
                used.add(n.address)
        free = (str(a) for a in net.hosts() if int(a) - int(net.network_address) >= 10)
        for n in nodes:
            if not n.address:
                a = next(free)
                while a in used:
                    a = next(free)
                n.address = a
                used.add(a)

    def check_sandboxes(self, sc: Scenario) -> None:
        sbs = sc.sandboxes()
        for s in sbs.values():
            if s.mode == "container":
                other = sbs.get(s.container)
                if other is None or other.host != s.host:
                    self.fail(f"hosts.{s.host}.sandboxes.{s.name}.container",
                              f"no sandbox {s.container!r} on host {s.host}")
                if other.mode == "container":
                    self.fail(f"hosts.{s.host}.sandboxes.{s.name}.container",
                              "share the netns of a sandbox that owns one (not a chain)")
            if s.publish and s.mode != "netns":
                self.fail(f"hosts.{s.host}.sandboxes.{s.name}.publish",
                          "only a sandbox in mode netns publishes ports")

    def cluster(self, sc: Scenario, data) -> None:
        """``cluster: {store: etcd, members: [h1, ...], lease_ttl: S}``; every
        overlay network needs it, declares its subnet, and the same settings
        on every host that joins it (what pynet would refuse as a conflict is
        a mistake in the file, said here)."""
        overlays = sc.overlays()
        if data is None:
            if overlays:
                name = next(iter(overlays))
                self.fail(f"hosts.{overlays[name][0].host}.networks.{name}.driver",
                          "an overlay network needs a cluster store (add cluster: {store: etcd})")
            return
        if data is True:
            data = {}
        c = self.mapping(data, "cluster", ["store", "members", "lease_ttl"])
        spec = ClusterSpec(backend=str(c.get("store", "etcd")))
        if spec.backend not in CLUSTER_STORES:
            self.fail("cluster.store", f"{spec.backend!r}: the cluster stores are {', '.join(CLUSTER_STORES)}")
        members = c.get("members", list(sc.hosts))
        if not isinstance(members, list) or not members:
            self.fail("cluster.members", "a list of hosts (at least one)")
        for m in members:
            if m not in sc.hosts:
                self.fail("cluster.members", f"no host {m!r}")
        if len(set(members)) != len(members):
            self.fail("cluster.members", "a host runs one member")
        spec.members = [str(m) for m in members]
        try:
            spec.lease_ttl = int(c.get("lease_ttl", spec.lease_ttl))
        except (TypeError, ValueError):
            self.fail("cluster.lease_ttl", "seconds, a number")
        if not 2 <= spec.lease_ttl <= 3600:
            self.fail("cluster.lease_ttl", "must be 2..3600 seconds")
        sc.cluster = spec
        for name, decls in overlays.items():
            first = decls[0]
            for n in decls:
                where = f"hosts.{n.host}.networks.{name}"
                if not n.subnet:
                    self.fail(f"{where}.subnet", "an overlay network declares its subnet "
                                                 "(one cluster-wide pool)")
                got = (n.subnet, n.gateway, n.subnet_v6, n.internal, n.options)
                want = (first.subnet, first.gateway, first.subnet_v6, first.internal, first.options)
                if got != want:
                    diffs = [k for k, a, b in zip(("subnet", "gateway", "subnet_v6", "internal",
                                                   "options"), got, want) if a != b]
                    self.fail(where, f"differs from hosts.{first.host}.networks.{name} in "
                                     f"{', '.join(diffs)}: an overlay is one network on every host")

    def check_subnets(self, sc: Scenario) -> None:
        # Subnets of one host must not overlap (pynet refuses it anyway); no
        # declared subnet may overlap the underlay.
        ul = ipaddress.ip_network(sc.underlay_subnet)
        for n in sc.networks():
            if n.subnet and ipaddress.ip_network(n.subnet).overlaps(ul):
                self.fail(f"hosts.{n.host}.networks.{n.name}.subnet",
                          f"{n.subnet} overlaps the underlay {ul}")

    # ------------------------------------------------------------- expectations
    def expectation(self, sc: Scenario, i: int, e) -> Expectation:
        where = f"expect[{i}]"
        if not isinstance(e, dict) or len(e) != 1:
            self.fail(where, f"each expectation is a mapping with one key, one of {', '.join(KINDS)}")
        kind, body = next(iter(e.items()))
        if kind not in KINDS:
            self.fail(where, f"unknown expectation {kind!r} (one of {', '.join(KINDS)})")
        where = f"{where}.{kind}"
        common = ["name", "from", "to", "timeout"]
        extra = {
            "reach": ["proto", "port"], "isolated": ["proto", "port"],
            "arp": ["resolves"], "nat": ["proto", "port", "source"],
            "dnat": ["proto", "port", "reaches", "target_port", "delivered"],
            "mtu": ["size", "df", "passes"],
            "spoof": ["src_ip", "src_mac", "port", "delivered"],
            "encap": ["vni", "network", "udp_port", "seen", "inner_arp"],
        }[kind]
        b = self.mapping(body, where, common + extra)
        for k in ("from", "to"):
            if k not in b:
                self.fail(where, f"'{k}' is required")
        src, dst = str(b["from"]), str(b["to"])
        for k, v in (("from", src), ("to", dst)):
            self.ref(sc, v, f"{where}.{k}", allow_address=(k == "to"))
        ex = Expectation(index=i, kind=kind, src=src, dst=dst, name=str(b.get("name", "")),
                         timeout=float(b.get("timeout", DEFAULT_TIMEOUT)))
        if not 0 < ex.timeout <= 10:
            self.fail(f"{where}.timeout", "must be in (0, 10] seconds")
        ex.proto = str(b.get("proto", "tcp" if kind == "dnat" else "icmp"))
        if ex.proto not in PROTOS:
            self.fail(f"{where}.proto", f"{ex.proto!r} is not one of {', '.join(PROTOS)}")
        ex.port = int(b.get("port", 0) or 0)
        if kind == "spoof":
            ex.proto, ex.port = "udp", int(b.get("port", 9999))
        if ex.proto in ("tcp", "udp") and not 0 < ex.port < 65536:
            self.fail(f"{where}.port", f"{ex.proto} needs a port")
        if kind == "dnat" and ex.proto == "icmp":
            self.fail(f"{where}.proto", "dnat is about tcp or udp")
        params = {k: b[k] for k in extra if k in b and k not in ("proto", "port")}
        if kind == "dnat":
            if "reaches" not in params or sc.kind_of(str(params["reaches"])) != "sandbox":
                self.fail(f"{where}.reaches", "name the sandbox the published port must reach")
            params.setdefault("target_port", ex.port)
        if kind == "nat" and "source" in params:
            self.ref(sc, str(params["source"]), f"{where}.source", allow_address=True)
        if kind == "mtu":
            if "size" not in params or not 28 <= int(params["size"]) <= 65535:
                self.fail(f"{where}.size", "the IP packet size (28..65535) is required")
        if kind == "spoof":
            if not params.get("src_ip") and not params.get("src_mac"):
                self.fail(where, "forge src_ip, src_mac or both")
            if params.get("src_ip"):
                params["src_ip"] = self.addr(params["src_ip"], f"{where}.src_ip")
            if sc.kind_of(src) != "sandbox":
                self.fail(f"{where}.from", "spoofing is sent from a sandbox")
        if kind == "encap":
            if "vni" not in params and "network" not in params:
                self.fail(f"{where}.vni", "the VNI to look for is required (or the overlay "
                                          "network whose VNI it is)")
            if "network" in params and str(params["network"]) not in sc.overlays():
                self.fail(f"{where}.network", f"no overlay network {params['network']!r}")
            if "inner_arp" in params and not isinstance(params["inner_arp"], bool):
                self.fail(f"{where}.inner_arp", "true or false (false: no ARP frame inside "
                                                "the VXLAN on the underlay)")
        if kind == "arp" and sc.kind_of(dst) not in ("sandbox", "host", "outside", "address"):
            self.fail(f"{where}.to", "arp needs a target")
        ex.params = params
        return ex

    def ref(self, sc: Scenario, v: str, where: str, allow_address: bool) -> None:
        k = sc.kind_of(v)
        if k == "address":
            if not allow_address:
                self.fail(where, f"{v} must be a host, outside host or sandbox name")
            a = ipaddress.ip_address(v)
            for bad in FORBIDDEN_NETS:
                if a in bad:
                    self.fail(where, f"address {a} is in {bad}, which scenarios must never use")
            if not any(a in n for n in sc.topology_nets() if n.version == a.version):
                self.fail(where, f"address {a} is outside the scenario's topology "
                                 f"({', '.join(map(str, sc.topology_nets()))}); refused")
            return
        if not k:
            self.fail(where, f"unknown name {v!r} (not a host, outside host, sandbox or address)")
        if k == "sandbox" and "@" in v:
            sname, nname = v.split("@", 1)
            sb = sc.sandboxes()[sname]
            if nname not in [a.network for a in sb.attachments]:
                self.fail(where, f"sandbox {sname} is not on network {nname!r}")
        if k == "sandbox" and sc.sandboxes()[v.split("@")[0]].mode == "none" and where.endswith("to"):
            pass  # a none sandbox is a valid (unreachable) target
