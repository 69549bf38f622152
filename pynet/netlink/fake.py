"""A stateful fake of the kernel's networking answers, for unit tests.

One :class:`FakeKernel` holds namespaces (``None`` = the "host" one, others
by path), each with links, addresses and routes; :class:`FakeNetlink` is the
Netlink interface over one namespace of it.  It models what the drivers rely
on:

- names are unique per namespace (LinkExists), at most 15 bytes;
- a veth pair dies together, wherever its ends are; deleting a bridge
  releases its ports; only a bridge can be a master, in the same namespace;
- moving a link to another namespace drops its master, addresses, routes and
  up state; a bridge cannot move; a missing namespace is NetnsNotFound;
- renaming an up link is refused (EBUSY), as the kernel does;
- routes need an existing device and a gateway on a connected subnet
  (ENETUNREACH otherwise); connected routes follow addresses on up links;
- deleting a namespace deletes its links (and their veth peers elsewhere);
- macvlan and vlan links die with their parent, in whatever namespace they are;
  a VLAN ID is used once per parent.

Failure injection: ``kernel.fail("set_master", name="pv...")`` makes the next
matching call raise KernelError (``times=`` for more than one).
"""
from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass, field
from typing import Optional

from pynet import errors
from pynet.netlink import (LinkExists, LinkInfo, LinkNotFound, Netlink, NetnsNotFound, Route,
                           check_ifname, check_mac, check_vlan_id, normalise_dst, parse_cidr_interface,
                           random_mac, route_family)


@dataclass(eq=False)
class _Link:
    name: str
    kind: str
    index: int
    ns: Optional[str]
    mtu: int = 1500
    mac: str = ""
    alias: str = ""
    up: bool = False
    master: Optional["_Link"] = None
    addresses: list = field(default_factory=list)     # ip_interface objects
    peer: Optional["_Link"] = None
    extra: dict = field(default_factory=dict)


@dataclass
class _Route:
    dst: str
    gateway: str
    link: Optional[_Link]
    family: int


class _Namespace:
    def __init__(self, path):
        self.path = path
        self.links: dict[str, _Link] = {}
        self.routes: list[_Route] = []


class FakeKernel:
    def __init__(self):
        self.namespaces: dict[Optional[str], _Namespace] = {None: _Namespace(None)}
        self._ifindex = itertools.count(2)
        self._failures: list[dict] = []
        self.calls: list[tuple] = []
        lo = _Link("lo", "loopback", 1, None, mtu=65536, mac="00:00:00:00:00:00")
        self.namespaces[None].links["lo"] = lo

    # -- namespaces -----------------------------------------------------------
    def add_netns(self, path: str) -> str:
        if path in self.namespaces:
            raise errors.Conflict(f"network namespace {path} exists")
        ns = _Namespace(path)
        ns.links["lo"] = _Link("lo", "loopback", 1, path, mtu=65536, mac="00:00:00:00:00:00")
        self.namespaces[path] = ns
        return path

    def delete_netns(self, path: str) -> None:
        ns = self.namespaces.pop(path, None)
        if ns is None:
            return
        for link in list(ns.links.values()):
            if link.peer is not None and link.peer.ns != path:
                self._unlink(link.peer)

    def ns(self, path: Optional[str]) -> _Namespace:
        try:
            return self.namespaces[path]
        except KeyError:
            raise NetnsNotFound(f"network namespace {path} does not exist") from None

    # -- failure injection ----------------------------------------------------
    def fail(self, verb: str, name: Optional[str] = None, times: int = 1,
             exc: Optional[Exception] = None) -> None:
        self._failures.append({"verb": verb, "name": name, "times": times,
                               "exc": exc or errors.KernelError(f"{verb} {name or ''}: injected failure")})

    def _check(self, verb: str, name: str = "") -> None:
        self.calls.append((verb, name))
        for f in self._failures:
            if f["verb"] == verb and (f["name"] is None or f["name"] == name) and f["times"] > 0:
                f["times"] -= 1
                raise f["exc"]

    # -- kernel internals -----------------------------------------------------
    def _new(self, ns_path, name, kind, **kw) -> _Link:
        check_ifname(name)
        ns = self.ns(ns_path)
        if name in ns.links:
            raise LinkExists(f"create {kind} {name}: link {name} already exists")
        link = _Link(name, kind, next(self._ifindex), ns_path, mac=kw.pop("mac", None) or random_mac(), **kw)
        ns.links[name] = link
        return link

    def _unlink(self, link: _Link) -> None:
        ns = self.namespaces.get(link.ns)
        if ns is None or ns.links.get(link.name) is not link:
            return
        del ns.links[link.name]
        ns.routes = [r for r in ns.routes if r.link is not link]
        for other in ns.links.values():
            if other.master is link:
                other.master = None
        if link.peer is not None:
            peer, link.peer = link.peer, None
            peer.peer = None
            self._unlink(peer)
        # upper devices (macvlan, vlan) die with their lower device, wherever they are
        for other_ns in list(self.namespaces.values()):
            for other in list(other_ns.links.values()):
                if other.extra.get("parent") is link:
                    self._unlink(other)

    def summary(self, ns_path: Optional[str] = None) -> dict:
        """{name: kind} of the namespace without lo -- handy for 'the kernel is empty'."""
        return {n: l.kind for n, l in self.ns(ns_path).links.items() if n != "lo"}


class FakeNetlink(Netlink):
    def __init__(self, kernel: Optional[FakeKernel] = None, netns_path: Optional[str] = None):
        self.kernel = kernel or FakeKernel()
        self.netns_path = netns_path
        self.kernel.ns(netns_path)

    def for_netns(self, netns_path) -> "FakeNetlink":
        return FakeNetlink(self.kernel, netns_path)

    @property
    def _ns(self) -> _Namespace:
        return self.kernel.ns(self.netns_path)

    def _get(self, name: str) -> _Link:
        check_ifname(name)
        try:
            return self._ns.links[name]
        except KeyError:
            where = f" in {self.netns_path}" if self.netns_path else ""
            raise LinkNotFound(f"link {name} not found{where}") from None

    # -- links ----------------------------------------------------------------
    def ensure_bridge(self, name, mtu=None, mac=None, alias=None) -> LinkInfo:
        self.kernel._check("ensure_bridge", name)
        link = self._ns.links.get(check_ifname(name))
        if link is None:
            link = self.kernel._new(self.netns_path, name, "bridge", mac=check_mac(mac) if mac else None)
        elif link.kind != "bridge":
            raise LinkExists(f"link {name} exists and is a {link.kind or 'device'}, not a bridge")
        if mtu:
            self.set_mtu(name, mtu)
        if mac:
            link.mac = check_mac(mac)
        if alias is not None:
            link.alias = alias
        return self.get_link(name)

    def add_veth(self, name, peer, mtu=None, peer_mac=None, alias=None, mac=None) -> None:
        self.kernel._check("add_veth", name)
        check_ifname(name)
        check_ifname(peer)
        for n in (name, peer):
            if n in self._ns.links:
                raise LinkExists(f"create veth {name}/{peer}: link {n} already exists")
        kw = {"mtu": int(mtu)} if mtu else {}
        a = self.kernel._new(self.netns_path, name, "veth", mac=check_mac(mac) if mac else None,
                             alias=alias or "", **kw)
        b = self.kernel._new(self.netns_path, peer, "veth",
                             mac=check_mac(peer_mac) if peer_mac else None, **kw)
        a.peer, b.peer = b, a

    def add_macvlan(self, name, parent, mode="bridge", mtu=None, mac=None, alias=None) -> None:
        self.kernel._check("add_macvlan", name)
        p = self._get(parent)
        self.kernel._new(self.netns_path, name, "macvlan", mtu=int(mtu or p.mtu),
                         mac=check_mac(mac) if mac else None, alias=alias or "",
                         extra={"parent": p, "mode": mode})

    def add_vlan(self, name, parent, vlan_id, mtu=None, alias=None) -> None:
        self.kernel._check("add_vlan", name)
        check_ifname(name)
        vid = check_vlan_id(vlan_id)
        p = self._get(parent)
        if name in self._ns.links:
            raise LinkExists(f"create vlan {name}: link {name} already exists")
        if any(l.kind == "vlan" and l.extra.get("parent") is p and l.extra.get("vlan_id") == vid
               for l in self._ns.links.values()):
            raise LinkExists(f"create vlan {name} (id {vid}) on {parent}: File exists")
        self.kernel._new(self.netns_path, name, "vlan", mtu=int(mtu or p.mtu), mac=p.mac,
                         alias=alias or "", extra={"parent": p, "vlan_id": vid})

    def add_dummy(self, name, mtu=None, alias=None) -> None:
        self.kernel._check("add_dummy", name)
        kw = {"mtu": int(mtu)} if mtu else {}
        self.kernel._new(self.netns_path, name, "dummy", alias=alias or "", **kw)

    def add_vxlan(self, name, vni, port=4789, local=None, dev=None, learning=False, mtu=None,
                  alias=None, proxy=False) -> None:
        self.kernel._check("add_vxlan", name)
        if dev:
            self._get(dev)
        self.kernel._new(self.netns_path, name, "vxlan", mtu=int(mtu or 1450), alias=alias or "",
                         extra={"vni": vni, "port": port, "local": local, "dev": dev,
                                "learning": learning, "proxy": proxy, "fdb": set(), "neigh": {}})

    def vxlan_info(self, name) -> dict:
        link = self._vxlan(name)
        x = link.extra
        return {"vni": x["vni"], "port": x["port"], "local": x["local"] or "",
                "learning": bool(x["learning"]), "proxy": bool(x["proxy"])}

    def _vxlan(self, name, index=None) -> _Link:
        link = self._get(name)
        if link.kind != "vxlan":
            raise errors.InvalidParameter(f"link {name} is not a VXLAN device")
        if index is not None and index != link.index:
            # as the kernel answers a request by an ifindex whose device is gone (ENODEV)
            raise LinkNotFound(f"link index {index} not found (link {name} is {link.index})")
        return link

    # -- VXLAN forwarding database and neighbours (gone with the device) --------
    def fdb_replace(self, dev, mac, dst, index=None) -> None:
        self.kernel._check("fdb_replace", dev)
        mac = check_mac(mac)
        ipaddress.ip_address(dst)
        fdb = self._vxlan(dev, index).extra["fdb"]
        if mac != self.FLOOD_MAC:
            fdb -= {e for e in fdb if e[0] == mac}
        fdb.add((mac, dst))

    def fdb_delete(self, dev, mac, dst=None, missing_ok=True) -> bool:
        mac = check_mac(mac)
        fdb = self._vxlan(dev).extra["fdb"]
        # the kernel deletes the first matching one when no dst is given
        gone = sorted(e for e in fdb if e[0] == mac and (dst is None or e[1] == dst))[:1]
        if not gone:
            if missing_ok:
                return False
            raise errors.KernelError(f"fdb del {mac} dev {dev}: No such file or directory")
        fdb.discard(gone[0])
        return True

    def fdb_list(self, dev) -> list[tuple[str, str]]:
        return sorted(self._vxlan(dev).extra["fdb"])

    def neigh_replace(self, dev, ip, mac, index=None) -> None:
        self.kernel._check("neigh_replace", dev)
        self._vxlan(dev, index).extra["neigh"][str(ipaddress.ip_address(ip))] = check_mac(mac)

    def neigh_delete(self, dev, ip, missing_ok=True) -> bool:
        neigh = self._vxlan(dev).extra["neigh"]
        key = str(ipaddress.ip_address(ip))
        if key not in neigh:
            if missing_ok:
                return False
            raise errors.KernelError(f"neigh del {ip} dev {dev}: No such file or directory")
        del neigh[key]
        return True

    def neigh_list(self, dev) -> list[tuple[str, str]]:
        return sorted(self._vxlan(dev).extra["neigh"].items())

    def delete_link(self, name, missing_ok=True) -> bool:
        self.kernel._check("delete_link", name)
        try:
            link = self._get(name)
        except LinkNotFound:
            if missing_ok:
                return False
            raise
        self.kernel._unlink(link)
        return True

    def link_exists(self, name) -> bool:
        return check_ifname(name) in self._ns.links

    def _info(self, link: _Link) -> LinkInfo:
        return LinkInfo(name=link.name, kind=link.kind if link.kind != "loopback" else "",
                        index=link.index, master=link.master.name if link.master else "",
                        mtu=link.mtu, mac=link.mac, alias=link.alias,
                        state="up" if link.up else "down",
                        addresses=[str(a) for a in link.addresses],
                        peer=link.peer.name if link.peer and link.peer.ns == link.ns else "")

    def get_link(self, name) -> LinkInfo:
        return self._info(self._get(name))

    def list_links(self, alias_prefix=None) -> list[LinkInfo]:
        return [self._info(l) for l in sorted(self._ns.links.values(), key=lambda l: l.index)
                if alias_prefix is None or l.alias.startswith(alias_prefix)]

    def set_hairpin(self, ifname, on=True) -> None:
        self.kernel._check("set_hairpin", ifname)
        link = self._get(ifname)
        if link.master is None:
            raise errors.KernelError(f"set hairpin on {ifname}: not a bridge port")
        link.extra["hairpin"] = bool(on)

    def set_master(self, ifname, master) -> None:
        self.kernel._check("set_master", ifname)
        link = self._get(ifname)
        if master is None:
            link.master = None
            return
        m = self._get(master)
        if m.kind != "bridge":
            raise errors.KernelError(f"set master {master} on {ifname}: Operation not supported")
        if link.kind == "bridge" or link is m:
            raise errors.KernelError(f"set master {master} on {ifname}: Operation not supported")
        link.master = m

    def set_up(self, ifname) -> None:
        self.kernel._check("set_up", ifname)
        self._get(ifname).up = True

    def set_down(self, ifname) -> None:
        self.kernel._check("set_down", ifname)
        link = self._get(ifname)
        link.up = False
        self._ns.routes = [r for r in self._ns.routes if r.link is not link]

    def set_mtu(self, ifname, mtu) -> None:
        self.kernel._check("set_mtu", ifname)
        mtu = int(mtu)
        if not 68 <= mtu <= 65535:
            raise errors.KernelError(f"set MTU {mtu} on {ifname}: Invalid argument")
        self._get(ifname).mtu = mtu

    def set_mac(self, ifname, mac) -> None:
        self.kernel._check("set_mac", ifname)
        self._get(ifname).mac = check_mac(mac)

    def set_alias(self, ifname, alias) -> None:
        self._get(ifname).alias = alias

    def rename(self, ifname, new_name) -> None:
        self.kernel._check("rename", ifname)
        check_ifname(new_name)
        link = self._get(ifname)
        if ifname == new_name:
            return
        if new_name in self._ns.links:
            raise LinkExists(f"rename {ifname} to {new_name}: {new_name} already exists")
        if link.up:
            raise errors.KernelError(f"rename {ifname} to {new_name}: Device or resource busy")
        del self._ns.links[ifname]
        link.name = new_name
        self._ns.links[new_name] = link

    def move_to_netns(self, ifname, netns_path, new_name=None) -> None:
        self.kernel._check("move_to_netns", ifname)
        link = self._get(ifname)
        target = self.kernel.ns(netns_path)
        final = new_name or ifname
        check_ifname(final)
        if link.kind == "bridge":
            raise errors.KernelError(f"move {ifname} into {netns_path}: Invalid argument")
        if final in target.links:
            raise LinkExists(f"move {ifname} into {netns_path}: {final} already exists there")
        ns = self._ns
        del ns.links[ifname]
        ns.routes = [r for r in ns.routes if r.link is not link]
        for other in ns.links.values():
            if other.master is link:
                other.master = None
        link.master = None
        link.addresses = []
        link.up = False
        link.ns = netns_path
        link.name = final
        link.index = next(self.kernel._ifindex)
        target.links[final] = link

    # -- addresses ------------------------------------------------------------
    def ensure_address(self, ifname, cidr, nodad=False) -> bool:
        self.kernel._check("ensure_address", ifname)
        iface = parse_cidr_interface(cidr)
        link = self._get(ifname)
        if iface in link.addresses:
            return False
        link.addresses.append(iface)
        return True

    def remove_address(self, ifname, cidr, missing_ok=True) -> bool:
        iface = parse_cidr_interface(cidr)
        try:
            link = self._get(ifname)
            if iface not in link.addresses:
                raise errors.KernelError(f"remove address {cidr} from {ifname}: "
                                         f"Cannot assign requested address")
        except (LinkNotFound, errors.KernelError):
            if missing_ok:
                return False
            raise
        link.addresses.remove(iface)
        return True

    def get_addresses(self, ifname) -> list[str]:
        return [str(a) for a in self._get(ifname).addresses]

    # -- routes ---------------------------------------------------------------
    def _connected(self, family: int) -> list[_Route]:
        out = []
        for link in self._ns.links.values():
            if not link.up:
                continue
            for a in link.addresses:
                if a.version == family:
                    out.append(_Route(str(a.network), "", link, family))
        return out

    def add_route(self, dst, gateway=None, ifname=None, netns=None) -> None:
        if netns and netns != self.netns_path:
            return self.for_netns(netns).add_route(dst, gateway, ifname)
        self.kernel._check("add_route", dst)
        fam = route_family(dst, gateway)
        d = normalise_dst(dst)
        link = self._get(ifname) if ifname else None
        if link is not None and not link.up:
            raise errors.KernelError(f"add route {dst} dev {ifname}: Network is down")
        if gateway:
            gw = ipaddress.ip_address(gateway)
            via = [r for r in self._connected(fam)
                   if gw in ipaddress.ip_network(r.dst) and (link is None or r.link is link)]
            if not via:
                raise errors.KernelError(f"add route {dst} via {gateway}: Network is unreachable")
            link = link or via[0].link
        elif link is None:
            raise errors.KernelError(f"add route {dst}: needs a gateway or a device")
        ns = self._ns
        ns.routes = [r for r in ns.routes if not (r.dst == d and r.family == fam)]
        ns.routes.append(_Route(d, gateway or "", link, fam))

    def delete_route(self, dst, gateway=None, ifname=None, family=4, missing_ok=True) -> bool:
        fam = route_family(dst, gateway) if gateway or dst not in ("default",) else family
        d = normalise_dst(dst)
        ns = self._ns
        keep = [r for r in ns.routes if not (r.dst == d and r.family == fam)]
        if len(keep) == len(ns.routes):
            if missing_ok:
                return False
            raise errors.KernelError(f"delete route {dst}: No such process")
        ns.routes = keep
        return True

    def list_routes(self, family=4) -> list[Route]:
        return [Route(dst=r.dst, gateway=r.gateway, ifname=r.link.name if r.link else "",
                      family=family)
                for r in self._connected(family) + [r for r in self._ns.routes if r.family == family]]
