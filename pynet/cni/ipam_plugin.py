"""``pynet-ipam``: a CNI IPAM plugin on pynet's IPAM, for any interface plugin
(the reference bridge, macvlan, ipvlan, ...) -- the role host-local plays.

Configuration (the ``ipam`` section of the plugin config)::

    {"type": "pynet-ipam", "ranges": [[{"subnet": "10.1.0.0/24", "gateway"?: "10.1.0.1"}],
                                      [{"subnet": "fd00:1::/64"}]],
     "routes": [{"dst": "0.0.0.0/0"}], "dns": {...}, "pynet": {"stateDir": ...}}

Pools: when a pynet network of the conflist's ``name`` exists (CNI- or
Docker-made), addresses come from its pools, so a reference-bridge conflist
and a pynet-bridge one of the same name share one address space.  Otherwise
the plugin keeps its own pools for the name (``cni/ipam-pools/<name>``, in
LocalDefault, so they never overlap a Docker network's); the gateway (given,
or the first address) is reserved.  Allocations are recorded per attachment
(``cni/ipam/<name>/<container id>/<ifname>``), in the transaction that
allocates them and with the attachment as their IPAM holder
(``cni-ipam/<name>/<container id>/<ifname>``; the own pools' holder is
``cni-ipam/<name>``): a repeated ADD answers the same addresses, DEL releases
them, GC releases those of attachments not in the valid list, and no other
runtime's release or reconcile frees them.  The ``ips`` capability / ``CNI_ARGS IP=`` ask for an address.
"""
from __future__ import annotations

import ipaddress

from pynet import errors
from pynet.cni import spec
from pynet.cni.plugin import (GATEWAY_OPTS, CniError, check_route_gateways, find_network,
                              parse_dns, parse_ranges, parse_routes, requested_addresses)
from pynet.cnm import ipam_records as records


def _conf(conf: dict) -> dict:
    """The ``ipam`` section, its values checked before anything is allocated
    (ranges, routes and dns are refused here, not after a commit)."""
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict):
        raise CniError(spec.INVALID_CONFIG, "the configuration has no ipam section")
    parse_routes(ipam.get("routes"), parse_ranges(ipam))
    parse_dns(ipam.get("dns"), "ipam.dns")
    return ipam


def pools_for(ctx, name: str, ipam: dict, create: bool, txn=None) -> dict:
    """{family: {"pool_id", "subnet", "gateway"}} for the network ``name``."""
    from pynet.cnm.attach import pool_id_of

    c = ctx.controller
    ranges = parse_ranges(ipam)
    net = find_network(c, name, txn=txn)
    if net is not None:
        out = {}
        for fam, datas in ((4, net.ipv4), (6, net.ipv6)):
            if datas:
                d = datas[0]
                out[fam] = {"pool_id": pool_id_of(c, d, txn=txn), "subnet": str(ipaddress.ip_network(d.pool, strict=False)),
                            "gateway": d.gateway.split("/")[0] if d.gateway else ""}
        _agree(name, ranges, out, f"pynet network {name}")
        return out
    have = records.own_pools(c, name, txn)
    if have is not None:
        _agree(name, ranges, have, "its pynet-ipam pools")
        return have
    if not create:
        return {}
    if not ranges:
        raise CniError(spec.INVALID_CONFIG, "pynet-ipam needs ipam.ranges (or subnet)")
    # The pools, their gateways and the record naming them: one commit (the
    # store transaction also keeps a second ADD from making them twice).
    want = {fam: (r.subnet, r.gateway) for fam, r in ranges.items()}
    return c.txn(lambda t: records.make_own_pools(c, name, want, GATEWAY_OPTS, t), txn)


def _agree(name: str, ranges: dict, have: dict, what: str) -> None:
    if not ranges:
        return
    for fam in (4, 6):
        want = ranges.get(fam)
        theirs = have.get(fam)
        if (want.subnet if want else None) != (theirs["subnet"] if theirs else None):
            raise CniError(spec.INVALID_CONFIG,
                           f"network {name}: IPv{fam} subnet {theirs['subnet'] if theirs else 'none'} of {what} "
                           f"differs from the conflist's {want.subnet if want else 'none'}")


def _result(rec: dict, pools: dict, routes: list, dns: dict) -> dict:
    ips = []
    for fam in ("4", "6"):
        a = (rec.get("addresses") or {}).get(fam)
        if a:
            p = pools.get(int(fam)) or {}
            ips.append({"address": a, "gateway": p.get("gateway", "")})
    return {"interfaces": [], "ips": ips, "routes": routes, "dns": dns}


def _dns(ipam: dict) -> dict:
    return parse_dns(ipam.get("dns"), "ipam.dns")


def cmd_add(ctx, conf: dict, args: spec.Args) -> dict:
    ipam = _conf(conf)
    name = conf["name"]
    # Everything the result needs is checked before anything is written, and
    # the pools, the allocation and the attachment record are one commit: a
    # refused ADD and an ADD killed halfway both leave nothing behind (DEL
    # and GC only know addresses through the record).
    wanted = requested_addresses(conf, args)
    ranges = parse_ranges(ipam)
    routes = parse_routes(ipam.get("routes"), ranges)
    dns = _dns(ipam)
    for fam, want in wanted.items():
        r = ranges.get(fam)
        if r and ipaddress.ip_address(want) not in ipaddress.ip_network(r.subnet):
            raise CniError(spec.INVALID_CONFIG, f"requested address {want} is outside {r.subnet}")
    c = ctx.controller
    cid, ifname = args.container_id, args.ifname
    holder = records.holder(name, cid, ifname)

    def add(t):  # may run again on a conflict: no side effects but the txn's
        pools = pools_for(ctx, name, ipam, create=True, txn=t)
        # the pools of an existing network when the conflist names no subnet:
        # a route's gateway must be on-link there too (raising here undoes the commit)
        check_route_gateways(routes, {f: p["subnet"] for f, p in pools.items()}, name)
        have = records.allocation(c, name, cid, ifname, txn=t)
        if have is not None:
            return have, pools
        left = dict(wanted)
        got = {}
        for fam, p in sorted(pools.items()):
            want = left.pop(fam, "")
            if want and ipaddress.ip_address(want) not in ipaddress.ip_network(p["subnet"]):
                raise CniError(spec.INVALID_CONFIG, f"requested address {want} is outside {p['subnet']}")
            got[str(fam)] = c.request_address(p["pool_id"], want, holder=holder, txn=t)
        if left:
            raise CniError(spec.INVALID_CONFIG, f"no IPv{min(left)} range for the requested address")
        value = {"pools": {str(f): p["pool_id"] for f, p in pools.items()}, "addresses": got,
                 "container_id": cid, "ifname": ifname}
        records.record_allocation(c, name, cid, ifname, value, txn=t)
        return value, pools

    value, pools = c.txn(add)
    return _result(value, pools, routes, dns)


def cmd_del(ctx, conf: dict, args: spec.Args) -> None:
    _conf(conf)
    c = ctx.controller
    value = records.allocation(c, conf["name"], args.container_id, args.ifname)
    if value is not None:
        records.release_allocation(c, conf["name"], value)
    return None


def cmd_check(ctx, conf: dict, args: spec.Args) -> None:
    if not spec.at_least(conf["cniVersion"], "0.4.0"):
        raise CniError(spec.INCOMPATIBLE_VERSION, "config version does not allow CHECK")
    _conf(conf)
    c = ctx.controller
    value = records.allocation(c, conf["name"], args.container_id, args.ifname)
    if value is None:
        raise CniError(spec.UNKNOWN_CONTAINER, f"pynet-ipam has no allocation for container "
                                               f"{args.container_id} interface {args.ifname}")
    for fam, a in (value.get("addresses") or {}).items():
        pid = value["pools"][fam]
        try:
            held = set(c.ipam.allocated(pid))
        except errors.NotFound:
            held = set()
        if a.split("/")[0] not in held:
            raise CniError(spec.INVALID_CONFIG, f"address {a} is no longer reserved in pool {pid}")
    return None


def cmd_gc(ctx, conf: dict, args: spec.Args) -> None:
    from pynet.cni.plugin import valid_attachments

    if not spec.at_least(conf["cniVersion"], "1.1.0"):
        raise CniError(spec.INCOMPATIBLE_VERSION, "config version does not allow GC")
    _conf(conf)
    valid = valid_attachments(conf)
    c = ctx.controller
    for v in records.allocations(c, conf["name"]):
        if (v.get("container_id"), v.get("ifname")) not in valid:
            records.release_allocation(c, conf["name"], v)
    return None


def cmd_status(ctx, conf: dict, args: spec.Args) -> None:
    if not spec.at_least(conf["cniVersion"], "1.1.0"):
        raise CniError(spec.INCOMPATIBLE_VERSION, "config version does not allow STATUS")
    ipam = _conf(conf)
    try:
        pools = pools_for(ctx, conf["name"], ipam, create=False)
        for p in pools.values():
            if ctx.controller.ipam.get_pool(p["pool_id"])["free"] <= 0:
                raise CniError(spec.PLUGIN_NOT_AVAILABLE, f"no free address left in {p['subnet']}")
    except CniError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CniError(spec.PLUGIN_NOT_AVAILABLE, f"pynet-ipam is not usable: {e}") from None
    return None


VERBS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}
