"""The real Netlink, on pyroute2.

``PyrouteNetlink(netns_path=None)`` opens ``IPRoute()`` in the calling
process's namespace, or ``IPRoute(netns=path, flags=0)`` -- flags=0 so that a
missing namespace is reported (NetnsNotFound) instead of created.  The socket
is opened on first use and kept until :meth:`close`.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import threading
from typing import Optional

from pynet import errors
from pynet.netlink import (LinkExists, LinkInfo, LinkNotFound, Netlink, NetnsNotFound, Route,
                           check_ifname, check_mac, check_vlan_id, normalise_dst, parse_cidr_interface,
                           random_mac, route_family)

IFF_UP = 0x1
IFA_F_NODAD = 0x02
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
_FAMILY = {4: 2, 6: 10}          # AF_INET, AF_INET6


def _nlerr():
    from pyroute2.netlink.exceptions import NetlinkError
    return NetlinkError


class PyrouteNetlink(Netlink):
    def __init__(self, netns_path: Optional[str] = None):
        self.netns_path = netns_path or None
        self._ipr = None
        # one request at a time on the socket (the daemon serves from threads)
        self._lock = threading.RLock()

    # -- plumbing -------------------------------------------------------------
    @property
    def ipr(self):
        if self._ipr is None:
            from pyroute2 import IPRoute
            # strict_check: the kernel then honours the link index in an address dump's header
            # (NETLINK_GET_STRICT_CHK, Linux >= 4.20), so asking for one link's addresses reads
            # that link's, not every address on the host (which grows with every bridge and veth)
            if self.netns_path is None:
                self._ipr = IPRoute(strict_check=True)
            else:
                if not os.path.exists(self.netns_path):
                    raise NetnsNotFound(f"network namespace {self.netns_path} does not exist")
                try:
                    self._ipr = IPRoute(netns=self.netns_path, flags=0, strict_check=True)
                except FileNotFoundError:
                    raise NetnsNotFound(f"network namespace {self.netns_path} does not exist") from None
                except OSError as e:
                    raise errors.KernelError(
                        f"cannot open network namespace {self.netns_path}: {e.strerror or e}") from None
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            try:
                self._ipr.close()
            finally:
                self._ipr = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def for_netns(self, netns_path: Optional[str]) -> "PyrouteNetlink":
        nl = PyrouteNetlink(netns_path)
        nl.ipr  # open now: a missing namespace raises here
        return nl

    def _where(self) -> str:
        return f" in {self.netns_path}" if self.netns_path else ""

    def _call(self, what: str, fn, *args, _name: str = "", **kwargs):
        """Run one pyroute2 call, translating NetlinkError into pynet errors."""
        try:
            with self._lock:
                return fn(*args, **kwargs)
        except _nlerr() as e:
            code = e.code
            msg = f"{what}{self._where()}: {os.strerror(code) if code else e}"
            if code == errno.ENODEV:
                raise LinkNotFound(msg) from None
            if code == errno.EEXIST:
                raise LinkExists(msg) from None
            raise errors.KernelError(msg) from None

    def _index(self, name: str) -> int:
        check_ifname(name)
        idx = self._call(f"look up {name}", self.ipr.link_lookup, ifname=name)
        if not idx:
            raise LinkNotFound(f"link {name} not found{self._where()}")
        return idx[0]

    def _set(self, what: str, name: str, **attrs) -> None:
        idx = self._index(name)
        self._call(f"{what} {name}", self.ipr.link, "set", index=idx, **attrs)

    # -- links ----------------------------------------------------------------
    def ensure_bridge(self, name, mtu=None, mac=None, alias=None) -> LinkInfo:
        check_ifname(name)
        if self.link_exists(name):
            info = self.get_link(name)
            if info.kind != "bridge":
                raise LinkExists(f"link {name} exists{self._where()} and is a {info.kind or 'device'}, "
                                 f"not a bridge")
        else:
            attrs = {"address": check_mac(mac or random_mac())}
            if mtu:
                attrs["mtu"] = int(mtu)
            self._call(f"create bridge {name}", self.ipr.link, "add", ifname=name, kind="bridge",
                       **attrs)
        if mtu:
            self.set_mtu(name, mtu)
        if mac:
            self.set_mac(name, mac)
        if alias is not None:
            self.set_alias(name, alias)
        return self.get_link(name)

    def add_veth(self, name, peer, mtu=None, peer_mac=None, alias=None, mac=None) -> None:
        check_ifname(name)
        check_ifname(peer)
        peer_spec = {"ifname": peer}
        attrs = {}
        if mtu:
            peer_spec["mtu"] = attrs["mtu"] = int(mtu)
        if peer_mac:
            peer_spec["address"] = check_mac(peer_mac)
        if mac:
            attrs["address"] = check_mac(mac)
        for n in (name, peer):
            if self.link_exists(n):
                raise LinkExists(f"create veth {name}/{peer}{self._where()}: link {n} already exists")
        self._call(f"create veth {name}/{peer}", self.ipr.link, "add", ifname=name, kind="veth",
                   peer=peer_spec, **attrs)
        if alias:
            try:
                self.set_alias(name, alias)
            except BaseException:
                self.delete_link(name)
                raise

    def add_macvlan(self, name, parent, mode="bridge", mtu=None, mac=None, alias=None) -> None:
        check_ifname(name)
        attrs = {"macvlan_mode": mode}
        if mtu:
            attrs["mtu"] = int(mtu)
        if mac:
            attrs["address"] = check_mac(mac)
        self._call(f"create macvlan {name} on {parent}", self.ipr.link, "add", ifname=name,
                   kind="macvlan", link=self._index(parent), **attrs)
        if alias:
            self.set_alias(name, alias)

    def add_vlan(self, name, parent, vlan_id, mtu=None, alias=None) -> None:
        check_ifname(name)
        vid = check_vlan_id(vlan_id)
        if self.link_exists(name):
            raise LinkExists(f"create vlan {name}{self._where()}: link {name} already exists")
        attrs = {"vlan_id": vid}
        if mtu:
            attrs["mtu"] = int(mtu)
        self._call(f"create vlan {name} (id {vid}) on {parent}", self.ipr.link, "add", ifname=name,
                   kind="vlan", link=self._index(parent), **attrs)
        if alias:
            try:
                self.set_alias(name, alias)
            except BaseException:
                self.delete_link(name)
                raise

    def add_dummy(self, name, mtu=None, alias=None) -> None:
        check_ifname(name)
        if self.link_exists(name):
            raise LinkExists(f"create dummy {name}{self._where()}: link {name} already exists")
        attrs = {"mtu": int(mtu)} if mtu else {}
        self._call(f"create dummy {name}", self.ipr.link, "add", ifname=name, kind="dummy", **attrs)
        if alias:
            try:
                self.set_alias(name, alias)
            except BaseException:
                self.delete_link(name)
                raise

    def add_vxlan(self, name, vni, port=4789, local=None, dev=None, learning=False, mtu=None,
                  alias=None, proxy=False) -> None:
        check_ifname(name)
        attrs = {"vxlan_id": int(vni), "vxlan_port": int(port), "vxlan_learning": bool(learning),
                 "vxlan_proxy": bool(proxy)}
        if local:
            attrs["vxlan_local"] = local
        if dev:
            attrs["vxlan_link"] = self._index(dev)
        if mtu:
            attrs["mtu"] = int(mtu)
        self._call(f"create vxlan {name}", self.ipr.link, "add", ifname=name, kind="vxlan", **attrs)
        if alias:
            self.set_alias(name, alias)

    def vxlan_info(self, name) -> dict:
        msg = self._call(f"look up {name}", self.ipr.get_links, self._index(name))[0]
        info = msg.get_attr("IFLA_LINKINFO")
        data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
        if data is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
            raise errors.InvalidParameter(f"link {name} is not a VXLAN device")
        return {"vni": data.get_attr("IFLA_VXLAN_ID"), "port": data.get_attr("IFLA_VXLAN_PORT"),
                "local": data.get_attr("IFLA_VXLAN_LOCAL") or "",
                "learning": bool(data.get_attr("IFLA_VXLAN_LEARNING")),
                "proxy": bool(data.get_attr("IFLA_VXLAN_PROXY"))}

    # -- VXLAN forwarding database and neighbours -------------------------------
    def fdb_replace(self, dev, mac, dst, index=None) -> None:
        mac = check_mac(mac)
        ipaddress.ip_address(dst)
        idx = self._index(dev) if index is None else int(index)
        # NTF_SELF: the entry is the VXLAN device's own (the bridge's would be
        # NTF_MASTER); "replace" without it is EOPNOTSUPP
        cmd = "append" if mac == self.FLOOD_MAC else "replace"
        try:
            self._call(f"fdb {cmd} {mac} dst {dst} dev {dev}", self.ipr.fdb, cmd, ifindex=idx,
                       lladdr=mac, dst=dst, state=NUD_PERMANENT, flags=NTF_SELF)
        except LinkExists:
            if cmd != "append":
                raise       # append of an entry already there: nothing to do

    def fdb_delete(self, dev, mac, dst=None, missing_ok=True) -> bool:
        mac = check_mac(mac)
        idx = self._index(dev)
        kw = {"dst": dst} if dst else {}
        # the kernel answers a delete of a (mac, dst) it does not have with
        # success when another dst of that MAC exists: look first
        if not any(m == mac and (dst is None or d == dst) for m, d in self.fdb_list(dev)):
            if missing_ok:
                return False
            raise errors.KernelError(f"fdb del {mac} dev {dev}: No such file or directory")
        return self._delete_entry(f"fdb del {mac} dev {dev}", missing_ok, self.ipr.fdb, "del", ifindex=idx,
                                  lladdr=mac, flags=NTF_SELF, **kw)

    def _delete_entry(self, what: str, missing_ok: bool, fn, *args, **kw) -> bool:
        """An FDB or neighbour delete: False when the entry was not there (ENOENT)."""
        try:
            self._call(what, fn, *args, **kw)
            return True
        except errors.KernelError as e:
            if missing_ok and os.strerror(errno.ENOENT) in str(e):
                return False
            raise

    def fdb_list(self, dev) -> list[tuple[str, str]]:
        idx = self._index(dev)
        out = set()
        for m in self._call(f"fdb dump dev {dev}", self.ipr.fdb, "dump", ifindex=idx):
            dst = m.get_attr("NDA_DST")
            if m["ifindex"] == idx and dst and m["state"] & NUD_PERMANENT and m["flags"] & NTF_SELF:
                out.add((m.get_attr("NDA_LLADDR").lower(), dst))
        return sorted(out)

    def neigh_replace(self, dev, ip, mac, index=None) -> None:
        mac = check_mac(mac)
        a = ipaddress.ip_address(ip)
        idx = self._index(dev) if index is None else int(index)
        self._call(f"neigh replace {ip} dev {dev}", self.ipr.neigh, "replace", ifindex=idx, dst=str(a),
                   lladdr=mac, state=NUD_PERMANENT, family=_FAMILY[a.version])

    def neigh_delete(self, dev, ip, missing_ok=True) -> bool:
        a = ipaddress.ip_address(ip)
        idx = self._index(dev)
        return self._delete_entry(f"neigh del {ip} dev {dev}", missing_ok, self.ipr.neigh, "del", ifindex=idx,
                                  dst=str(a), family=_FAMILY[a.version])

    def neigh_list(self, dev) -> list[tuple[str, str]]:
        idx = self._index(dev)
        out = set()
        for fam in _FAMILY.values():
            for m in self._call(f"neigh dump dev {dev}", self.ipr.get_neighbours, ifindex=idx, family=fam):
                if m["ifindex"] == idx and m["state"] & NUD_PERMANENT and m.get_attr("NDA_LLADDR"):
                    out.add((m.get_attr("NDA_DST"), m.get_attr("NDA_LLADDR").lower()))
        return sorted(out)

    def delete_link(self, name, missing_ok=True) -> bool:
        try:
            idx = self._index(name)
            self._call(f"delete {name}", self.ipr.link, "del", index=idx)
            return True
        except LinkNotFound:
            if missing_ok:
                return False
            raise

    def link_exists(self, name) -> bool:
        check_ifname(name)
        return bool(self._call(f"look up {name}", self.ipr.link_lookup, ifname=name))

    def link_index(self, name) -> Optional[int]:
        check_ifname(name)
        idx = self._call(f"look up {name}", self.ipr.link_lookup, ifname=name)
        return idx[0] if idx else None

    def _info(self, msg, names: dict[int, str], addrs: Optional[dict] = None) -> LinkInfo:
        idx = msg["index"]
        kind = msg.get(("linkinfo", "kind")) or ""
        master = msg.get("master")
        peer = ""
        if kind == "veth" and msg.get("link_netnsid") is None:
            peer = names.get(msg.get("link") or 0, "")
        return LinkInfo(
            name=msg.get("ifname"), kind=kind, index=idx,
            master=names.get(master, str(master)) if master else "",
            mtu=msg.get("mtu") or 0, mac=msg.get("address") or "", alias=msg.get("ifalias") or "",
            state="up" if msg["flags"] & IFF_UP else "down",
            addresses=addrs.get(idx, []) if addrs is not None else self._addresses(idx), peer=peer)

    def _addresses(self, idx: int) -> list[str]:
        out = []
        # an explicit dump_filter keeps ``index`` in the request header (pyroute2 otherwise moves
        # it into a filter applied here after reading the whole dump); the filter stays as a
        # guard for a kernel that ignores the header
        for a in self._call("list addresses", self.ipr.addr, "dump", index=idx,
                            dump_filter=lambda m: m.get("index") == idx):
            if a.get("index", idx) != idx:
                continue
            out.append(f"{a.get('address')}/{a['prefixlen']}")
        return out

    def _names(self) -> dict[int, str]:
        return {m["index"]: m.get("ifname") for m in self._call("list links", self.ipr.link, "dump")}

    def _names_of(self, msg) -> dict[int, str]:
        """The names of the links one link refers to (its master, a veth's peer), asked
        one by one: dumping every link to name two grows with the host's links (the
        bridge driver's create_network asks for its new bridge every time)."""
        out: dict[int, str] = {}
        for i in {msg.get("master"), msg.get("link")} - {None, 0}:
            try:
                out[i] = self._call("get link", self.ipr.link, "get", index=i)[0].get("ifname")
            except (LinkNotFound, errors.KernelError):
                pass  # gone meanwhile, or in another namespace: _info shows the index
        return out

    def get_link(self, name) -> LinkInfo:
        idx = self._index(name)
        msg = self._call(f"get {name}", self.ipr.link, "get", index=idx)[0]
        return self._info(msg, self._names_of(msg))

    def link_mac(self, name) -> str:
        idx = self._index(name)
        return self._call(f"get {name}", self.ipr.link, "get", index=idx)[0].get("address") or ""

    def list_links(self, alias_prefix=None) -> list[LinkInfo]:
        msgs = self._call("list links", self.ipr.link, "dump")
        names = {m["index"]: m.get("ifname") for m in msgs}
        addrs: dict[int, list[str]] = {}
        for a in self._call("list addresses", self.ipr.addr, "dump"):
            addrs.setdefault(a["index"], []).append(f"{a.get('address')}/{a['prefixlen']}")
        out = []
        for m in msgs:
            if alias_prefix is not None and not (m.get("ifalias") or "").startswith(alias_prefix):
                continue
            out.append(self._info(m, names, addrs))
        return out

    def set_master(self, ifname, master) -> None:
        self._set(f"set master {master} on" if master else "release", ifname,
                  master=self._index(master) if master else 0)

    def set_hairpin(self, ifname, on=True) -> None:
        idx = self._index(ifname)
        self._call(f"set hairpin {'on' if on else 'off'} on {ifname}", self.ipr.brport, "set",
                   index=idx, mode=1 if on else 0)

    def set_up(self, ifname) -> None:
        self._set("bring up", ifname, state="up")

    def set_down(self, ifname) -> None:
        self._set("bring down", ifname, state="down")

    def set_mtu(self, ifname, mtu) -> None:
        self._set(f"set MTU {mtu} on", ifname, mtu=int(mtu))

    def set_mac(self, ifname, mac) -> None:
        self._set(f"set MAC {mac} on", ifname, address=check_mac(mac))

    def set_alias(self, ifname, alias) -> None:
        self._set("set alias on", ifname, ifalias=alias)

    def rename(self, ifname, new_name) -> None:
        check_ifname(new_name)
        if ifname == new_name:
            return
        if self.link_exists(new_name):
            raise LinkExists(f"rename {ifname} to {new_name}{self._where()}: {new_name} already exists")
        self._set(f"rename to {new_name}:", ifname, ifname=new_name)

    def move_to_netns(self, ifname, netns_path, new_name=None) -> None:
        idx = self._index(ifname)
        if new_name:
            check_ifname(new_name)
        target = self.for_netns(netns_path)   # NetnsNotFound before anything changes
        try:
            final = new_name or ifname
            if target.link_exists(final):
                raise LinkExists(f"move {ifname} into {netns_path}: {final} already exists there")
            fd = os.open(netns_path, os.O_RDONLY)
            try:
                self._call(f"move {ifname} into {netns_path}", self.ipr.link, "set", index=idx,
                           net_ns_fd=fd)
            finally:
                os.close(fd)
            if new_name and new_name != ifname:
                target.rename(ifname, new_name)
        finally:
            target.close()

    # -- addresses ------------------------------------------------------------
    def ensure_address(self, ifname, cidr, nodad=False) -> bool:
        iface = parse_cidr_interface(cidr)
        if str(iface) in {str(ipaddress.ip_interface(a)) for a in self.get_addresses(ifname)}:
            return False
        idx = self._index(ifname)
        kw = {"flags": IFA_F_NODAD} if nodad and iface.version == 6 else {}
        try:
            self._call(f"add address {cidr} to {ifname}", self.ipr.addr, "add", index=idx,
                       address=str(iface.ip), prefixlen=iface.network.prefixlen, **kw)
        except LinkExists:
            return False
        return True

    def remove_address(self, ifname, cidr, missing_ok=True) -> bool:
        iface = parse_cidr_interface(cidr)
        try:
            idx = self._index(ifname)
            self._call(f"remove address {cidr} from {ifname}", self.ipr.addr, "del", index=idx,
                       address=str(iface.ip), prefixlen=iface.network.prefixlen)
            return True
        except (LinkNotFound, errors.KernelError):
            # EADDRNOTAVAIL when the address is not there
            if missing_ok:
                return False
            raise

    def get_addresses(self, ifname) -> list[str]:
        return self._addresses(self._index(ifname))

    # -- routes ---------------------------------------------------------------
    def _route_spec(self, dst, gateway, ifname):
        fam = route_family(dst, gateway)
        spec = {"family": _FAMILY[fam], "dst": normalise_dst(dst)}
        if spec["dst"] == "default":
            spec["dst"] = "0.0.0.0/0" if fam == 4 else "::/0"
        if gateway:
            spec["gateway"] = gateway
        if ifname:
            spec["oif"] = self._index(ifname)
        return spec

    def add_route(self, dst, gateway=None, ifname=None, netns=None) -> None:
        if netns and netns != self.netns_path:
            with self.for_netns(netns) as other:
                return other.add_route(dst, gateway, ifname)
        spec = self._route_spec(dst, gateway, ifname)
        self._call(f"add route {dst}" + (f" via {gateway}" if gateway else "")
                   + (f" dev {ifname}" if ifname else ""), self.ipr.route, "replace", **spec)

    def delete_route(self, dst, gateway=None, ifname=None, family=4, missing_ok=True) -> bool:
        try:
            spec = self._route_spec(dst, gateway, ifname)
            self._call(f"delete route {dst}", self.ipr.route, "del", **spec)
            return True
        except (LinkNotFound, errors.KernelError):
            if missing_ok:
                return False
            raise

    def list_routes(self, family=4) -> list[Route]:
        names = self._names()
        out = []
        for r in self._call("list routes", self.ipr.route, "dump", family=_FAMILY[family], table=254):
            dst = r.get("dst")
            out.append(Route(dst=f"{dst}/{r['dst_len']}" if dst else "default",
                             gateway=r.get("gateway") or "", ifname=names.get(r.get("oif"), ""),
                             family=family))
        return out
