"""The namespace side of a join: what dockerd does after Join, for the CNI
path and the scenario runner (dockerd does it itself on the Docker path).

    attach(netns_path, src_name, ifname, addresses, mac, mtu, gateway, gateway_v6, routes)
        move ``src_name`` from the host namespace into ``netns_path``, rename
        it ``ifname``, set MAC/MTU, add addresses, bring up lo and the
        interface, add default routes via the gateway(s), then static routes.
        A failure halfway deletes the moved interface (its veth peer goes too).
    detach(netns_path, ifname)
        delete the interface inside the namespace; a missing namespace or
        interface is fine (CNI DEL must always finish).
    inspect(netns_path, ifname) -> LinkInfo     (CNI CHECK)
    create_netns(name) / delete_netns(name) / netns_path(name)
        named namespaces under /var/run/netns.

Every function takes ``netlink=`` (the host-side Netlink; default: a
PyrouteNetlink in the current namespace) so unit tests can use FakeNetlink.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
from typing import Iterable, Optional, Union

from pynet import errors
from pynet.cnm.model import StaticRoute
from pynet.netlink import LinkInfo, NetnsNotFound, check_ifname

NETNS_RUN_DIR = "/var/run/netns"

RouteSpec = Union[StaticRoute, dict, str]


def _host_netlink(netlink):
    if netlink is not None:
        return netlink
    from pynet.netlink.pyroute import PyrouteNetlink
    return PyrouteNetlink()


def _route(r: RouteSpec) -> tuple[str, str]:
    """(destination, next hop) of a StaticRoute, a dict (dst/gw, CNI style;
    destination/next_hop) or a bare CIDR."""
    if isinstance(r, StaticRoute):
        return r.destination, (r.next_hop if r.route_type == 0 else "")
    if isinstance(r, dict):
        dst = r.get("dst") or r.get("destination") or r.get("Destination")
        gw = r.get("gw") or r.get("next_hop") or r.get("NextHop") or ""
        if r.get("route_type", r.get("RouteType", 0)) == 1:
            gw = ""
        if not dst:
            raise errors.InvalidParameter(f"route {r!r} has no destination")
        return dst, gw
    return str(r), ""


def attach(netns_path: str, src_name: str, ifname: str, addresses: Iterable[str] = (),
           mac: Optional[str] = None, mtu: Optional[int] = None, gateway: Optional[str] = None,
           gateway_v6: Optional[str] = None, routes: Iterable[RouteSpec] = (),
           netlink=None) -> LinkInfo:
    """Returns the interface as it ends up inside the namespace (its MAC etc.)."""
    check_ifname(ifname)
    host = _host_netlink(netlink)
    try:
        inner = host.for_netns(netns_path)
    except NetnsNotFound:
        raise errors.SandboxNotFound(f"network namespace {netns_path} does not exist") from None
    try:
        if inner.link_exists(ifname):
            raise errors.Conflict(f"interface {ifname} already exists in {netns_path}")
        host.get_link(src_name)        # LinkNotFound with a readable line
        with contextlib.ExitStack() as undo:
            host.move_to_netns(src_name, netns_path, new_name=ifname)
            undo.callback(inner.delete_link, ifname, True)
            if mac:
                inner.set_mac(ifname, mac)
            if mtu:
                inner.set_mtu(ifname, mtu)
            for cidr in addresses or ():
                if not cidr:
                    continue
                v6 = ipaddress.ip_interface(cidr).version == 6
                inner.ensure_address(ifname, cidr, nodad=v6)
            if inner.link_exists("lo"):
                inner.set_up("lo")
            inner.set_up(ifname)
            if gateway:
                inner.add_route("default", gateway=gateway, ifname=ifname)
            if gateway_v6:
                inner.add_route("::/0", gateway=gateway_v6, ifname=ifname)
            for r in routes or ():
                dst, via = _route(r)
                inner.add_route(dst, gateway=via or None, ifname=ifname)
            info = inner.get_link(ifname)
            undo.pop_all()
            return info
    finally:
        inner.close()


def detach(netns_path: Optional[str], ifname: str, netlink=None) -> bool:
    """Delete ``ifname`` inside ``netns_path``.  True if something was deleted."""
    if not netns_path:
        return False
    if netlink is None and not os.path.exists(netns_path):
        return False
    host = _host_netlink(netlink)
    try:
        inner = host.for_netns(netns_path)
    except (NetnsNotFound, errors.NotFound):
        return False
    try:
        return inner.delete_link(ifname, missing_ok=True)
    finally:
        inner.close()


def inspect(netns_path: str, ifname: str, netlink=None) -> LinkInfo:
    host = _host_netlink(netlink)
    try:
        inner = host.for_netns(netns_path)
    except NetnsNotFound:
        raise errors.SandboxNotFound(f"network namespace {netns_path} does not exist") from None
    try:
        return inner.get_link(ifname)
    finally:
        inner.close()


# -- named namespaces -------------------------------------------------------------
def netns_path(name: str) -> str:
    return name if "/" in name else os.path.join(NETNS_RUN_DIR, name)


def create_netns(name: str) -> str:
    """Create /var/run/netns/<name> (Conflict if it exists); returns its path."""
    if not name or "/" in name or name in (".", ".."):
        raise errors.InvalidParameter(f"invalid namespace name {name!r}")
    path = netns_path(name)
    if os.path.exists(path):
        raise errors.Conflict(f"network namespace {name} already exists")
    from pyroute2 import config as pyroute2_config, netns
    # pyroute2 forks a child to unshare and bind-mount the namespace and waits
    # config.default_communicate_timeout (2 s) for its answer; forking a large process on a
    # loaded 2-core host can take longer ("no response from the child").  Wait longer, and on a
    # timeout remove what the killed child may have left at the path and try once more.
    pyroute2_config.default_communicate_timeout = max(pyroute2_config.default_communicate_timeout,
                                                      _NETNS_CHILD_TIMEOUT)
    for attempt in (1, 2):
        try:
            netns.create(name)
            return path
        except TimeoutError as e:
            _remove_half_made(path)
            if attempt == 2:
                raise errors.KernelError(f"cannot create network namespace {name}: {e}") from None
        except OSError as e:
            raise errors.KernelError(f"cannot create network namespace {name}: {e.strerror or e}") from None
    return path


_NETNS_CHILD_TIMEOUT = 20


def _remove_half_made(path: str) -> None:
    """What a create's child killed mid-way leaves: the mount point, maybe mounted."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(path.encode(), 2)          # MNT_DETACH; fails harmlessly when not mounted
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def delete_netns(name: str) -> bool:
    """Remove a named namespace; a missing one is fine.  True if removed."""
    path = netns_path(name)
    if not os.path.exists(path):
        return False
    from pyroute2 import netns
    try:
        netns.remove(os.path.basename(path) if os.path.dirname(path) == NETNS_RUN_DIR else path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise errors.KernelError(f"cannot delete network namespace {name}: {e.strerror or e}") from None
    return True
