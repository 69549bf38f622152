"""Acceptance: CNI GC after a node crash, given the valid attachments from CRI.

containerd and its pods are SIGKILLed all at once; one dead pod's network namespace is destroyed
too (its veth pair goes with it), the other's is left pinned (its host veth stays on the bridge).
containerd comes back and starts new pods; ListPodSandbox's READY sandboxes are the valid
attachments (containerd 1.6 does not call GC itself, so the test runs it as a CNI 1.1 runtime
would, on the same conflist). GC must remove exactly the dead pods' addresses, links and rules,
and leave the live pods working.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support import runtime_harness as rh


def _wait_gone(path_or_link, check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and check():
        time.sleep(0.05)


@pytest.mark.parametrize("chain", ["pynet", "pynet-daemon"], indirect=True)
def test_gc_after_crash_removes_exactly_the_dead(containerd_factory, chain, prefix, tmp_path, cni_bin_dir):
    conflist = chain.conflist("1.0.0")
    ctd = containerd_factory(conflist)
    p_dead1, p_dead2, p_live = rh.free_tcp_port(), rh.free_tcp_port(), rh.free_tcp_port()
    with ctd.cri() as cri:
        c = cri.run_pod_sandbox(f"{prefix}-c", [(80, p_dead1, "TCP")])
        d = cri.run_pod_sandbox(f"{prefix}-d", [(80, p_dead2, "TCP")])
        ipc, ipd = cri.pod_ip(c), cri.pod_ip(d)
        nsc, nsd = cri.netns_path(c), cri.netns_path(d)
        dead_ports = set(chain.bridge_ports())
        assert len(dead_ports) == 2
        assert chain.rules_mentioning(f"--dport {p_dead1}") and chain.rules_mentioning(f"--dport {p_dead2}")

    # the crash: runtime, shims and pods die at once; c's namespace is destroyed, d's stays pinned
    killed = ctd.crash()
    assert killed
    rh.remove_netns_path(nsc)
    _wait_gone(nsc, lambda: len(chain.bridge_ports()) > 1)
    assert Path(nsd).exists()
    assert len(chain.bridge_ports()) == 1, "d's host veth should still be on the bridge"
    # nothing released yet: addresses and rules of both dead pods are still there
    assert chain.held_addresses() == {ipc, ipd}

    ctd.start()
    with ctd.cri() as cri:
        cri.wait_network_ready()
        a = cri.run_pod_sandbox(f"{prefix}-a", [(80, p_live, "TCP")])
        b = cri.run_pod_sandbox(f"{prefix}-b")
        ipa, ipb = cri.pod_ip(a), cri.pod_ip(b)
        nsa, nsb = cri.netns_path(a), cri.netns_path(b)
        live_ports = set(chain.bridge_ports()) - dead_ports
        assert len(live_ports) == 2
        states = {sb.id: sb.state for sb in cri.list_pod_sandboxes()}
        assert states[c] == states[d] == cri.pb.SANDBOX_NOTREADY
        valid = [(sb.id, "eth0") for sb in cri.list_pod_sandboxes(ready_only=True)]
        assert sorted(v[0] for v in valid) == sorted([a, b])
        assert chain.held_addresses() == {ipa, ipb, ipc, ipd}

        rh.cni_gc(cni_bin_dir, conflist, valid)

        # exactly the dead are gone: addresses, d's host veth, both dead pods' rules
        assert chain.held_addresses() == {ipa, ipb}
        assert set(chain.bridge_ports()) == live_ports
        assert chain.rules_mentioning(f"--dport {p_dead1}", f"--dport {p_dead2}",
                                      f"{ipc}/", f"{ipd}/", f"{ipc} ", f"{ipd} ") == []
        assert chain.rules_mentioning(f"--dport {p_live}"), "the live pod's hostPort rule went"
        # and the live pods still work
        assert rh.ns_ping(nsa, ipb) and rh.ns_ping(nsb, chain.gateway)
        with rh.HttpServer(nsa, 80, "pod-a", tmp_path / "www"):
            assert rh.http_get(chain.gateway, p_live) == "pod-a"
            assert rh.http_get(chain.gateway, p_live, nsb) == "pod-a"

        # GC again changes nothing
        rules_before = sorted(chain.own_rules())
        rh.cni_gc(cni_bin_dir, conflist, valid)
        assert chain.held_addresses() == {ipa, ipb}
        assert set(chain.bridge_ports()) == live_ports
        assert sorted(chain.own_rules()) == rules_before

        # kubelet's cleanup of the dead sandboxes still succeeds (DEL after GC), then the live ones
        for sid in (c, d, a, b):
            cri.stop_pod_sandbox(sid)
            cri.remove_pod_sandbox(sid)
        assert cri.list_pod_sandboxes() == []
    assert chain.held_addresses() == set()
    assert chain.bridge_ports() == []
    assert chain.rules_mentioning(f"--dport {p_live}", f"{ipa}/", f"{ipb}/") == []
