"""The Netlink interface: link, address and route changes in domain verbs.

Drivers and the sandbox speak these verbs; they never see pyroute2 arguments.
Two implementations:

- :class:`pynet.netlink.pyroute.PyrouteNetlink` -- the kernel, through pyroute2;
- :class:`pynet.netlink.fake.FakeNetlink` -- a stateful model of the kernel's
  answers for unit tests (links, masters, addresses, namespaces, routes,
  existence errors).

Each instance works in ONE network namespace (``netns_path=None`` = the
namespace of the calling process); :meth:`Netlink.for_netns` opens the same
implementation in another one.  A missing namespace is never created: opening
one raises :class:`NetnsNotFound`.

Errors: a missing link raises :class:`LinkNotFound` (a ``NotFound``), a name
already taken :class:`LinkExists` (a ``Conflict``), a bad name
``InvalidParameter``; anything else the kernel refuses is a ``KernelError``
with one readable line.
"""
from __future__ import annotations

import abc
import ipaddress
import random
from dataclasses import asdict, dataclass, field
from typing import Optional

from pynet import errors

IFNAMSIZ = 15  # bytes, without the trailing NUL


class LinkNotFound(errors.NotFound):
    pass


class LinkExists(errors.Conflict):
    pass


class NetnsNotFound(errors.SandboxNotFound):
    pass


@dataclass
class LinkInfo:
    """What ``get_link``/``list_links`` answer.  Attribute or key access."""
    name: str
    kind: str = ""            # "bridge", "veth", "macvlan", "vxlan", "" (physical/unknown)
    index: int = 0
    master: str = ""          # name of the master device ("" = none)
    mtu: int = 1500
    mac: str = ""
    alias: str = ""
    state: str = "down"       # "up" (admin up) | "down"
    addresses: list[str] = field(default_factory=list)   # CIDR form
    peer: str = ""            # veth: the peer's name when it is in the same namespace

    def __getitem__(self, key):
        return getattr(self, key)

    def get(self, key, default=None):
        return getattr(self, key, default)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Route:
    dst: str                  # "default" or CIDR
    gateway: str = ""
    ifname: str = ""
    family: int = 4


def check_ifname(name: str) -> str:
    """Refuse names the kernel would refuse, with a readable line."""
    if not isinstance(name, str) or not name:
        raise errors.InvalidParameter("interface name is empty")
    if len(name.encode()) > IFNAMSIZ:
        raise errors.InvalidParameter(
            f"interface name {name!r} is {len(name.encode())} bytes long; the kernel allows {IFNAMSIZ}")
    if name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name):
        raise errors.InvalidParameter(f"interface name {name!r} contains a character the kernel refuses")
    return name


def check_mac(mac: str) -> str:
    """``2:42:A:0:0:1`` -> ``02:42:0a:00:00:01``; InvalidAddress otherwise."""
    parts = mac.replace("-", ":").split(":") if isinstance(mac, str) else []
    try:
        if len(parts) != 6 or not all(len(p) in (1, 2) for p in parts):
            raise ValueError
        return ":".join(f"{int(p, 16):02x}" for p in parts)
    except ValueError:
        raise errors.InvalidAddress(f"invalid MAC address {mac!r}") from None


def random_mac() -> str:
    """A random locally administered unicast MAC."""
    b = [random.randint(0, 255) for _ in range(6)]
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def parse_cidr_interface(cidr: str):
    try:
        if "/" not in cidr:
            raise ValueError("not in CIDR form")
        return ipaddress.ip_interface(cidr)
    except (ValueError, TypeError) as e:
        raise errors.InvalidAddress(f"invalid address {cidr!r}: {e}") from None


class Netlink(abc.ABC):
    """Domain verbs on links, addresses and routes of one network namespace."""

    netns_path: Optional[str] = None

    # -- namespaces -----------------------------------------------------------
    @abc.abstractmethod
    def for_netns(self, netns_path: Optional[str]) -> "Netlink":
        """The same implementation working in another namespace (path).
        Raises NetnsNotFound when it does not exist."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- links ----------------------------------------------------------------
    @abc.abstractmethod
    def ensure_bridge(self, name: str, mtu: Optional[int] = None, mac: Optional[str] = None,
                      alias: Optional[str] = None) -> LinkInfo:
        """Create the bridge unless it exists (idempotent); apply the given
        MTU/MAC/alias either way.  A new bridge gets a random MAC when none is
        given (so it does not follow its ports').  An existing link of another
        kind raises LinkExists."""

    @abc.abstractmethod
    def add_veth(self, name: str, peer: str, mtu: Optional[int] = None,
                 peer_mac: Optional[str] = None, alias: Optional[str] = None,
                 mac: Optional[str] = None) -> None:
        """Create a veth pair (both ends down).  ``alias`` tags ``name``."""

    @abc.abstractmethod
    def add_macvlan(self, name: str, parent: str, mode: str = "bridge", mtu: Optional[int] = None,
                    mac: Optional[str] = None, alias: Optional[str] = None) -> None: ...

    @abc.abstractmethod
    def add_vlan(self, name: str, parent: str, vlan_id: int, mtu: Optional[int] = None,
                 alias: Optional[str] = None) -> None:
        """Create an 802.1q sub-interface ``name`` of ``parent`` with VLAN ID
        ``vlan_id`` (1..4094), left down.  A missing parent is LinkNotFound."""

    @abc.abstractmethod
    def add_dummy(self, name: str, mtu: Optional[int] = None,
                  alias: Optional[str] = None) -> None:
        """Create a dummy link (left down): an isolated parent for macvlan."""

    @abc.abstractmethod
    def add_vxlan(self, name: str, vni: int, port: int = 4789, local: Optional[str] = None,
                  dev: Optional[str] = None, learning: bool = False, mtu: Optional[int] = None,
                  alias: Optional[str] = None, proxy: bool = False) -> None:
        """A VXLAN device (left down).  ``learning=False`` (``nolearning``): the
        forwarding database holds only what is programmed; ``proxy``: the device
        answers ARP/ND from its neighbour table, so no inner ARP leaves the host."""

    def vxlan_info(self, name: str) -> dict:
        """{"vni", "port", "local", "learning", "proxy"} of a VXLAN device."""
        raise NotImplementedError

    # -- the VXLAN device's forwarding database and neighbour table (overlay) --
    # Entries are permanent (``nud permanent``): pynet's control loop owns them.
    # The all-zero MAC is the flood entry, one per remote VTEP (``append``);
    # any other MAC has one destination (``replace``).  Deletes take
    # missing_ok, so an event applied twice changes nothing.
    FLOOD_MAC = "00:00:00:00:00:00"

    def fdb_replace(self, dev: str, mac: str, dst: str, index: Optional[int] = None) -> None:
        """``bridge fdb replace MAC dev DEV dst DST self permanent`` (the
        all-zero MAC: ``append``, so every VTEP keeps its flood entry).
        ``index``: DEV's ifindex when the caller has just looked it up
        (``link_index``): one request less per entry on the agent's path."""
        raise NotImplementedError

    def fdb_delete(self, dev: str, mac: str, dst: Optional[str] = None, missing_ok: bool = True) -> bool:
        raise NotImplementedError

    def fdb_list(self, dev: str) -> list[tuple[str, str]]:
        """The device's own (``self``) permanent entries with a destination:
        [(mac, dst)], sorted."""
        raise NotImplementedError

    def neigh_replace(self, dev: str, ip: str, mac: str, index: Optional[int] = None) -> None:
        """``ip neigh replace IP lladdr MAC dev DEV nud permanent`` (``index``: as fdb_replace)."""
        raise NotImplementedError

    def neigh_delete(self, dev: str, ip: str, missing_ok: bool = True) -> bool:
        raise NotImplementedError

    def neigh_list(self, dev: str) -> list[tuple[str, str]]:
        """The device's permanent neighbour entries: [(ip, mac)], sorted."""
        raise NotImplementedError

    @abc.abstractmethod
    def delete_link(self, name: str, missing_ok: bool = True) -> bool:
        """Delete a link (a veth takes its peer along).  True if it existed."""

    @abc.abstractmethod
    def link_exists(self, name: str) -> bool: ...

    @abc.abstractmethod
    def get_link(self, name: str) -> LinkInfo:
        """Raises LinkNotFound."""

    def link_index(self, name: str) -> Optional[int]:
        """The link's ifindex, None when there is none: the one fact the
        overlay agent's passes need, without get_link's address and
        master/peer look-ups (a real backend answers it in one request)."""
        if not self.link_exists(name):
            return None
        return self.get_link(name).index

    @abc.abstractmethod
    def list_links(self, alias_prefix: Optional[str] = None) -> list[LinkInfo]: ...

    def link_mac(self, name: str) -> str:
        """The MAC of a link (raises LinkNotFound): ``get_link(name).mac`` without the rest
        (the CNI ADD result names the host's interfaces by MAC; ``get_link`` also lists the
        link's addresses, which costs a dump of every address of a busy host)."""
        return self.get_link(name).mac

    @abc.abstractmethod
    def set_master(self, ifname: str, master: Optional[str]) -> None:
        """Enslave ``ifname`` to ``master``; ``None`` releases it."""

    @abc.abstractmethod
    def set_hairpin(self, ifname: str, on: bool = True) -> None:
        """Hairpin mode of a bridge port: frames may leave by the port they
        came in on, which a container reaching its own published port
        through the host's address needs (no userland proxy)."""

    @abc.abstractmethod
    def set_up(self, ifname: str) -> None: ...

    @abc.abstractmethod
    def set_down(self, ifname: str) -> None: ...

    @abc.abstractmethod
    def set_mtu(self, ifname: str, mtu: int) -> None: ...

    @abc.abstractmethod
    def set_mac(self, ifname: str, mac: str) -> None: ...

    @abc.abstractmethod
    def set_alias(self, ifname: str, alias: str) -> None: ...

    @abc.abstractmethod
    def rename(self, ifname: str, new_name: str) -> None:
        """The link must be down (the kernel refuses to rename a running one)."""

    @abc.abstractmethod
    def move_to_netns(self, ifname: str, netns_path: str, new_name: Optional[str] = None) -> None:
        """Move a link into the namespace at ``netns_path`` (and rename it
        there).  The kernel drops its addresses, master and up state."""

    # -- addresses ------------------------------------------------------------
    @abc.abstractmethod
    def ensure_address(self, ifname: str, cidr: str, nodad: bool = False) -> bool:
        """Add ``cidr`` (e.g. ``10.1.0.1/24``) unless present.  True if added."""

    @abc.abstractmethod
    def remove_address(self, ifname: str, cidr: str, missing_ok: bool = True) -> bool: ...

    @abc.abstractmethod
    def get_addresses(self, ifname: str) -> list[str]: ...

    # -- routes ---------------------------------------------------------------
    @abc.abstractmethod
    def add_route(self, dst: str, gateway: Optional[str] = None, ifname: Optional[str] = None,
                  netns: Optional[str] = None) -> None:
        """Add or replace a route (``dst`` = ``default`` or CIDR; the family
        follows dst/gateway).  ``netns`` runs it in another namespace."""

    @abc.abstractmethod
    def delete_route(self, dst: str, gateway: Optional[str] = None, ifname: Optional[str] = None,
                     family: int = 4, missing_ok: bool = True) -> bool: ...

    @abc.abstractmethod
    def list_routes(self, family: int = 4) -> list[Route]:
        """Routes of the main table."""


def check_vlan_id(vlan_id) -> int:
    """1..4094 (0 and 4095 are reserved by 802.1q); InvalidParameter otherwise."""
    try:
        vid = int(str(vlan_id).strip())
    except (TypeError, ValueError):
        raise errors.InvalidParameter(f"invalid VLAN ID {vlan_id!r}: not a number") from None
    if not 1 <= vid <= 4094:
        raise errors.InvalidParameter(f"invalid VLAN ID {vid}: must be between 1 and 4094")
    return vid


def route_family(dst: str, gateway: Optional[str]) -> int:
    if gateway:
        try:
            return ipaddress.ip_address(gateway).version
        except ValueError:
            raise errors.InvalidAddress(f"invalid gateway {gateway!r}") from None
    if dst in ("default", "default4"):
        return 4
    if dst == "default6":
        return 6
    try:
        return ipaddress.ip_network(dst, strict=False).version
    except ValueError:
        raise errors.InvalidAddress(f"invalid route destination {dst!r}") from None


def normalise_dst(dst: str) -> str:
    if dst in ("default", "default4", "default6", "0.0.0.0/0", "::/0"):
        return "default"
    return str(ipaddress.ip_network(dst, strict=False))


__all__ = ["Netlink", "LinkInfo", "Route", "LinkNotFound", "LinkExists", "NetnsNotFound",
           "check_ifname", "check_mac", "check_vlan_id", "random_mac", "IFNAMSIZ"]
