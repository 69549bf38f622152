"""Acceptance: containers through podman 4's CNI backend (``podman run --network NET``, with and
without ``--ip``, with ``-p``) on a conflist at cniVersion 0.4.0, as ``podman network create``
writes them. Podman keeps all its state in a private directory (``runtime_harness.Podman``).

``chain`` runs each test on pynet's plugins and on the reference chain (the harness's own proof).
"""
from __future__ import annotations

import ipaddress

import pytest

from tests.support import harness
from tests.support import runtime_harness as rh

SUBNET_BASE = "10.246"


def test_run_network_ip_publish_and_rm(podman_factory, chain, prefix):
    p = podman_factory(chain.conflist("0.4.0", ips=True))
    net = ipaddress.ip_network(chain.subnet)
    fixed = str(net.network_address + 77)
    port = rh.free_tcp_port()
    a, b = f"{prefix}-a", f"{prefix}-b"
    p.run_container(a, chain.name, publish=[f"{port}:80"], command=rh.httpd_command("ctr-a"))
    p.run_container(b, chain.name, ip=fixed)
    ipa, ipb = p.ip(a, chain.name), p.ip(b, chain.name)
    nsa, nsb = p.netns_path(a), p.netns_path(b)

    assert ipb == fixed
    assert ipaddress.ip_address(ipa) in net and ipa != fixed
    assert f"{ipa}/{net.prefixlen}" in rh.ns_addrs(nsa, "eth0")
    assert f"{fixed}/{net.prefixlen}" in rh.ns_addrs(nsb, "eth0")
    assert rh.ns_default_gw(nsa) == chain.gateway
    assert chain.held_addresses() == {ipa, ipb}
    assert len(chain.bridge_ports()) == 2

    assert rh.ns_ping(nsa, ipb), "a -> b"
    assert rh.ns_ping(nsb, ipa), "b -> a"
    assert rh.ns_ping(nsb, chain.gateway), "b -> gateway"
    assert rh.http_get(ipa, 80, nsb) == "ctr-a\n", "b -> a:80"
    assert rh.http_get(chain.gateway, port) == "ctr-a\n", f"host -> {chain.gateway}:{port}"
    assert rh.http_get(chain.gateway, port, nsb) == "ctr-a\n", "b -> gateway:port (hairpin)"

    # the same --ip again is refused while b holds it, and leaves nothing behind
    with pytest.raises(harness.CommandError):
        p.run_container(f"{prefix}-c", chain.name, ip=fixed)
    p.rm(f"{prefix}-c", check=False)
    assert chain.held_addresses() == {ipa, ipb}
    assert len(chain.bridge_ports()) == 2

    p.rm(a)
    assert chain.held_addresses() == {ipb}
    assert len(chain.bridge_ports()) == 1
    assert chain.rules_mentioning(f"--dport {port}", f"{ipa}/", f"{ipa} ") == []
    assert rh.ns_ping(nsb, chain.gateway), "b lost the gateway when a went"
    p.rm(b)
    assert chain.held_addresses() == set()
    assert chain.bridge_ports() == []
    assert chain.rules_mentioning(f"{ipb}/", f"{ipb} ") == []


def test_stop_start_keeps_fixed_ip(podman_factory, chain, prefix):
    """``podman stop`` runs DEL, ``podman start`` ADD again with the same ``--ip``."""
    p = podman_factory(chain.conflist("0.4.0", ips=True))
    fixed = str(ipaddress.ip_network(chain.subnet).network_address + 99)
    c = f"{prefix}-s"
    p.run_container(c, chain.name, ip=fixed)
    p.run("stop", "-t", "0", c)
    assert chain.held_addresses() == set()
    assert chain.bridge_ports() == []
    p.run("start", c)
    assert p.ip(c, chain.name) == fixed
    ns = p.netns_path(c)
    p.netns_paths.add(ns)
    assert rh.ns_ping(ns, chain.gateway)
    assert chain.held_addresses() == {fixed}
