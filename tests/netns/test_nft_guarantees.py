"""The guarantees of the iptables layout that test_firewall_traffic.py does not
already show, on every firewall backend (iptables-nft, legacy iptables, native
nftables; ``fw_backend`` in tests/netns/conftest.py) and under both FORWARD
policies (the ``topo`` fixture: a host namespace H, containers c1, c2 on b1, c3
on b2, a routed client x): masquerade, a container reaching itself through its
published port (hairpin), internal networks, isolation from a foreign bridge in
both directions, anti-spoofing, and a reconcile after someone flushed the
tables restoring everything (only ever inside H).  Every packet stays inside the
namespaces the fixture made; the firewall's diff is checked empty afterwards.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from pynet.firewall import EndpointSpec, NetworkSpec, PortMapping
from tests.support.icmp import icmp_ping
from tests.netns.test_firewall_traffic import EPS, connect, nets, serve, sh, topo  # noqa: F401 (fixture)

pytestmark = pytest.mark.netns

SOURCED_CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1, source_address=(sys.argv[3], 0))
    c.settimeout(1); print(c.recv(100).decode())
except OSError as e:
    print("FAIL", e); sys.exit(1)
"""


def none_connect(calls) -> list:
    """``connect`` of each (namespace, address, port) at once: a refused or dropped one waits
    for its timeout, so checking several expected-to-fail paths one after another only adds
    up their timeouts (they share nothing: each is its own client process)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda c: connect(*c), calls))


def connect_from(ns, src, addr, port) -> str | None:
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SOURCED_CLIENT, addr, str(port), src],
                       capture_output=True, text=True, timeout=10)
    return p.stdout.strip() if p.returncode == 0 else None


def settle_v6(H, C) -> None:
    """IPv6 neighbour discovery on links the fixture just made: the first SYN of a test
    can go before it settles and the 1 s client gives up.  Bounded: a few echoes from H
    to each container and from x to H (none forwarded, so no firewall rule involved)."""
    for ns, dst in ((H, "fd00:241:1::2"), (H, "fd00:241:1::3"), (H, "fd00:241:2::2"), (C["x"], "fd00:241:9::1")):
        assert any(icmp_ping(f"/run/netns/{ns}", dst) for _ in range(5)), f"{dst} unreachable from {ns}"


def stop(servers):
    for p in servers:
        p.kill()
        p.wait()


def test_masquerade_and_hairpin_to_itself(topo):  # noqa: F811
    H, C, make_firewall = topo
    settle_v6(H, C)
    fw = make_firewall(H)
    sh("ip", "-n", H, "link", "set", "vc1", "type", "bridge_slave", "hairpin", "on")  # as pynet's bridge does
    servers = [serve(C["c1"], 80, "c1", seconds=30), serve(C["x"], 9000, "x", seconds=30)]
    try:
        fw.apply(nets(), EPS)
        # outbound: x sees the host's address on its link, not the container's
        assert connect(C["c2"], "10.241.9.2", 9000) == "hello from x to 10.241.9.1"
        assert connect(C["c2"], "fd00:241:9::2", 9000) == "hello from x to fd00:241:9::1"
        # masquerade off: the container's own address
        fw.apply([dataclasses.replace(n, masquerade=False) for n in nets()], EPS)
        assert connect(C["c2"], "10.241.9.2", 9000) == "hello from x to 10.241.1.3"
        fw.apply(nets(), EPS)
        # hairpin: c1 through the host's address to its own published port, masqueraded
        assert (connect(C["c1"], "10.241.1.1", 18088) or "").startswith("hello from c1 to 10.241.1.1")
    finally:
        stop(servers)


def test_internal_network(topo):  # noqa: F811
    H, C, make_firewall = topo
    settle_v6(H, C)
    fw = make_firewall(H)
    servers = [serve(C["c3"], 7000, "c3", seconds=30), serve(C["x"], 9000, "x", seconds=30), serve(C["c1"], 7000, "c1", seconds=30)]
    try:
        n1, n2 = nets()
        fw.apply([n1, dataclasses.replace(n2, internal=True)], EPS)
        for fam, (c3, x, c1) in {"ipv4": ("10.241.2.2", "10.241.9.2", "10.241.1.2"),
                                 "ipv6": ("fd00:241:2::2", "fd00:241:9::2", "fd00:241:1::2")}.items():
            # no way out of an internal network, and none in, nor from another pynet network
            assert none_connect([(C["c3"], x, 9000), (C["x"], c3, 7000), (C["c1"], c3, 7000),
                                 (C["c3"], c1, 7000)]) == [None] * 4, fam
            assert (connect(C["c2"], x, 9000) or "").startswith("hello from x"), fam  # n1 still routes
    finally:
        stop(servers)


def test_isolation_from_a_foreign_bridge(topo):  # noqa: F811
    """b2 is somebody else's bridge (dockerd's docker0, another instance's pn-...):
    named in isolate_from, nothing passes between it and pynet's b1, either way."""
    H, C, make_firewall = topo
    settle_v6(H, C)
    fw = make_firewall(H, isolate_from=("b2",))
    servers = [serve(C["c3"], 7000, "c3", seconds=30), serve(C["c1"], 7000, "c1", seconds=30), serve(C["x"], 9000, "x", seconds=30)]
    try:
        fw.apply(nets()[:1], [])
        assert none_connect([(C[a], dst, 7000) for c1, c3 in (("10.241.1.2", "10.241.2.2"),
                                                               ("fd00:241:1::2", "fd00:241:2::2"))
                             for a, dst in (("c1", c3), ("c3", c1))]) == [None] * 4
        assert (connect(C["c1"], "10.241.9.2", 9000) or "").startswith("hello from x")
    finally:
        stop(servers)


def _mac(ns) -> str:
    return json.loads(sh("ip", "-n", ns, "-j", "link", "show", "dev", "eth0").stdout)[0]["address"]


def test_anti_spoofing(topo):  # noqa: F811
    H, C, make_firewall = topo
    settle_v6(H, C)
    fw = make_firewall(H)
    n1, n2 = nets()
    ep = EndpointSpec("e1", "n1", "10.241.1.2", "fd00:241:1::2", _mac(C["c1"]), [], "vc1")
    sh("ip", "-n", C["c1"], "addr", "add", "10.241.1.77/24", "dev", "eth0")
    sh("ip", "-n", C["c1"], "addr", "add", "fd00:241:1::77/64", "dev", "eth0", "nodad")
    servers = [serve(C["x"], 9000, "x", seconds=30)]
    try:
        fw.apply([dataclasses.replace(n1, masquerade=False), n2], [ep])
        # without the check the second address works (the test would prove nothing otherwise)
        assert connect_from(C["c1"], "10.241.1.77", "10.241.9.2", 9000) == "hello from x to 10.241.1.77"
        fw.apply([dataclasses.replace(n1, masquerade=False, spoof_check=True), n2], [ep])
        assert connect_from(C["c1"], "10.241.1.2", "10.241.9.2", 9000) == "hello from x to 10.241.1.2"
        assert connect_from(C["c1"], "10.241.1.77", "10.241.9.2", 9000) is None
        assert (connect_from(C["c1"], "fd00:241:1::2", "fd00:241:9::2", 9000) or "").startswith("hello from x")
        assert connect_from(C["c1"], "fd00:241:1::77", "fd00:241:9::2", 9000) is None
    finally:
        stop(servers)


FLUSH = {"iptables-nft": [["nft", "flush", "ruleset"]],
         "iptables-legacy": [["iptables-legacy", "-F"], ["iptables-legacy", "-t", "nat", "-F"],
                             ["ip6tables-legacy", "-F"], ["ip6tables-legacy", "-t", "nat", "-F"]],
         "nftables": [["nft", "flush", "ruleset"]]}


def test_reconcile_after_flush_restores_everything(topo, fw_backend):  # noqa: F811
    """``nft flush ruleset`` / ``iptables -F`` in H (never the root namespace: that would
    take dockerd's rules with it), then one full apply: everything works again."""
    H, C, make_firewall = topo
    settle_v6(H, C)
    fw = make_firewall(H)
    servers = [serve(C["c1"], 80, "c1", seconds=30), serve(C["c3"], 7000, "c3", seconds=30)]
    try:
        fw.apply(nets(), EPS)
        policy = sh("ip", "netns", "exec", H, fw_backend.iptables, "-S", "FORWARD").stdout.splitlines()[0]
        for argv in FLUSH[fw_backend.name]:
            sh("ip", "netns", "exec", H, *argv)
        # the FORWARD policy is the host's, not pynet's: put back what the "host" had
        for ipt in (fw_backend.iptables, fw_backend.ip6tables):
            sh("ip", "netns", "exec", H, ipt, "-P", "FORWARD", policy.split()[-1])
        assert fw.diff(nets(), EPS) != ""
        fw.apply(nets(), EPS)
        assert fw.diff(nets(), EPS) == ""
        assert connect(C["x"], "10.241.9.1", 18088) == "hello from c1 to 10.241.9.2"
        assert connect(C["x"], "fd00:241:9::1", 18088) == "hello from c1 to fd00:241:9::2"
        assert connect(C["c1"], "10.241.2.2", 7000) is None  # isolation back too
    finally:
        stop(servers)


def test_published_port_bound_to_one_address(topo):  # noqa: F811
    """A mapping bound to the host's 10.241.9.1 only (and one to 127.0.0.1): reachable
    there, not through another host address."""
    H, C, make_firewall = topo
    settle_v6(H, C)
    fw = make_firewall(H)
    eps = [EndpointSpec("e1", "n1", "10.241.1.2", "fd00:241:1::2", None,
                        [PortMapping("tcp", "10.241.9.1", 18090, 80), PortMapping("tcp", "127.0.0.1", 18091, 80)],
                        "vc1")]
    servers = [serve(C["c1"], 80, "c1", seconds=30)]
    try:
        fw.apply(nets(), eps)
        assert connect(C["x"], "10.241.9.1", 18090) == "hello from c1 to 10.241.9.2"
        assert connect(C["x"], "10.241.9.1", 18091) is None
        assert (connect(H, "127.0.0.1", 18091) or "").startswith("hello from c1")
        assert connect(H, "127.0.0.1", 18090) is None
    finally:
        stop(servers)
