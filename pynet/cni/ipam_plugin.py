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
from pynet.cni.plugin import (GATEWAY_OPTS, LOCAL_DEFAULT, CniError, check_route_gateways, find_network,
                              parse_dns, parse_ranges, parse_routes, requested_addresses)
from pynet.cni.ipam_records import ALLOC, POOLS


def _conf(conf: dict) -> dict:
    """The ``ipam`` section, its values checked before anything is allocated
    (ranges, routes and dns are refused here, not after a commit)."""
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict):
        raise CniError(spec.INVALID_CONFIG, "the configuration has no ipam section")
    parse_routes(ipam.get("routes"), parse_ranges(ipam))
    parse_dns(ipam.get("dns"), "ipam.dns")
    return ipam


def _key(name: str, cid: str, ifname: str) -> str:
    return f"{ALLOC}{name}/{cid}/{ifname}"


def pools_for(ctx, name: str, ipam: dict, create: bool) -> dict:
    """{family: {"pool_id", "subnet", "gateway"}} for the network ``name``."""
    from pynet.cnm.attach import pool_id_of

    c = ctx.controller
    ranges = parse_ranges(ipam)
    net = find_network(c, name)
    if net is not None:
        out = {}
        for fam, datas in ((4, net.ipv4), (6, net.ipv6)):
            if datas:
                d = datas[0]
                out[fam] = {"pool_id": pool_id_of(c, d), "subnet": str(ipaddress.ip_network(d.pool, strict=False)),
                            "gateway": d.gateway.split("/")[0] if d.gateway else ""}
        _agree(name, ranges, out, f"pynet network {name}")
        return out
    rec = c.store.get(POOLS + name)
    if rec is not None:
        _agree(name, ranges, {int(k): v for k, v in rec.value.items()}, "its pynet-ipam pools")
        return {int(k): v for k, v in rec.value.items()}
    if not create:
        return {}
    if not ranges:
        raise CniError(spec.INVALID_CONFIG, "pynet-ipam needs ipam.ranges (or subnet)")
    # The pools, their gateways and the record naming them: one commit (the
    # store transaction also keeps a second ADD from making them twice).
    with c.transaction():
        rec = c.store.get(POOLS + name)
        if rec is not None:
            return {int(k): v for k, v in rec.value.items()}
        out = {}
        for fam, r in ranges.items():
            pid, pool, _ = c.request_pool(LOCAL_DEFAULT, r.subnet, v6=(fam == 6), requester=_pools_holder(name))
            gw = c.request_address(pid, r.gateway, GATEWAY_OPTS, holder=_pools_holder(name)).split("/")[0]
            out[fam] = {"pool_id": pid, "subnet": pool, "gateway": gw}
        c.store.put(POOLS + name, {str(k): v for k, v in out.items()})
        return out


def _pools_holder(name: str) -> str:
    """The IPAM holder of pynet-ipam's own pools of network ``name``."""
    return f"cni-ipam/{name}"


def _holder(name: str, cid: str, ifname: str) -> str:
    """The IPAM holder of one attachment's addresses."""
    return f"cni-ipam/{name}/{cid}/{ifname}"


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
    key = _key(name, args.container_id, args.ifname)
    holder = _holder(name, args.container_id, args.ifname)
    with c.transaction():
        pools = pools_for(ctx, name, ipam, create=True)
        # the pools of an existing network when the conflist names no subnet:
        # a route's gateway must be on-link there too (raising here undoes the commit)
        check_route_gateways(routes, {f: p["subnet"] for f, p in pools.items()}, name)
        rec = c.store.get(key)
        if rec is not None:
            return _result(rec.value, pools, routes, dns)
        got = {}
        for fam, p in sorted(pools.items()):
            want = wanted.pop(fam, "")
            if want and ipaddress.ip_address(want) not in ipaddress.ip_network(p["subnet"]):
                raise CniError(spec.INVALID_CONFIG, f"requested address {want} is outside {p['subnet']}")
            got[str(fam)] = c.request_address(p["pool_id"], want, holder=holder)
        if wanted:
            raise CniError(spec.INVALID_CONFIG, f"no IPv{min(wanted)} range for the requested address")
        value = {"pools": {str(f): p["pool_id"] for f, p in pools.items()}, "addresses": got,
                 "container_id": args.container_id, "ifname": args.ifname}
        c.store.put(key, value)
    return _result(value, pools, routes, dns)


def _release(c, name: str, key: str, value: dict) -> None:
    holder = _holder(name, value.get("container_id", ""), value.get("ifname", ""))
    with c.transaction():  # the addresses and the record: one commit
        for fam, a in (value.get("addresses") or {}).items():
            pid = (value.get("pools") or {}).get(fam)
            if pid:
                c.release_address(pid, a.split("/")[0], holder)
        c.store.delete(key)


def cmd_del(ctx, conf: dict, args: spec.Args) -> None:
    _conf(conf)
    c = ctx.controller
    key = _key(conf["name"], args.container_id, args.ifname)
    rec = c.store.get(key)
    if rec is not None:
        _release(c, conf["name"], key, rec.value)
    return None


def cmd_check(ctx, conf: dict, args: spec.Args) -> None:
    if not spec.at_least(conf["cniVersion"], "0.4.0"):
        raise CniError(spec.INCOMPATIBLE_VERSION, "config version does not allow CHECK")
    _conf(conf)
    c = ctx.controller
    rec = c.store.get(_key(conf["name"], args.container_id, args.ifname))
    if rec is None:
        raise CniError(spec.UNKNOWN_CONTAINER, f"pynet-ipam has no allocation for container "
                                               f"{args.container_id} interface {args.ifname}")
    for fam, a in (rec.value.get("addresses") or {}).items():
        pid = rec.value["pools"][fam]
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
    for rec in c.store.list(f"{ALLOC}{conf['name']}/"):
        v = rec.value
        if (v.get("container_id"), v.get("ifname")) not in valid:
            _release(c, conf["name"], rec.key, v)
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
