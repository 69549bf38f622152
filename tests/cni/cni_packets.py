"""Packets for the CNI conformance suite: one ICMP echo from inside a
namespace (no ping binary on the host), only to addresses in namespaces the
tests created.  The echo itself is ``tests.support.icmp``'s."""
from __future__ import annotations

from tests.support.icmp import icmp_ping


def ping(netns_path: str, dst: str, timeout: float = 1.0, tries: int = 3) -> bool:
    """``tries`` echoes, the first answered one wins (a fresh veth may drop the first)."""
    return any(icmp_ping(netns_path, dst, timeout=timeout) for _ in range(tries))
