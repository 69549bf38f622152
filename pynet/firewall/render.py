"""Render the desired state into Docker 20.10's bridge-driver rule layout.

The layout follows libnetwork's bridge driver (``setupIPTablesInternal``,
``setIcc``, ``setINC``, ``setupInternalNetworkRules``, ``ProgramChain``,
``Forward``) as Docker 20.10 leaves it with ``"userland-proxy": false``
(hairpin mode): see ``shared/reference/iptables-docker-20.10-noproxy-*``.
Networks are rendered in the order given, first network on top (Docker
inserts each new network above the older ones, so pass the newest first to
reproduce a Docker host exactly).  Endpoints and their ports are rendered in
the order given (Docker appends them).

Differences from Docker, all on purpose:

* ICC off: Docker *appends* ``-i br -o br -j DROP`` to the end of FORWARD;
  pynet keeps it in the network's block where the ACCEPT would be (the same
  packets match nothing in between, so the verdict is identical, and the
  whole pynet block stays contiguous and movable).
* An ``--internal`` network with several subnets of one family cannot use
  Docker's ``! -d subnet -j DROP`` pair (it would drop its own second
  subnet); it gets ``-d subnet -j RETURN`` per subnet then one DROP instead.
* Unpublished ports (Docker 28's fix, which 20.10 lacks): after every
  per-port ACCEPT in ``<prefix>``, each non-internal network gets
  ``! -i br -o br -j DROP``, so traffic forwarded into a bridge from outside it
  is refused unless a published port accepted it -- whatever the FORWARD
  policy (dockerd leaves it at ACCEPT when ip_forward was already 1 before it
  started, and Docker 20.10's own bridge is open to routed traffic there).
  The drops sit below *all* the accepts (the chain is shared by the
  networks), so they never shadow one; replies (RELATED,ESTABLISHED) are
  accepted in FORWARD before the jump, hairpin and ICC traffic enter the
  bridge from the bridge itself (``-i br``) and the 127.0.0.1 DNAT goes
  through OUTPUT, so none of them reach the drop.  Internal networks have
  no jump to ``<prefix>`` (their isolation rules drop everything foreign).
* IPv6: there is no ``route_localnet`` for IPv6, so DNAT from ``::1`` can't
  work; the ip6tables OUTPUT jump excludes ``::1/128`` and mappings bound to
  ``::1`` are not rendered.
* Anti-spoofing (``spoof_check``), which Docker's bridge lacks, lives in its
  own chain ``<prefix>-ANTISPOOF`` (declared only when used): with a MAC the
  endpoint's address is bound to its MAC (``-s ip ! --mac-source mac`` and
  ``--mac-source mac ! -s ip`` are dropped), without a MAC but with the host
  veth, ``-m physdev --physdev-in veth ! -s ip`` is dropped (physdev needs
  br_netfilter).
"""
from __future__ import annotations

import ipaddress

from pynet import validate
from pynet.errors import InvalidAddress, InvalidParameter, PortInUse, PynetError

from .model import ENDPOINT, IPV4, NETWORK, EndpointSpec, NetworkSpec, PortMapping, Ruleset, check_ifname_token

PROTOS = ("tcp", "udp", "sctp")


def chain_names(prefix: str) -> dict[str, str]:
    return {
        "main": prefix,
        "iso1": f"{prefix}-ISOLATION-STAGE-1",
        "iso2": f"{prefix}-ISOLATION-STAGE-2",
        "user": f"{prefix}-USER",
        "spoof": f"{prefix}-ANTISPOOF",
        "fwd": f"{prefix}-FORWARD",  # filter: the hook-in (FORWARD's one pynet rule jumps here)
        "bridge": f"{prefix}-BRIDGE",  # filter: the networks' FORWARD rules
        "post": f"{prefix}-POSTROUTING",  # nat: masquerading; mangle: SCTP checksums
    }


def own_chains(prefix: str) -> set[str]:
    return set(chain_names(prefix).values())


# --- validation -------------------------------------------------------------
# (the renderer checks its inputs for readable errors; model.Rule checks every token again)
def _net(s: str, version: int) -> str:
    return str(validate.ip_network(s, "subnet", version, err=InvalidAddress))


def _addr(s: str, version: int | None = None) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address, or the address of ``a/len``; no zone (:mod:`pynet.validate`)."""
    return validate.ip_address(s, "IP address", version, allow_prefix=True, err=InvalidAddress)


def _host(a) -> str:
    return f"{a}/{a.max_prefixlen}"


def _ifname(name: str, patterns: bool = False) -> str:
    """A bridge or veth name: a literal interface name; ``patterns``: also one of
    pynet's own isolation wildcards (``br-+``, ``pn-+``)."""
    return check_ifname_token(name, patterns=patterns)


def _port(p, what: str) -> int:
    if not isinstance(p, int) or isinstance(p, bool) or not 1 <= p <= 65535:
        raise InvalidParameter(f"invalid {what} {p!r}: must be 1-65535")
    return p


def _unspecified(host_ip: str) -> bool:
    return host_ip in ("", "0.0.0.0", "::")


def _overlap(a: str, b: str) -> bool:
    return _unspecified(a) or _unspecified(b) or a == b


# --- expansion of port mappings ---------------------------------------------
def expand_ports(ep: EndpointSpec) -> list[tuple[int, PortMapping, str]]:
    """Resolve each mapping to (ip version, mapping, container address) rows."""
    rows = []
    for pm in ep.ports:
        if pm.proto not in PROTOS:
            raise InvalidParameter(f"invalid protocol {pm.proto!r}: want one of {', '.join(PROTOS)}")
        _port(pm.host_port, "host port")
        _port(pm.container_port, "container port")
        hv = _addr(pm.host_ip).version if pm.host_ip else None
        if pm.container_ip:
            cv = _addr(pm.container_ip).version
            if hv and hv != cv and not _unspecified(pm.host_ip):
                raise InvalidParameter(
                    f"host IP {pm.host_ip} and container IP {pm.container_ip} are of different families")
            rows.append((cv, pm, str(_addr(pm.container_ip))))
            continue
        for ver, cip in ((4, ep.ipv4), (6, ep.ipv6)):
            if cip and (hv is None or hv == ver):
                rows.append((ver, pm, str(_addr(cip, ver))))
        if hv and not any(r[1] is pm for r in rows):
            raise InvalidParameter(
                f"endpoint {ep.id} has no IPv{hv} address for host IP {pm.host_ip}")
    return rows


class PortIndex:
    """The host ports published so far, keyed by (protocol, host port): a new endpoint's
    mappings are checked against the few holders of the same port, not every port of
    every endpoint (which made screening the whole state quadratic in published ports)."""

    def __init__(self, endpoints=()):
        self._by_port: dict[tuple[str, int], list[tuple[str, str]]] = {}
        for ep in endpoints:
            self.add(ep)

    def add(self, ep: EndpointSpec) -> None:
        for pm in ep.ports:
            self._by_port.setdefault((pm.proto, pm.host_port), []).append((pm.host_ip, ep.id))

    def conflict(self, ep: EndpointSpec) -> PortInUse | None:
        for pm in ep.ports:
            for hip, owner in self._by_port.get((pm.proto, pm.host_port), ()):
                if _overlap(hip, pm.host_ip) and owner != ep.id:
                    return PortInUse(
                        f"Bind for {pm.host_ip or '0.0.0.0'}:{pm.host_port}/{pm.proto} failed: "
                        f"port is already allocated (endpoint {owner})", owner=ep.id)
        return None


def check_port_conflicts(endpoints: list[EndpointSpec]) -> None:
    seen = PortIndex()
    for ep in endpoints:
        err = seen.conflict(ep)
        if err is not None:
            raise err
        seen.add(ep)


# --- per-owner screening -----------------------------------------------------
def _check_network(n: NetworkSpec) -> None:
    _ifname(n.bridge)
    for s in n.subnets_v4:
        _net(s, 4)
    for s in n.subnets_v6:
        _net(s, 6)
    if n.host_ipv4:
        _addr(n.host_ipv4, 4)


def _check_endpoint(ep: EndpointSpec) -> None:
    if ep.mac:
        _mac(ep.mac)
    if ep.host_veth:
        _ifname(ep.host_veth)
    if ep.ipv4:
        _addr(ep.ipv4, 4)
    if ep.ipv6:
        _addr(ep.ipv6, 6)
    expand_ports(ep)
    for pm in ep.ports:
        if pm.host_ip:
            _addr(pm.host_ip)


def screen(networks: list[NetworkSpec], endpoints: list[EndpointSpec], isolate_from=(),
           problems: dict | None = None):
    """Split the desired state into what renders and what does not, per owner.

    Returns ``(networks, endpoints, isolate_from)`` without the owners the renderer
    would refuse, and records each refused one in ``problems`` (owner id -> one
    readable line): a network (bad bridge name, subnet, host binding; its endpoints
    go with it), an endpoint (bad address, MAC, veth name or port mapping, or a host
    port an endpoint earlier in the given order already publishes -- the first one
    keeps it), a foreign bridge pattern.  So one bad stored record costs its own
    rules, never everyone's (issue 9, defect 6)."""
    problems = {} if problems is None else problems
    iso = []
    for p in isolate_from:
        try:
            iso.append(_ifname(p, patterns=True))
        except PynetError as e:
            problems[f"foreign bridge {p!r}"] = str(e)
    nets, ids = [], set()
    for n in networks:
        try:
            if n.id in ids:
                raise InvalidParameter(f"network id {n.id!r} given twice")
            _check_network(n)
        except PynetError as e:
            problems[n.id] = f"network {n.id}: {e}"
            continue
        nets.append(n)
        ids.add(n.id)
    eps: list[EndpointSpec] = []
    seen = PortIndex()
    known = {n.id for n in networks}
    for ep in endpoints:
        try:
            if ep.network_id not in ids:
                if ep.network_id in known:
                    raise InvalidParameter(f"its network {ep.network_id} is refused")
                raise InvalidParameter(f"unknown network {ep.network_id}")
            _check_endpoint(ep)
            err = seen.conflict(ep)
            if err is not None:
                raise err
        except PynetError as e:
            problems[ep.id] = f"endpoint {ep.id}: {e}"
            continue
        eps.append(ep)
        seen.add(ep)
    return nets, eps, tuple(iso)


# --- the renderer ------------------------------------------------------------
def _family_nets(networks, ver: int) -> list:
    return [n for n in networks if (n.subnets_v4 if ver == 4 else n.subnets_v6)]


def _wants_checksum(nets, endpoints, ver: int) -> bool:
    """Whether the family has an SCTP port mapping (whose CHECKSUM rule needs the mangle
    table's jump).  The same answer from the whole state and from a change's part."""
    usable = {n.id for n in nets if not n.internal}
    for ep in endpoints:
        if ep.network_id in usable and any(pm.proto == "sctp" for pm in ep.ports):
            try:
                rows = expand_ports(ep)
            except PynetError:
                continue  # refused by screen(): it has no rules
            if any(v == ver and pm.proto == "sctp" for v, pm, _ in rows):
                return True
    return False


def base_flags(networks, endpoints, family: str) -> tuple[bool, bool, bool]:
    """(any network of the family, anti-spoofing wanted, SCTP checksums wanted): all the
    base rules (owner ``base``) depend on, besides the prefix and ``isolate_from``."""
    ver = 4 if family == IPV4 else 6
    nets = _family_nets(networks, ver)
    return bool(nets), any(n.spoof_check for n in nets), _wants_checksum(nets, endpoints, ver)


def render_family(prefix: str, networks: list[NetworkSpec], endpoints: list[EndpointSpec],
                  family: str, userland_proxy: bool = False, isolate_from=(), *,
                  whole=None) -> Ruleset:
    """Layout: the built-in chains hold only the base jumps (owner ``base``) into pynet's
    chains, which hold everything per network and endpoint; so a change touches pynet's
    own chains only, where pynet alone decides positions (see :mod:`pynet.firewall.firewall`).
    Inlining ``<prefix>-FORWARD`` (and in it ``<prefix>-BRIDGE``) into FORWARD and
    ``<prefix>-POSTROUTING`` into POSTROUTING gives Docker 20.10's layout rule for rule
    (reconcile.inline_hooks).

    ``whole``: ``(networks, endpoints)`` of the whole state when only a part of it is
    given (a change's owners): the base rules are then those of the whole state.

    ``isolate_from``: interface names/patterns (``docker0``, ``br-+``) of bridges that are
    not this instance's (dockerd's own networks, other pynet instances).  Docker's isolation
    chains only know the networks they render, so beside dockerd traffic would pass between
    pynet and Docker bridges both ways; for each pattern P pynet adds, in its own chains,
    ``ISOLATION-STAGE-1: -i P ! -o P -j STAGE-2`` and ``STAGE-2: -o P -j DROP`` (owner
    ``base``).  Empty (the default): exactly Docker's layout."""
    for p in isolate_from:
        _ifname(p, patterns=True)
    ver = 4 if family == IPV4 else 6
    c = chain_names(prefix)
    rs = Ruleset(family, prefix)
    nets = []
    for n in networks:
        _ifname(n.bridge)
        subs = [_net(s, ver) for s in (n.subnets_v4 if ver == 4 else n.subnets_v6)]
        if n.host_ipv4:
            _addr(n.host_ipv4, 4)
        if subs:
            nets.append((n, subs))
    if whole is not None:
        present, spoof, checksum = base_flags(whole[0], whole[1], family)
    else:
        present, spoof, checksum = bool(nets), None, None
    if not present:
        return rs
    by_id = {n.id: (n, subs) for n, subs in nets}
    all_ids = {n.id for n in networks}
    for ep in endpoints:
        if ep.network_id not in all_ids:
            raise InvalidParameter(f"endpoint {ep.id}: unknown network {ep.network_id}")
        if ep.mac:
            _mac(ep.mac)
        if ep.host_veth:
            _ifname(ep.host_veth)
    hairpin = not userland_proxy
    if spoof is None:
        spoof = any(n.spoof_check for n, _ in nets)
        checksum = _wants_checksum([n for n, _ in nets], endpoints, ver)

    # chains (declaration order as iptables-save sorts them)
    for ch in (c["main"], c["iso1"], c["iso2"], c["user"]):
        rs.declare("filter", ch)
    if spoof:
        rs.declare("filter", c["spoof"])
    rs.declare("filter", c["fwd"])
    rs.declare("filter", c["bridge"])
    rs.declare("nat", c["main"])
    rs.declare("nat", c["post"])
    if checksum:
        rs.declare("mangle", c["post"])

    # filter FORWARD: one jump into the small <prefix>-FORWARD (USER, isolation, anti-spoofing,
    # then the networks' rules in <prefix>-BRIDGE), as Docker 28 hooks DOCKER-FORWARD in: a
    # change that puts it back on top of FORWARD deletes and inserts that one rule, and the
    # kernel's cost of deleting a jump grows with the chain it jumps to
    rs.add("filter", "FORWARD", ["-j", c["fwd"]], "base")
    rs.add("filter", c["fwd"], ["-j", c["user"]], "base")
    rs.add("filter", c["fwd"], ["-j", c["iso1"]], "base")
    if spoof:
        rs.add("filter", c["fwd"], ["-j", c["spoof"]], "base")
        rs.add("filter", "INPUT", ["-j", c["spoof"]], "base")
    rs.add("filter", c["fwd"], ["-j", c["bridge"]], "base")
    F = c["bridge"]
    for n, subs in nets:
        br, o = n.bridge, n.id
        icc = "ACCEPT" if n.icc else "DROP"
        if not n.internal:
            rs.add("filter", F, ["-o", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
                                 "-j", "ACCEPT"], o)
            rs.add("filter", F, ["-o", br, "-j", c["main"]], o)
            rs.add("filter", F, ["-i", br, "!", "-o", br, "-j", "ACCEPT"], o)
        rs.add("filter", F, ["-i", br, "-o", br, "-j", icc], o)

    # filter isolation
    for n, subs in nets:
        br, o = n.bridge, n.id
        if n.internal:
            if len(subs) == 1:
                rs.add("filter", c["iso1"], ["!", "-s", subs[0], "-o", br, "-j", "DROP"], o)
                rs.add("filter", c["iso1"], ["!", "-d", subs[0], "-i", br, "-j", "DROP"], o)
            else:
                for s in subs:
                    rs.add("filter", c["iso1"], ["-s", s, "-o", br, "-j", "RETURN"], o)
                rs.add("filter", c["iso1"], ["-o", br, "-j", "DROP"], o)
                for s in subs:
                    rs.add("filter", c["iso1"], ["-d", s, "-i", br, "-j", "RETURN"], o)
                rs.add("filter", c["iso1"], ["-i", br, "-j", "DROP"], o)
        else:
            rs.add("filter", c["iso1"], ["-i", br, "!", "-o", br, "-j", c["iso2"]], o)
    for p in isolate_from:
        rs.add("filter", c["iso1"], ["-i", p, "!", "-o", p, "-j", c["iso2"]], "base")
    rs.add("filter", c["iso1"], ["-j", "RETURN"], "base")
    for n, subs in nets:
        if not n.internal:
            rs.add("filter", c["iso2"], ["-o", n.bridge, "-j", "DROP"], n.id)
    for p in isolate_from:
        rs.add("filter", c["iso2"], ["-o", p, "-j", "DROP"], "base")
    rs.add("filter", c["iso2"], ["-j", "RETURN"], "base")
    rs.add("filter", c["user"], ["-j", "RETURN"], "base")

    # nat: jumps into the DNAT chain
    rs.add("nat", "PREROUTING", ["-m", "addrtype", "--dst-type", "LOCAL", "-j", c["main"]], "base")
    if ver == 6:
        out = ["!", "-d", "::1/128"]
    elif not hairpin:
        out = ["!", "-d", "127.0.0.0/8"]
    else:
        out = []
    rs.add("nat", "OUTPUT", out + ["-m", "addrtype", "--dst-type", "LOCAL", "-j", c["main"]], "base")
    rs.add("nat", "POSTROUTING", ["-j", c["post"]], "base")
    if checksum:
        rs.add("mangle", "POSTROUTING", ["-j", c["post"]], "base")
    P = c["post"]

    # nat <prefix>-POSTROUTING per network
    for n, subs in nets:
        if n.internal:
            continue
        br, o = n.bridge, n.id
        snat = (["-j", "SNAT", "--to-source", str(_addr(n.host_ipv4, 4))]
                if (n.host_ipv4 and ver == 4) else ["-j", "MASQUERADE"])
        if hairpin:
            rs.add("nat", P, ["-o", br, "-m", "addrtype", "--src-type", "LOCAL"] + snat, o)
        if n.masquerade:
            for s in subs:
                rs.add("nat", P, ["-s", s, "!", "-o", br] + snat, o)
        if n.masquerade and not hairpin:
            rs.add("nat", c["main"], ["-i", br, "-j", "RETURN"], o)

    # anti-spoofing
    if spoof:
        for n, subs in nets:
            if n.spoof_check and ver == 6:
                for ll in ("fe80::/10", "::/128"):
                    rs.add("filter", c["spoof"], ["-s", ll, "-i", n.bridge, "-j", "RETURN"], n.id)
        for ep in endpoints:
            n, _ = by_id.get(ep.network_id, (None, None))
            ip = ep.ipv4 if ver == 4 else ep.ipv6
            if not n or not n.spoof_check or not ip:
                continue
            h = _host(_addr(ip, ver))
            if ep.mac:
                mac = _mac(ep.mac)
                rs.add("filter", c["spoof"], ["-s", h, "-i", n.bridge, "-m", "mac", "!", "--mac-source",
                                               mac, "-j", "DROP"], ep.id)
                rs.add("filter", c["spoof"], ["!", "-s", h, "-i", n.bridge, "-m", "mac", "--mac-source",
                                               mac, "-j", "DROP"], ep.id)
            elif ep.host_veth:
                rs.add("filter", c["spoof"], ["!", "-s", h, "-i", n.bridge, "-m", "physdev",
                                               "--physdev-in", ep.host_veth, "-j", "DROP"], ep.id)

    # published ports
    check_port_conflicts([ep for ep in endpoints if ep.network_id in by_id])
    for ep in endpoints:
        if ep.network_id not in by_id:
            continue
        n, _ = by_id[ep.network_id]
        rows = expand_ports(ep)  # validates even for internal networks
        if n.internal:
            continue  # Docker ignores port bindings on internal networks
        br = n.bridge
        for v, pm, cip in rows:
            if v != ver:
                continue
            if pm.host_ip and not _unspecified(pm.host_ip):
                hip = _addr(pm.host_ip, ver)
                if ver == 6 and hip.is_loopback:
                    continue  # no route_localnet for IPv6
                dmatch = ["-d", _host(hip)]
            else:
                dmatch = []
            p = pm.proto
            ca = ipaddress.ip_address(cip)
            to = f"{ca}:{pm.container_port}" if ver == 4 else f"[{ca}]:{pm.container_port}"
            dnat = dmatch + ([] if hairpin else ["!", "-i", br])
            rs.add("nat", c["main"], dnat + ["-p", p, "-m", p, "--dport", str(pm.host_port),
                                             "-j", "DNAT", "--to-destination", to], ep.id)
            rs.add("filter", c["main"], ["-d", _host(ca), "!", "-i", br, "-o", br, "-p", p, "-m", p,
                                         "--dport", str(pm.container_port), "-j", "ACCEPT"], ep.id)
            rs.add("nat", P, ["-s", _host(ca), "-d", _host(ca), "-p", p, "-m", p,
                              "--dport", str(pm.container_port), "-j", "MASQUERADE"], ep.id)
            if p == "sctp":
                rs.add("mangle", P, ["-p", p, "-m", p, "--sport", str(pm.container_port),
                                     "-j", "CHECKSUM", "--checksum-fill"], ep.id)

    # everything else forwarded into a bridge from outside it: dropped here, below every
    # per-port ACCEPT of every network, so isolation never leans on the FORWARD policy
    for n, subs in nets:
        if not n.internal:
            rs.add("filter", c["main"], ["!", "-i", n.bridge, "-o", n.bridge, "-j", "DROP"], n.id)
    rs.kinds.update({n.id: NETWORK for n, _ in nets})
    rs.kinds.update({ep.id: ENDPOINT for ep in endpoints if ep.network_id in by_id})
    return rs


def _mac(mac: str) -> str:
    m = mac.strip().lower().replace("-", ":")
    parts = m.split(":")
    if len(parts) != 6 or not all(len(x) == 2 and all(ch in "0123456789abcdef" for ch in x)
                                  for x in parts):
        raise InvalidAddress(f"invalid MAC address {mac!r}")
    return m  # iptables-save prints it lower-case


def route_localnet_sysctls(networks: list[NetworkSpec], userland_proxy: bool = False) -> list[tuple[str, str]]:
    """The sysctls Docker sets with userland-proxy off: route_localnet=1 per bridge."""
    if userland_proxy:
        return []
    return [(f"net/ipv4/conf/{n.bridge}/route_localnet", "1")
            for n in networks if n.subnets_v4 and not n.internal]
