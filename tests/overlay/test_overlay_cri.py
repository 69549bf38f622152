"""Kubernetes pods on a third host (issue 11, Acceptance; Build 7 on real hosts), real components
only.

Three hosts on one underlay switch with a three-member etcd (tests/support/overlay.py).  Hosts 1
and 2 run private dockerds with their ``pynet daemon --cluster-store`` (as
test_overlay_docker.py); host 3 runs a private containerd 1.6 with its CRI plugin inside its
network namespace (``nsenter --net``: containerd, its shims and the CNI plugins it execs are
host 3's; its pods' namespaces are its own), its CNI conf dir holding a ``pynet-overlay``
conflist of the overlay's name.  A CRI v1 client drives it as kubelet does (RunPodSandbox,
PodSandboxStatus, StopPodSandbox, RemovePodSandbox); host 3's agent (the lab worker's) programs
the peers.

Proved:
- a pod started by RunPodSandbox gets an address of the cluster-wide pool, reaches both Docker
  containers and they reach it (ICMP both ways, TCP both ways, UDP);
- CNI CHECK, GC and STATUS of pynet-overlay (containerd 1.6 calls none of them: its libcni
  predates GC and STATUS, and CRI never calls CHECK; so through the installed binary, in host
  3's namespace, with what containerd used -- its conflist and, for CHECK, the ADD result
  libcni cached): CHECK passes for the CRI pod and fails, naming it, when its cluster record
  is missing; GC removes the pod no valid attachment names (its endpoint, veth, cluster record
  and cluster-wide address; the peers drop its FDB entry) and keeps the other; STATUS succeeds
  while the cluster store answers and fails with code 11 naming the cluster store while two of
  three members are down, then succeeds again.
Everything (containerd, shims, pods' namespaces, mounts, cgroups, dockerds, etcd, namespaces)
is removed at the end, even on failure.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import runtime_harness as rh
from tests.support.icmp import icmp_ping
from tests.support.overlay import (DockerHost, OverlayLab, installed_lab, start_docker_hosts, tcp_echo, udp_echo,
                                   vxlan_fdb, wait_until as wait)

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)"),
              pytest.mark.skipif(not os.path.exists("/usr/sbin/dockerd"), reason="docker.io not installed"),
              pytest.mark.skipif(not os.path.exists(rh.CONTAINERD), reason="containerd not installed")]

NET, SUBNET, GW = "ovc", "10.87.0.0/24", "10.87.0.1"
CNI_CACHE = "/var/lib/cni/results"       # where containerd's libcni keeps each ADD's result


def plugin(lab: OverlayLab) -> dict:
    """Host 3's pynet-overlay entry, as a node's conflist carries it: the cluster store and
    this node's address, and the pynet instance of host 3 (its state dir, chains)."""
    own = {"stateDir": os.path.join(lab.base_dir, "state-h3"), "instance": f"{lab.prefix}-h3",
           "chainPrefix": f"{lab.prefix.upper()}H3", "daemon": False, "firewallBackend": "iptables",
           **lab.conflist_pynet(2)}
    if os.environ.get("PYNET_IPTABLES_BACKEND"):
        own["iptablesBackend"] = os.environ["PYNET_IPTABLES_BACKEND"]
    return {"type": "pynet-overlay", "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
            "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": SUBNET, "gateway": GW}]]}, "pynet": own}


class Cluster:
    def __init__(self, lab: OverlayLab, base: Path):
        self.lab, self.base = lab, base
        self.dh = [DockerHost(lab, 1), DockerHost(lab, 2)]
        self.h3 = lab.hosts[2]
        self.h3_ns = lab.namespaces_path("h3")
        self.bin_dir = Path(lab.cni_path)
        rh.CniBinDir(self.bin_dir, reference=True)      # containerd needs loopback beside pynet's
        self.conflist = {"cniVersion": "1.0.0", "name": NET, "plugins": [plugin(lab)]}
        conf_dir = base / "ctd-conf"
        rh.write_conflist(conf_dir, self.conflist)
        self.ctd = rh.Containerd(f"{lab.prefix}-ctd", self.bin_dir, conf_dir, rh.ensure_images(base),
                                 log_dir=base, netns=self.h3_ns)
        self.cri = None
        self.network_made = False
        self.pods: dict = {}

    def start(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:               # containerd starts beside the dockerds
            ctd = pool.submit(self.ctd.start, 60)
            self.ip, self.ns = start_docker_hosts(self.dh, NET, SUBNET, GW)
            ctd.result()
        self.cri = self.ctd.cri()
        self.cri.wait_network_ready()

    def run_pod(self, name: str) -> tuple[str, str, str]:
        """RunPodSandbox as kubelet: (sandbox id, pod IP, the pod's network namespace)."""
        self.network_made = True          # by the first ADD (removed at the end, if it exists)
        sid = self.cri.run_pod_sandbox(f"{self.lab.prefix}-{name}")
        ip, ns = self.cri.pod_ip(sid), self.cri.netns_path(sid)
        assert ip and ns, (ip, ns)
        return sid, ip, ns

    def pod(self, name: str) -> tuple[str, str, str]:
        """The module's pod ``name``, started on first use (each test may run alone)."""
        if name not in self.pods:
            self.pods[name] = self.run_pod(name)
        return self.pods[name]

    def cni(self, command: str, version: str, sid: str = "", netns: str = "", **extra) -> tuple[int, dict]:
        """One exec of the installed pynet-overlay binary inside host 3's namespace (where
        containerd execs it), with containerd's conflist entry: (exit code, JSON answer)."""
        conf = dict(rh.plugin_confs(self.conflist, version)[0], **extra)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_PATH": str(self.bin_dir),
               "CNI_CONTAINERID": sid, "CNI_NETNS": netns, "CNI_IFNAME": "eth0" if sid else ""}
        p = subprocess.run(["nsenter", f"--net={self.h3_ns}", str(self.bin_dir / "pynet-overlay")],
                           input=json.dumps(conf), capture_output=True, text=True, env=env, timeout=120)
        return p.returncode, json.loads(p.stdout) if p.stdout.strip() else {}

    def cached_result(self, sid: str) -> dict:
        """The ADD result containerd's libcni cached for the pod (what its CHECK would send)."""
        paths = glob.glob(f"{CNI_CACHE}/{NET}-{sid}-eth0")
        assert paths, f"no libcni cache of {sid[:12]} in {CNI_CACHE}"
        with open(paths[0]) as f:
            return json.load(f)["result"]

    def stop(self) -> list[str]:
        problems = []
        if self.cri is not None:
            self.cri.close()
        if self.ctd.running:
            problems += self.ctd.remove_all_pods()      # the CNI DELs, as kubelet's pod removal
        problems += self.ctd.cleanup()                  # containerd, shims, netns, mounts, cgroups
        if self.network_made:
            try:
                self.h3.call("remove_cni_network", name=NET)
            except Exception as e:  # noqa: BLE001 -- the Docker hosts must still go
                problems.append(f"remove {NET} on host 3: {e}")
        for d in self.dh:
            d.stop()
        return problems


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    base = tmp_path_factory.mktemp("overlay-cri")
    with installed_lab(str(base), joined=(2,)) as lab:
        c = Cluster(lab, base)
        try:
            c.start()
            yield c
        finally:
            problems = c.stop()
        assert problems == [], problems
        # nothing of the networks left in the cluster but host 3's own membership records
        wait(lambda: [k for k in c.h3.call("cluster_keys") if "/hosts/" not in k and "/vteps/" not in k] == [],
             "no cluster key of the networks", bound=30)


def test_a_cri_pod_on_host_3_and_docker_containers_reach_each_other(cl):
    sid, ip3, pod = cl.pod("a")
    assert ip3.startswith("10.87.0.") and ip3 not in (cl.ip["c1"], cl.ip["c2"]), (ip3, cl.ip)
    wait(lambda: icmp_ping(pod, cl.ip["c1"]) and icmp_ping(pod, cl.ip["c2"]), "pod -> both containers",
         bound=30, step=0.3)
    assert cl.dh[0].ping("c1", ip3) and cl.dh[1].ping("c2", ip3), "containers -> pod"
    assert tcp_echo(pod, cl.ns["c1"], ip3, port=7781) == b"echo:hello"          # c1 -> pod
    assert tcp_echo(cl.ns["c2"], pod, cl.ip["c2"], port=7782) == b"echo:hello"  # pod -> c2
    assert udp_echo(cl.ns["c1"], pod, cl.ip["c1"], port=7783) == b"echo:hello"  # pod -> c1


def test_cni_check_verifies_the_cri_pods_entries(cl):
    sid, ip3, pod = cl.pod("a")
    prev = cl.cached_result(sid)
    rc, out = cl.cni("CHECK", "1.0.0", sid, pod, prevResult=prev)
    assert rc == 0, out
    ep = cl.h3.call("endpoint_of", network=NET, container_id=sid)
    assert ep["record"] and ep["record"]["ip"] == ip3, ep
    cl.h3.call("cluster_put", key=ep["key"], value=None)        # the cluster lost the pod's record
    try:
        rc, out = cl.cni("CHECK", "1.0.0", sid, pod, prevResult=prev)
        assert rc == 1 and "cluster store has no record" in out.get("msg", ""), out
    finally:
        cl.h3.call("cluster_put", key=ep["key"], value=ep["record"])
    rc, out = cl.cni("CHECK", "1.0.0", sid, pod, prevResult=prev)
    assert rc == 0, out
    wait(lambda: cl.dh[0].ping("c1", ip3), "c1 -> pod with its record back", bound=30, step=0.3)


def test_cni_gc_removes_what_no_valid_attachment_names(cl):
    sid_a, ip_a, pod_a = cl.pod("a")
    sid_b, ip_b, pod_b = cl.run_pod("b")
    wait(lambda: cl.dh[0].ping("c1", ip_b), "c1 -> pod b", bound=30, step=0.3)
    b = cl.h3.call("endpoint_of", network=NET, container_id=sid_b)
    h1, h2 = cl.lab.namespaces_path("h1"), cl.lab.namespaces_path("h2")
    assert any(mac.lower() == b["mac"].lower() for mac, _ in vxlan_fdb(h1))
    assert ip_b in cl.h3.call("cluster_addresses", network=NET)
    # the runtime lost pod b (it knows only a): GC names a alone
    rc, out = cl.cni("GC", "1.1.0", **{"cni.dev/valid-attachments": [{"containerID": sid_a, "ifname": "eth0"}]})
    assert rc == 0, out
    assert cl.h3.call("endpoint_of", network=NET, container_id=sid_b) == {}
    assert b["key"] not in cl.h3.call("cluster_keys")
    held = cl.h3.call("cluster_addresses", network=NET)
    assert ip_b not in held and ip_a in held, held
    out = subprocess.run(["nsenter", f"--net={cl.h3_ns}", "ip", "link", "show", b["host_veth"]],
                         capture_output=True, text=True)
    assert out.returncode != 0, out.stdout
    for ns, h in ((h1, "host 1"), (h2, "host 2")):
        wait(lambda: not any(mac.lower() == b["mac"].lower() for mac, _ in vxlan_fdb(ns)), f"{h} dropped pod b",
             bound=30, step=0.3)
    # a is kept, whole: CHECK passes and the containers still reach it
    rc, out = cl.cni("CHECK", "1.0.0", sid_a, pod_a, prevResult=cl.cached_result(sid_a))
    assert rc == 0, out
    assert cl.dh[1].ping("c2", ip_a)
    # kubelet's StopPodSandbox / RemovePodSandbox of b afterwards: the DELs find nothing, succeed
    cl.cri.stop_pod_sandbox(sid_b)
    cl.cri.remove_pod_sandbox(sid_b)
    assert [s.id for s in cl.cri.list_pod_sandboxes()] == [sid_a]


def test_cni_status_follows_the_cluster_store(cl):
    etcd = cl.lab.etcd
    rc, out = cl.cni("STATUS", "1.1.0")
    assert rc == 0, out
    etcd.kill(0)
    etcd.kill(1)
    try:
        rc, out = cl.cni("STATUS", "1.1.0")
        assert rc == 1 and out.get("code") == 11 and "cluster store" in out.get("msg", ""), out
    finally:
        etcd.restart(0)
        etcd.restart(1)
        etcd.wait_healthy()
    wait(lambda: cl.cni("STATUS", "1.1.0")[0] == 0, "STATUS ready with the cluster store back", bound=30, step=0.5)
    sid, ip3, pod = cl.pod("a")
    wait(lambda: icmp_ping(pod, cl.ip["c1"]), "pod -> c1 after the store came back", bound=30, step=0.3)
