"""Ensure a network: find it by name, compare its settings, or create it with
its pools -- once, in the core, for every front end that names networks
(the CNI plugins, the scenario runner); next to attach/detach/check/gc in
:mod:`pynet.cnm.attach`.

A front end describes what it wants as a :class:`NetworkRequest` (for CNI:
the conflist, read by the driver's ``cni_netconf``); the driver compares its
own settings (``cni_compare``), the core the subnets, gateways and MTU.

The core never talks to a runtime: a network made by a runtime that does
not tell pynet its name (dockerd) is found through ``runtime_ids`` handed in
by the caller (name -> the runtime's network IDs of that name).
"""
from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

from pynet import errors
from pynet.cnm.model import IPData, Network

log = logging.getLogger("pynet.cnm.networks")

LOCAL_DEFAULT = "LocalDefault"
GATEWAY_OPTS = {"RequestAddressType": "com.docker.network.gateway"}
LABEL_CONFLIST = "pynet.cni.network"
OPT_MTU = "com.docker.network.driver.mtu"

RuntimeIds = Callable[[str], list]


@dataclass
class Range:
    """One subnet of a requested network ("" = a default pool) and its gateway."""
    subnet: str
    gateway: str = ""


@dataclass
class NetworkRequest:
    """A network as a front end asks for it.  ``ranges``: {4: Range, 6: Range}
    (none: one default IPv4 pool); ``options``: the driver's options;
    ``settings``: what the driver compares with an existing network
    (``cni_compare``); ``is_gateway``: the network gets a gateway address."""
    name: str
    driver: str
    ranges: dict = field(default_factory=dict)
    is_gateway: bool = False
    mtu: Optional[int] = None
    options: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    created_by: str = "cni"


def network_id_for(name: str) -> str:
    """The ID of the network pynet makes for a name (stable: every process
    making it for that name makes the same one)."""
    return hashlib.sha256(f"cni:{name}".encode()).hexdigest()


def find_network(c, name: str, runtime_ids: Optional[RuntimeIds] = None,
                 txn=None) -> Optional[Network]:
    """The pynet network named ``name``: one pynet named, or -- with
    ``runtime_ids`` -- a runtime-made one without a name whose runtime name is
    ``name`` (the name is recorded then, so the runtime is asked once; not
    inside a ``txn``, whose function must have no side effects)."""
    # a network made from a conflist has the id derived from its name: one key read finds it
    # (every ADD asks), without listing every network on the host
    mine = c.network_by_id(network_id_for(name), txn=txn)
    if mine is not None and mine.name == name:
        return mine
    for n in c.networks(txn=txn):
        if n.name == name:
            return n
    if runtime_ids is None:
        return None
    unnamed = {n.id: n for n in c.networks() if not n.name and n.created_by == "docker"}
    if not unnamed:
        return None
    for nid in runtime_ids(name):
        net = unnamed.get(nid)
        if net is not None:
            net.name = name
            c.name_network(net.id, name)
            return net
    return None


def compare(c, req: NetworkRequest, net: Network) -> list[str]:
    """How an existing network differs from the request (one line each)."""
    diffs = []
    if net.driver != req.driver:
        diffs.append(f"driver {net.driver} (conflist: {req.driver})")
    have = {4: net.ipv4, 6: net.ipv6}
    if req.ranges:
        for fam in (4, 6):
            want = req.ranges.get(fam)
            theirs = have[fam][0] if have[fam] else None
            tsub = str(ipaddress.ip_network(theirs.pool, strict=False)) if theirs else None
            if (want.subnet if want else None) != tsub:
                diffs.append(f"IPv{fam} subnet {tsub or 'none'} (conflist: {want.subnet if want else 'none'})")
            elif want and want.gateway and theirs and theirs.gateway.split("/")[0] != want.gateway:
                diffs.append(f"IPv{fam} gateway {theirs.gateway.split('/')[0] or 'none'} "
                             f"(conflist: {want.gateway})")
    diffs += c.driver(req.driver).cni_compare(req.settings, net)
    st = net.driver_state or {}
    if req.mtu and (st.get("mtu") or 1500) != req.mtu:
        diffs.append(f"mtu {st.get('mtu') or 1500} (conflist: {req.mtu})")
    return diffs


def ensure_network(c, req: NetworkRequest, lock: Optional[Callable] = None,
                   runtime_ids: Optional[RuntimeIds] = None) -> Network:
    """The network the request names: found (its settings must agree:
    Conflict otherwise, naming each difference) or created.  ``lock()``: a
    context manager excluding other processes ensuring a network (the state
    dir's network lock), taken only when it must be created."""
    net = find_network(c, req.name)
    if net is None:
        with (lock() if lock is not None else contextlib.nullcontext()):
            net = find_network(c, req.name, runtime_ids=runtime_ids)
            if net is None:
                return create_network(c, req)
    diffs = compare(c, req, net)
    if diffs:
        raise errors.Conflict(
            f"network {req.name} exists ({net.created_by}-made) with other settings: "
            + "; ".join(diffs)
            + f" -- fix the conflist or remove the network (pynet network rm {req.name})")
    return net


def create_network(c, req: NetworkRequest) -> Network:
    """A new network for the request, with its pools (and gateways) from the
    IPAM; nothing is left when it fails."""
    nid = network_id_for(req.name)
    ranges = dict(req.ranges) or {4: None}
    datas: dict = {4: [], 6: []}
    options = dict(req.options)
    if req.mtu:
        options[OPT_MTU] = str(req.mtu)
    with contextlib.ExitStack() as undo:
        for fam in (4, 6):
            if fam not in ranges:
                continue
            r = ranges[fam]
            pid, pool, _ = c.request_pool(LOCAL_DEFAULT, r.subnet if r else "", v6=(fam == 6))
            undo.callback(c.release_pool, pid)
            gw = ""
            if req.is_gateway or (r and r.gateway):
                gw = c.request_address(pid, r.gateway if r and r.gateway else "", GATEWAY_OPTS)
            datas[fam].append(IPData(pool=pool, gateway=gw, address_space=LOCAL_DEFAULT, pool_id=pid))
        net = c.create_network(nid, datas[4], datas[6], driver=req.driver, name=req.name,
                               enable_ipv6=bool(datas[6]), options=options,
                               labels=dict(req.labels) or {LABEL_CONFLIST: req.name},
                               created_by=req.created_by)
        undo.pop_all()
    log.info("created network %s (%s) from a conflist", req.name, nid[:12])
    return net
