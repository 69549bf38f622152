"""Acceptance: ``pynet cni install`` on fresh directories is all containerd's CRI needs to run a
pod (issue 14's Kubernetes node install).

A fresh bin dir and conf dir of this run get ``pynet cni install`` (binaries, examples and the
default network's conflist -- with a per-run subnet, bridge, instance, chain prefix and state
dir so runs beside this one never collide; the shipped default is 10.77.0.0/16); a private
containerd is pointed at exactly those directories, nothing else is configured, and a pod
sandbox is run through the CRI as kubelet does.  Its network comes up: an address from the
default network on eth0, the default route via the bridge, and an HTTP server in the pod
answers the host over the bridge the test owns.  The only other file in the bin dir is
``loopback``: containerd's CRI runs it for every pod, and nodes have it with the standard
CNI plugins (Debian's containernetworking-plugins, kubernetes-cni).
"""
from __future__ import annotations

import ipaddress
import json
import os

from tests.support import harness
from tests.support import runtime_harness as rh


def test_cni_install_on_fresh_dirs_makes_containerd_run_a_pod(prefix, rt_workdir, images_tar, tmp_path):
    bin_dir, conf_dir = tmp_path / "opt-cni-bin", tmp_path / "etc-cni-net.d"
    assert not bin_dir.exists() and not conf_dir.exists()
    name = f"{prefix}-node"
    bridge = f"{prefix}-nb"
    subnet = rh.subnet_for("10.247", name)   # not 10.244/10.246: the other runtime tests' bases
    chain_prefix = harness.chain_prefix_for(name)
    state = tmp_path / "state"
    net = ipaddress.ip_network(subnet)
    ctd = None
    try:
        out = harness.sh(*harness.pynet_command(), "cni", "install", "--bin-dir", str(bin_dir),
                         "--conf-dir", str(conf_dir), "--subnet", subnet, "--bridge", bridge,
                         "--network-name", name, "--plugin-name", name, "--chain-prefix", chain_prefix,
                         "--state-dir", str(state), timeout=60).stdout.split()
        assert str(conf_dir / "10-pynet.conflist") in out
        conf = json.loads((conf_dir / "10-pynet.conflist").read_text())
        assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": subnet}]]
        # the only file a runtime loads is ours (the examples are *.example)
        assert [f for f in os.listdir(conf_dir) if f.endswith((".conf", ".conflist", ".json"))] == \
            ["10-pynet.conflist"]
        (bin_dir / "loopback").symlink_to(rh.REF_CNI_DIR / "loopback")

        ctd = rh.Containerd(f"{prefix}-nctd", bin_dir, conf_dir, images_tar)
        ctd.start()
        with ctd.cri() as cri:
            cri.wait_network_ready()
            sid = cri.run_pod_sandbox(f"{prefix}-node-pod")
            ip, ns = cri.pod_ip(sid), cri.netns_path(sid)
            assert ip and ns, (ip, ns)
            assert ipaddress.ip_address(ip) in net
            assert f"{ip}/{net.prefixlen}" in rh.ns_addrs(ns, "eth0")
            gateway = str(net.network_address + 1)
            assert rh.ns_default_gw(ns) == gateway
            assert rh.ns_ping(ns, gateway), "pod -> its gateway on the host's bridge"
            with rh.HttpServer(ns, 80, "node-pod", tmp_path / "www"):
                assert rh.http_get(ip, 80) == "node-pod", f"host -> {ip}:80 over {bridge}"
            cri.stop_pod_sandbox(sid)
            cri.remove_pod_sandbox(sid)
            assert cri.list_pod_sandboxes() == []
        assert harness.sh("ip", "-j", "link", "show", "master", bridge, check=False).stdout.strip() in ("", "[]")
    finally:
        errors = []
        if ctd is not None:
            if ctd.running:
                errors += ctd.remove_all_pods()
            errors += ctd.cleanup()
        harness.sh("ip", "link", "del", "dev", bridge, check=False)
        err = harness.flush_firewall(chain_prefix)
        if err:
            errors.append(f"firewall flush {chain_prefix}: {err}")
        assert not errors, errors
