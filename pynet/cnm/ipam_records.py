"""pynet-ipam's records (the CNI IPAM plugin's state), as core verbs: the
front end (``pynet.cni.ipam_plugin``) asks these and never touches the store.

* ``cni/ipam-pools/<name>``                 the plugin's own pools of network ``name``
                                            ({family: {"pool_id", "subnet", "gateway"}})
* ``cni/ipam/<name>/<container id>/<ifname>`` one attachment's allocation
                                            ({"pools", "addresses", "container_id", "ifname"})

Every verb takes ``txn=`` (a txn of ``Controller.txn``): the plugin's ADD
makes its pools, allocates and records in one commit.  Also asked by the
interface plugins' GC (``held_addresses``), so it stays a leaf of the core.
"""
from __future__ import annotations

from typing import Optional

from pynet.store.keys import component

ALLOC = "cni/ipam/"
POOLS = "cni/ipam-pools/"


def _key(name: str, cid: str, ifname: str) -> str:
    return f"{ALLOC}{component(name)}/{component(cid)}/{component(ifname)}"


def pools_holder(name: str) -> str:
    """The IPAM holder of pynet-ipam's own pools of network ``name``."""
    return f"cni-ipam/{name}"


def holder(name: str, cid: str, ifname: str) -> str:
    """The IPAM holder of one attachment's addresses."""
    return f"cni-ipam/{name}/{cid}/{ifname}"


def own_pools(c, name: str, txn=None) -> Optional[dict]:
    """{family: {"pool_id", "subnet", "gateway"}} of the plugin's own pools of ``name``, or None."""
    rec = (txn or c.store).get(POOLS + component(name))
    return {int(k): v for k, v in rec.value.items()} if rec is not None else None


def make_own_pools(c, name: str, ranges: dict, options: dict, txn) -> dict:
    """The plugin's own pools of ``name`` (``ranges``: {family: (subnet, gateway or "")}),
    their gateways and the record naming them, in the caller's txn (a second ADD
    racing this one conflicts and then finds them)."""
    have = own_pools(c, name, txn)
    if have is not None:
        return have
    out = {}
    for fam, (subnet, gateway) in ranges.items():
        pid, pool, _ = c.request_pool("LocalDefault", subnet, v6=(fam == 6),
                                      requester=pools_holder(name), txn=txn)
        gw = c.request_address(pid, gateway, options, holder=pools_holder(name), txn=txn).split("/")[0]
        out[fam] = {"pool_id": pid, "subnet": pool, "gateway": gw}
    txn.put(POOLS + component(name), {str(k): v for k, v in out.items()})
    return out


def allocation(c, name: str, cid: str, ifname: str, txn=None) -> Optional[dict]:
    """The recorded allocation of one attachment, or None."""
    rec = (txn or c.store).get(_key(name, cid, ifname))
    return rec.value if rec is not None else None


def record_allocation(c, name: str, cid: str, ifname: str, value: dict, txn) -> None:
    txn.put(_key(name, cid, ifname), value)


def release_allocation(c, name: str, value: dict) -> None:
    """The attachment's addresses and its record: one commit."""
    cid, ifname = value.get("container_id", ""), value.get("ifname", "")
    h = holder(name, cid, ifname)

    def fn(t):
        for fam, a in (value.get("addresses") or {}).items():
            pid = (value.get("pools") or {}).get(fam)
            if pid:
                c.release_address(pid, a.split("/")[0], h, txn=t)
        t.delete(_key(name, cid, ifname))
    c.txn(fn)


def allocations(c, name: str) -> list[dict]:
    """Every recorded allocation of network ``name``."""
    return [rec.value for rec in c.store.list(f"{ALLOC}{component(name)}/")]


def held_addresses(c, name: str) -> set:
    """Addresses pynet-ipam holds for attachments of network ``name``."""
    out = set()
    for v in allocations(c, name):
        for a in (v.get("addresses") or {}).values():
            out.add(a.split("/")[0])
    return out
