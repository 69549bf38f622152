"""A CNI ADD SIGKILLed mid-way, then retried by the runtime without a DEL (the runtime
retries an ADD it saw fail): the retry finishes the attachment -- it used to answer
EndpointExists / "already has interface" for an endpoint record the killed ADD had written.

Real binaries, a real SIGKILL, real namespaces, bridge, veth and iptables (in the test's
throwaway host namespace, tests/cni/conftest.py).  The kill point is made deterministic, not
timed: the test holds the state dir's ``firewall.lock``, so the ADD stops at its firewall
sync -- after its endpoint record is written and its interface is in the pod, before its
port is published -- and is killed there.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from pynet.locks import file_lock

HOST_PORT = 18461


def _pod_links(cni, ns) -> list[str]:
    return [x for x in cni.links(ns) if x != "lo"]


def test_add_killed_after_its_endpoint_record_then_retried_without_del(cni):
    conf = cni.conf(runtimeConfig={"portMappings": [{"hostPort": HOST_PORT, "containerPort": 80,
                                                     "protocol": "tcp"}]},
                    capabilities={"portMappings": True})
    warm = cni.container("w")
    cni.add(cni.conf(), "warm", warm)             # the network exists already
    ns = cni.container()
    exe = os.path.join(cni.bin_dir, "pynet-bridge")
    with file_lock(os.path.join(cni.state_dir, "firewall.lock")):
        p = subprocess.Popen(["nsenter", f"--net={cni.host}", exe], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=cni.env("ADD", "ctr-killed", "eth0", ns))
        p.stdin.write(json.dumps(conf).encode())
        p.stdin.close()
        for _ in range(600):                      # bounded: up to ~30 s on a loaded machine
            if _pod_links(cni, ns) == ["eth0"] or p.poll() is not None:
                break
            time.sleep(0.05)
        assert p.poll() is None, ("the ADD ended before its firewall sync", p.stdout.read(), p.stderr.read())
        assert _pod_links(cni, ns) == ["eth0"], "the ADD did not reach the pod before its firewall sync"
        os.kill(p.pid, signal.SIGKILL)            # nsenter exec'd the plugin: this is its pid
        p.wait(30)
        p.stdout.close()
        p.stderr.close()
    assert p.returncode == -signal.SIGKILL
    eps = [e for e in cni.reader().endpoints() if e.container_id == "ctr-killed"]
    assert len(eps) == 1, "the killed ADD's endpoint record"
    assert f"--dport {HOST_PORT}" not in cni.iptables("nat")

    # the runtime's retry: same container ID and ifname, no DEL in between
    r = cni.call("pynet-bridge", "ADD", conf, "ctr-killed", "eth0", ns)
    assert r.rc == 0, (r.raw, r.err)
    addr = r.out["ips"][0]["address"].split("/")[0]
    eps = [e for e in cni.reader().endpoints() if e.container_id == "ctr-killed"]
    assert [e.ip for e in eps] == [addr]
    assert _pod_links(cni, ns) == ["eth0"]
    shown = subprocess.run(["ip", "-n", os.path.basename(ns), "-j", "addr", "show", "eth0"],
                           capture_output=True, text=True, timeout=10, check=True).stdout
    assert [a["local"] for a in json.loads(shown)[0]["addr_info"] if a["family"] == "inet"] == [addr]
    nat = cni.iptables("nat")
    assert f"--dport {HOST_PORT}" in nat and f"{addr}:80" in nat

    # and the DEL after it leaves only the warm attachment
    cni.delete(conf, "ctr-killed", ns)
    assert [e.container_id for e in cni.reader().endpoints()] == ["warm"]
    assert f"--dport {HOST_PORT}" not in cni.iptables("nat")
    host_links = [x for x in cni.links() if x.startswith("pv")]
    assert len(host_links) == 1, host_links       # the warm pod's veth only
    cni.delete(cni.conf(), "warm", warm)
