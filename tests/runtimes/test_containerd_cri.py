"""Acceptance: pods through containerd 1.6's CRI plugin, driven as kubelet drives it
(RunPodSandbox with a hostPort mapping, PodSandboxStatus, StopPodSandbox, RemovePodSandbox), on a
conflist at cniVersion 1.0.0 (the newest containerd 1.6's libcni knows).

``chain`` runs each test on pynet's plugins and on the reference chain (the harness's own proof).
Reachability is checked from inside the pods' network namespaces with the host's busybox.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path

from tests.support import runtime_harness as rh


def _pod(cri, sid):
    ip = cri.pod_ip(sid)
    ns = cri.netns_path(sid)
    assert ip and ns, (ip, ns)
    return ip, ns


def test_pods_get_addresses_reach_each_other_hostport_and_clean_up(containerd_factory, chain, prefix, tmp_path):
    ctd = containerd_factory(chain.conflist("1.0.0"))
    net = ipaddress.ip_network(chain.subnet)
    port = rh.free_tcp_port()
    with ctd.cri() as cri:
        a = cri.run_pod_sandbox(f"{prefix}-a", [(80, port, "TCP")])
        b = cri.run_pod_sandbox(f"{prefix}-b")
        (ipa, nsa), (ipb, nsb) = _pod(cri, a), _pod(cri, b)

        # addresses: in the subnet, distinct, on eth0, default route via the gateway
        assert ipa != ipb
        for ip, ns in ((ipa, nsa), (ipb, nsb)):
            assert ipaddress.ip_address(ip) in net
            assert f"{ip}/{net.prefixlen}" in rh.ns_addrs(ns, "eth0")
            assert rh.ns_default_gw(ns) == chain.gateway
        assert chain.held_addresses() == {ipa, ipb}
        assert len(chain.bridge_ports()) == 2

        # reachability: pod <-> pod, pod -> gateway
        assert rh.ns_ping(nsa, ipb), "a -> b"
        assert rh.ns_ping(nsb, ipa), "b -> a"
        assert rh.ns_ping(nsa, chain.gateway), "a -> gateway"
        assert rh.ns_ping(nsb, chain.gateway), "b -> gateway"

        # hostPort 80 -> port: from the host (to the bridge address) and from the other pod
        with rh.HttpServer(nsa, 80, "pod-a", tmp_path / "www"):
            assert rh.http_get(ipa, 80, nsb) == "pod-a", "b -> a:80 direct"
            assert rh.http_get(chain.gateway, port) == "pod-a", f"host -> {chain.gateway}:{port}"
            assert rh.http_get(chain.gateway, port, nsb) == "pod-a", f"b -> {chain.gateway}:{port} (hairpin)"
        assert chain.rules_mentioning(f"--dport {port}"), "no DNAT rule for the hostPort"

        # StopPodSandbox a: its address, host link, rules and namespace are gone; b is untouched
        cri.stop_pod_sandbox(a)
        assert not Path(nsa).exists()
        assert chain.held_addresses() == {ipb}
        assert len(chain.bridge_ports()) == 1
        assert chain.rules_mentioning(f"--dport {port}", f"{ipa}/", f"{ipa} ") == []
        cri.remove_pod_sandbox(a)  # a second DEL, without a netns: must succeed
        assert rh.ns_ping(nsb, chain.gateway), "b lost the gateway when a went"

        cri.stop_pod_sandbox(b)
        cri.stop_pod_sandbox(b)  # twice, as kubelet may
        cri.remove_pod_sandbox(b)
        assert cri.list_pod_sandboxes() == []
    assert chain.held_addresses() == set()
    assert chain.bridge_ports() == []
    assert chain.rules_mentioning(f"--dport {port}", f"{ipa}/", f"{ipb}/", f"{ipa} ", f"{ipb} ") == []


def test_remove_without_stop_and_addresses_reused(containerd_factory, chain, prefix):
    """RemovePodSandbox alone (containerd stops the pod itself) releases everything; a pod started
    afterwards gets an address again."""
    ctd = containerd_factory(chain.conflist("1.0.0"))
    with ctd.cri() as cri:
        sids = [cri.run_pod_sandbox(f"{prefix}-r{i}") for i in range(3)]
        ips = {cri.pod_ip(s) for s in sids}
        assert len(ips) == 3 and chain.held_addresses() == ips
        for s in sids:
            cri.remove_pod_sandbox(s)
        assert chain.held_addresses() == set()
        assert chain.bridge_ports() == []
        again = cri.run_pod_sandbox(f"{prefix}-r9")
        ip, ns = _pod(cri, again)
        assert chain.held_addresses() == {ip}
        assert rh.ns_ping(ns, chain.gateway)
