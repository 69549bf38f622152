"""Attach / detach / check / gc: the CNI front end's verbs on top of the Controller.

They run the same Controller verbs dockerd runs, in dockerd's order, and then
do dockerd's own remaining part through ``cnm.sandbox``::

    attach   request_address (v4, v6)  -> create_endpoint -> join
             -> sandbox.attach (move into the netns, rename, MAC, addresses, routes)
             -> program_external_connectivity (ports; the firewall sync)
    detach   revoke_external_connectivity -> sandbox.detach -> leave
             -> delete_endpoint -> release_address

``attach`` undoes what it did when a later step fails (``ExitStack``);
``detach`` runs every step even when an earlier one finds nothing (the netns,
the interface, the endpoint record may each be gone already) and reports the
first real error at the end, so a second DEL, or one with ``CNI_NETNS=""``,
succeeds.

Identity: an attachment is (network, container ID, interface name); its
endpoint ID is ``sha256(network id : container id : ifname)`` (hex), so the
driver's link names derive from it and DEL needs nothing but the three.
The pools an endpoint's addresses came from are kept in its options
(``pynet.cni.pools``) so the addresses go back to the right pool.

Crash safety: ``attach`` allocates the addresses for the attachment's holder
(``endpoint/<net>/<ep>``) and writes the attachment record (controller.py,
ATTACHMENTS: pools, container, interface, the process making it) in ONE
commit, before the driver creates anything.  A SIGKILL runs no undo, and the
endpoint record only exists once the driver made the veth, so ``detach``
without an endpoint record still releases everything that holder holds and
deletes the links tagged for that endpoint ID; GC and the daemon's
``restore()`` do the same for attachments whose process is gone.  ``detach``
releases the addresses and deletes the attachment record in one commit too,
last, so a holder never outlives every record that names it on the new path.
"""
from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Iterable, Optional

from pynet import errors
from pynet.cnm import sandbox
from pynet.cnm.controller import endpoint_holder
from pynet.cnm.model import Endpoint, IPData, JoinInfo, Network, PortMapping

log = logging.getLogger("pynet.attach")

OPT_POOLS = "pynet.cni.pools"           # {"4": pool id, "6": pool id}
OPT_OWNER = "pynet.cni"                 # "1": made by attach()
LOCAL_DEFAULT = "LocalDefault"


def endpoint_id(network_id: str, container_id: str, ifname: str) -> str:
    return hashlib.sha256(f"{network_id}:{container_id}:{ifname}".encode()).hexdigest()


def pool_id_of(controller, d: IPData, txn=None) -> str:
    """The IPAM pool behind a network's subnet: recorded for CNI-made networks;
    for Docker-made ones the pool Docker asked pynet's IPAM for (LocalDefault),
    when Docker used pynet as its IPAM driver."""
    if d.pool_id:
        return d.pool_id
    pid = f"{d.address_space or LOCAL_DEFAULT}/{ipaddress.ip_network(d.pool, strict=False)}"
    try:
        controller.ipam.get_pool(pid, txn=txn)
    except errors.NotFound:
        raise errors.InvalidParameter(
            f"the addresses of subnet {d.pool} are not managed by pynet's IPAM (a Docker network "
            f"made without --ipam-driver pynet); CNI cannot allocate from it") from None
    return pid


@dataclass
class Attachment:
    network: Network
    endpoint: Endpoint
    join: JoinInfo
    link: object = None                      # LinkInfo inside the sandbox
    routes: list = field(default_factory=list)  # [(dst, gw)] added inside the sandbox


def _route_list(routes: Iterable, gw4: str, gw6: str) -> list[tuple[str, str]]:
    """ipam-style routes ``{"dst", "gw"?}``: a route without gw goes via the
    network's gateway of its family (as the reference plugins do)."""
    out = []
    for r in routes or ():
        dst = r.get("dst") if isinstance(r, dict) else str(r)
        gw = (r.get("gw") if isinstance(r, dict) else "") or ""
        try:
            net = ipaddress.ip_network(dst, strict=False)
        except (TypeError, ValueError):
            raise errors.InvalidParameter(f"invalid route destination {dst!r}") from None
        if not gw:
            gw = gw4 if net.version == 4 else gw6
        out.append((str(net), gw))
    return out


def attach(controller, network: Network, container_id: str, ifname: str, netns_path: str, *,
           addresses: Optional[dict] = None, mac: str = "", ports: Iterable[PortMapping] = (),
           default_route: bool = True, routes: Iterable = (), options: Optional[dict] = None,
           netlink=None) -> Attachment:
    """Attach ``container_id``'s interface ``ifname`` in ``netns_path`` to ``network``.

    addresses: {4: "10.1.0.7", 6: "fd00::7"} -- explicit addresses (the ``ips``
    capability); otherwise the next free ones of the network's pools.
    default_route: add default routes via the network's gateways.
    routes: extra routes inside the sandbox, ``{"dst", "gw"?}``.
    """
    c = controller
    nid = network.id
    eid = endpoint_id(nid, container_id, ifname)
    addresses = dict(addresses or {})
    # a driver whose addresses must be unique beyond this host (the overlay)
    # picks them itself; the local IPAM then records the picked address
    pick = getattr(c.driver_for(network), "pick_address", None)
    with contextlib.ExitStack() as undo:
        # -- request_address, per family (dockerd asks IPAM before CreateEndpoint),
        # checked first, then allocated with the attachment record in one commit
        requests: list[tuple[int, str, str]] = []
        for fam, datas in ((4, network.ipv4), (6, network.ipv6)):
            want = addresses.pop(fam, "") or ""
            if not datas:
                if want:
                    raise errors.InvalidAddress(f"network {network.name or nid[:12]} has no IPv{fam} subnet "
                                                f"for the requested address {want}")
                continue
            d = datas[0]
            if want:
                subnet = ipaddress.ip_network(d.pool, strict=False)
                ip = ipaddress.ip_interface(want if "/" in want else f"{want}/{subnet.prefixlen}")
                if ip.ip not in subnet:
                    raise errors.InvalidAddress(f"requested address {ip.ip} is outside subnet {subnet}")
                want = str(ip.ip)
            if pick is not None:
                want = pick(network, eid, fam, want)
                undo.callback(c.driver_for(network).unpick_address, network, eid)
            requests.append((fam, pool_id_of(c, d), want))
        if addresses:
            raise errors.InvalidAddress(f"unexpected address families in request: {sorted(addresses)}")
        cidrs = c.begin_attachment(nid, eid, requests, container_id=container_id, ifname=ifname)
        undo.callback(c.release_attachment, nid, eid)
        got = {fam: (pid, cidrs[fam]) for fam, pid, _ in requests}
        opts = dict(options or {})
        opts[OPT_OWNER] = "1"
        opts[OPT_POOLS] = {str(f): pid for f, (pid, _) in got.items()}
        # -- create_endpoint
        ep = c.create_endpoint(nid, eid, address=got.get(4, ("", ""))[1],
                               address_v6=got.get(6, ("", ""))[1], mac=mac, options=opts,
                               container_id=container_id, ifname=ifname)
        undo.callback(c.delete_endpoint, nid, eid)
        # -- join
        info = c.join(nid, eid, netns_path)
        undo.callback(c.leave, nid, eid)
        # -- dockerd's part: into the sandbox
        gw4 = info.gateway if default_route else ""
        gw6 = info.gateway_v6 if default_route else ""
        extra = _route_list(routes, network.gateway_v4, network.gateway_v6)
        extra = [(dst, gw) for dst, gw in extra
                 if not ((dst == "0.0.0.0/0" and gw4 and gw == gw4) or (dst == "::/0" and gw6 and gw == gw6))]
        link = sandbox.attach(netns_path, info.src_name, ifname,
                              addresses=[a for a in (ep.address, ep.address_v6) if a],
                              mac=None, gateway=gw4 or None, gateway_v6=gw6 or None,
                              routes=[{"dst": d, "gw": g} for d, g in extra], netlink=netlink)
        undo.callback(sandbox.detach, netns_path, ifname, netlink)
        # -- program_external_connectivity (ports; the firewall)
        ep = c.program_external_connectivity(nid, eid, ports=list(ports))
        undo.pop_all()
    all_routes = ([("0.0.0.0/0", gw4)] if gw4 else []) + ([("::/0", gw6)] if gw6 else []) + extra
    return Attachment(network=network, endpoint=ep, join=info, link=link, routes=all_routes)


def find(controller, network: Network, container_id: str, ifname: str) -> Optional[Endpoint]:
    try:
        return controller.endpoint(network.id, endpoint_id(network.id, container_id, ifname))
    except errors.NotFound:
        return None


def detach(controller, network: Optional[Network], container_id: str, ifname: str,
           netns_path: str = "", netlink=None) -> bool:
    """Undo ``attach``; True if pynet had a record of it.  Every step tolerates
    what is already gone; the first real error is raised after all steps ran."""
    if network is None:
        return False
    ep = find(controller, network, container_id, ifname)
    if ep is None:
        # An ADD killed before its endpoint record was written: its addresses
        # (held by the holder the endpoint ID names) and its tagged link.
        left = controller.forget_attachment(network, endpoint_id(network.id, container_id, ifname))
        return bool(left.get("record") or left["addresses"] or left["links"])
    return detach_endpoint(controller, network, ep, netns_path, netlink=netlink)


def detach_endpoint(controller, network: Network, ep: Endpoint, netns_path: str = "",
                    netlink=None) -> bool:
    c = controller
    nid, eid = network.id, ep.id
    failures: list[BaseException] = []

    def step(fn, *a):
        try:
            fn(*a)
        except errors.NotFound:
            pass
        except Exception as e:  # noqa: BLE001 -- keep going, report at the end
            log.warning("detach %s: %s: %s", eid[:12], getattr(fn, "__name__", fn), e)
            failures.append(e)

    if ep.external and ep.ports:
        step(c.revoke_external_connectivity, nid, eid)
    # the namespace the runtime names, else the one recorded at join time
    ns = netns_path or (ep.sandbox_key if ep.sandbox_key not in ("", "-") else "")
    if ns and ep.ifname:
        step(sandbox.detach, ns, ep.ifname, netlink)
    step(c.leave, nid, eid)
    step(c.delete_endpoint, nid, eid)
    # the addresses and the attachment record, one commit, last: a DEL killed
    # before it leaves the record, so the next DEL (or GC) still finds them
    pools = (ep.options or {}).get(OPT_POOLS) or {}
    addrs = [(pools[fam], addr.split("/")[0]) for fam, addr in (("4", ep.address), ("6", ep.address_v6))
             if addr and pools.get(fam)]
    step(c.release_attachment, nid, eid, (), addrs)
    if failures:
        raise failures[0]
    return True


def join_gateways(controller, network: Network) -> tuple[str, str]:
    """(IPv4, IPv6) gateways a join on ``network`` hands the sandbox."""
    drv = (getattr(controller, "drivers", None) or {}).get(network.driver)
    gateways = getattr(drv, "gateways", None)
    if gateways is not None:
        return gateways(network)
    if network.internal:
        return "", ""
    return network.gateway_v4, network.gateway_v6


def check(controller, network: Network, container_id: str, ifname: str, netns_path: str, *,
          default_route: bool = True, routes: Iterable = (), expect_ips: Iterable[str] = (),
          netlink=None) -> Endpoint:
    """CHECK: what ``attach`` made is still there -- the record, the interface
    (MAC, addresses, up), the routes, the IPAM reservations and the firewall
    rules.  Raises NotFound / Conflict with one readable line."""
    c = controller
    ep = find(c, network, container_id, ifname)
    if ep is None:
        raise errors.EndpointNotFound(f"pynet has no attachment of container {container_id} "
                                      f"interface {ifname} on network {network.name or network.id[:12]}")
    link = sandbox.inspect(netns_path, ifname, netlink=netlink)
    problems = []
    if ep.mac and link.mac and link.mac.lower() != ep.mac.lower():
        problems.append(f"{ifname} has MAC {link.mac}, expected {ep.mac}")
    have = {str(ipaddress.ip_interface(a)) for a in link.addresses}
    for a in [ep.address, ep.address_v6] + list(expect_ips):
        if a and str(ipaddress.ip_interface(a)) not in have:
            problems.append(f"{ifname} lacks address {a}")
    if link.state != "up":
        problems.append(f"{ifname} is down")
    # routes inside the sandbox
    host = netlink
    if host is None:
        from pynet.netlink.pyroute import PyrouteNetlink
        host = PyrouteNetlink()
    inner = host.for_netns(netns_path)
    try:
        want = _route_list(routes, network.gateway_v4, network.gateway_v6)
        if default_route:
            # the default routes attach() added: via the gateways the driver's
            # join gave, not the network's (a macvlan on an isolated parent has none)
            gw4, gw6 = join_gateways(c, network)
            want += [("0.0.0.0/0", gw4)] if gw4 and ep.address else []
            want += [("::/0", gw6)] if gw6 and ep.address_v6 else []
        for fam in (4, 6):
            fam_want = [(d, g) for d, g in want if ipaddress.ip_network(d).version == fam]
            if not fam_want:
                continue
            present = {(("0.0.0.0/0" if fam == 4 else "::/0") if r.dst == "default" else r.dst,
                        r.gateway or "") for r in inner.list_routes(fam)}
            for d, g in fam_want:
                if (d, g) not in present and not (not g and any(pd == d for pd, _ in present)):
                    problems.append(f"route {d}{' via ' + g if g else ''} is missing in the sandbox")
    finally:
        inner.close()
    # host side: the driver's view (a bridge: the host veth is there, on the bridge)
    drv = (getattr(c, "drivers", None) or {}).get(network.driver)
    check_host = getattr(drv, "check_endpoint", None)
    if check_host is not None:
        problems += check_host(network, ep, host)
    # IPAM reservations
    pools = (ep.options or {}).get(OPT_POOLS) or {}
    for fam, addr in (("4", ep.address), ("6", ep.address_v6)):
        if addr and pools.get(fam):
            try:
                held = set(c.ipam.allocated(pools[fam]))
            except errors.NotFound:
                held = set()
            if addr.split("/")[0] not in held:
                problems.append(f"address {addr} is not reserved in pool {pools[fam]}")
    # firewall
    fw = c.firewall
    if fw is not None and hasattr(fw, "diff"):
        d = fw.diff(c.networks(), c.endpoints())
        if d:
            problems.append("firewall rules differ from the desired ones: " + " | ".join(d.splitlines()[:4]))
    if problems:
        raise errors.Conflict("CHECK failed: " + "; ".join(problems))
    return ep


def _held_by_attachments(c, pool_id: str, network_id: str, eids: set) -> set:
    """Addresses of ``pool_id`` the attachments ``eids`` (in flight) hold."""
    if not eids:
        return set()
    try:
        held = c.ipam.holders(pool_id)["addresses"]
    except errors.NotFound:
        return set()
    mine = {endpoint_holder(network_id, e) for e in eids}
    return {a for a, hs in held.items() if mine & set(hs)}


def gc(controller, network: Network, valid: set[tuple[str, str]], netlink=None,
       instance: str = "", extra_held: Iterable[str] = ()) -> dict:
    """GC: remove every attachment of ``network`` made through CNI that is not in
    ``valid`` ({(container id, ifname)}), then what no record explains: veths
    on the network's bridge tagged for this instance but matching no endpoint,
    and IPAM reservations of the network's pools (CNI-made networks) that no
    endpoint, gateway or aux address holds (``extra_held``: addresses other
    holders keep, e.g. pynet-ipam's records).  Returns what was removed."""
    c = controller
    removed = {"endpoints": [], "addresses": [], "links": []}
    failures = []
    # attachments of killed ADDs (no endpoint record, their process gone);
    # those still in flight are not leaks (their links and addresses stay)
    orphans, in_flight = c.forget_orphan_attachments(network.id)
    removed["addresses"] += orphans["addresses"]
    removed["links"] += orphans["links"]
    for ep in c.endpoints(network.id):
        if (ep.options or {}).get(OPT_OWNER) != "1" or not ep.container_id:
            continue
        if (ep.container_id, ep.ifname) in valid:
            continue
        try:
            detach_endpoint(c, network, ep, netlink=netlink)
            removed["endpoints"].append(f"{ep.container_id}/{ep.ifname}")
        except Exception as e:  # noqa: BLE001
            failures.append(e)
    # what remains recorded is explained, ADDs begun since the first look included
    in_flight |= {a["endpoint_id"] for a in c.attachments(network.id)}
    # links nobody knows (an interrupted ADD, a lost record)
    if netlink is not None and instance:
        known = {e.id for e in c.endpoints()} | {n.id for n in c.networks()} | in_flight
        drv = (getattr(c, "drivers", None) or {}).get(network.driver)
        tag = f"{getattr(drv, 'alias_prefix', 'pynet')}:{instance}:"   # the overlay tags its own
        orphans = getattr(drv, "orphan_links", None)
        links = [(link, link.alias[len(tag):]) for link in netlink.list_links(alias_prefix=tag)]
        # which of them the driver's network left (a bridge: veths on its bridge)
        for link in (orphans(network, links, known) if orphans is not None and links else []):
            netlink.delete_link(link.name, missing_ok=True)
            removed["links"].append(link.name)
    # leaked reservations: only pools the CNI path owns
    if network.created_by == "cni":
        eps = c.endpoints(network.id)
        for datas in (network.ipv4, network.ipv6):
            for d in datas:
                if not d.pool_id:
                    continue
                held = {e.ip for e in eps if e.ip} | {e.ip6 for e in eps if e.ip6}
                held |= _held_by_attachments(c, d.pool_id, network.id, in_flight)
                held |= {str(ipaddress.ip_interface(a).ip) if "/" in a else a for a in extra_held}
                if d.gateway:
                    held.add(d.gateway.split("/")[0])
                for aux in (d.aux_addresses or {}).values():
                    held.add(aux.split("/")[0])
                removed["addresses"] += c.ipam.reconcile(d.pool_id, held)
    if failures:
        raise failures[0]
    return removed
