"""pynet-ipam's records in the store, as data: where the per-attachment
allocations and the plugin's own pools are kept, and the query the interface
plugins' GC needs (``held_addresses``).

A leaf beside ``pynet.cni.ipam_plugin`` so that ``pynet.cni.plugin`` asks it
without importing the IPAM plugin (which imports ``plugin``: the import runs
one way only).
"""
from __future__ import annotations

ALLOC = "cni/ipam/"
POOLS = "cni/ipam-pools/"


def held_addresses(c, name: str) -> set:
    """Addresses pynet-ipam holds for attachments of network ``name``."""
    out = set()
    for rec in c.store.list(f"{ALLOC}{name}/"):
        for a in (rec.value.get("addresses") or {}).values():
            out.add(a.split("/")[0])
    return out
