"""Faults and restarts of the overlay with Docker containers and a CNI pod (issue 11), on real
components only.

One cluster for the module (tests/support/overlay.py): three hosts on an underlay switch, a
three-member etcd (one member in each host namespace), private dockerds with their ``pynet
daemon --cluster-store`` on hosts 1 and 2, and host 3's agent serving a pod through the
installed ``pynet-overlay`` CNI binary.  Container c1 (host 1), c2 (host 2) and pod3 (host 3)
share the overlay ``ovf``; every test leaves them as it found them (the next one uses them).

Proved, in order:
- the underlay carries the container-to-container traffic as VXLAN with the network's VNI and
  no ARP frame inside it (scapy on host 1's switch port);
- one etcd member SIGKILLed during container and pod churn: every operation succeeds;
- two SIGKILLed: creating a network, a container's endpoint or a pod fails at once with a
  transient error (Docker ``Err`` naming the cluster store, CNI code 11) while continuous probes
  between the running containers and the pod lose nothing; the members back, the hosts converge
  (new containers reach the old ones) with no container restarted;
- host 2's daemon SIGKILLed: once its lease expires hosts 1 and 3 drop its entries; restarted, its
  container (never restarted) is reachable again;
- restarting each pynet daemon (SIGTERM, start) loses at most one probe of a continuous
  cross-host probe.
Waits are bounded polls (never timing assertions); the cluster goes at the end, even on failure.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.icmp import icmp_ping
from tests.support.overlay import (DockerHost, OverlayLab, Probe, capture, host_address, host_daemon,
                                   installed_lab, start_docker_hosts, stop_process, vxlan_fdb,
                                   wait_until as wait)

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)"),
              pytest.mark.skipif(not os.path.exists("/usr/sbin/dockerd"), reason="docker.io not installed")]

NET, SUBNET, GW = "ovf", "10.81.0.0/24", "10.81.0.1"
NETX, SUBNETX, GWX = "ovfx", "10.82.0.0/24", "10.82.0.1"
# the Docker hosts' lease TTL: long enough for a daemon restart to fit in it, short enough for
# the SIGKILL test to wait for its expiry
DOCKER_TTL = 8


def conflist(lab: OverlayLab, i: int) -> dict:
    return {"cniVersion": "1.0.0", "plugin": {
        "type": "pynet-overlay", "isGateway": True, "ipMasq": True,
        "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": SUBNET, "gateway": GW}]]},
        "pynet": lab.conflist_pynet(i)}}


class Cluster:
    """The module's cluster: ``lab``, ``dh`` (the two Docker hosts), c1/c2 and pod3 with their
    addresses, MACs and namespaces."""

    def __init__(self, lab: OverlayLab):
        self.lab = lab
        self.dh = [DockerHost(lab, 1, ttl=DOCKER_TTL), DockerHost(lab, 2, ttl=DOCKER_TTL)]
        self.h3 = lab.hosts[2]
        self.pod3 = None

    def start(self) -> None:
        self.ip, self.ns = start_docker_hosts(self.dh, NET, SUBNET, GW)
        self.mac = {c: self.dh[i].inspect(c)["NetworkSettings"]["Networks"][NET]["MacAddress"]
                    for i, c in enumerate(("c1", "c2"))}
        self.pod3 = self.lab.pod("p3")
        r = self.h3.call("cni_add", name="pod3", netns_path=self.pod3, network=NET, cni=conflist(self.lab, 2),
                         ifname="eth0")
        self.ip["pod3"], self.mac["pod3"], self.ns["pod3"] = r["address"].split("/")[0], r["mac"], self.pod3
        self.all_talk()

    def started(self) -> dict:
        """Each container's start time and PID: unchanged means never restarted."""
        return {c: (self.dh[i].inspect(c)["State"]["StartedAt"], self.dh[i].inspect(c)["State"]["Pid"])
                for i, c in enumerate(("c1", "c2"))}

    def all_talk(self, bound: float = 30) -> None:
        for a, b in (("c1", "c2"), ("c2", "c1"), ("pod3", "c1"), ("pod3", "c2"), ("c1", "pod3")):
            wait(lambda: icmp_ping(self.ns[a], self.ip[b]), f"{a} -> {b}", bound=bound, step=0.3)

    def stop(self) -> None:
        if self.pod3 is not None:
            self.h3.call("cni_del_all")
        for d in self.dh:
            d.stop()


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    with installed_lab(str(tmp_path_factory.mktemp("overlay-faults")), joined=(2,), lease_ttl=DOCKER_TTL) as lab:
        c = Cluster(lab)
        try:
            c.start()
            yield c
        finally:
            c.stop()


def test_the_underlay_carries_the_networks_vni_and_no_inner_arp(cl):
    from scapy.layers.l2 import ARP
    from scapy.layers.vxlan import VXLAN

    vni = cl.h3.call("overlay", network=NET)["vni"]       # one cluster network: one VNI on every host
    for c in ("c1", "c2"):                                 # resolve again, during the capture
        subprocess.run(["nsenter", f"--net={cl.ns[c]}", "ip", "neigh", "flush", "all"], check=True)
    frames = capture(cl.lab.namespaces_path("ul"), 0.5, lambda: (
        wait(lambda: icmp_ping(cl.ns["c1"], cl.ip["c2"]), "c1 -> c2", bound=20),
        wait(lambda: icmp_ping(cl.ns["c2"], cl.ip["c1"]), "c2 -> c1", bound=20)))
    vx = [f for f in frames if f.haslayer(VXLAN)]
    assert vx, f"no VXLAN frame captured ({len(frames)} frames)"
    assert {f[VXLAN].vni for f in vx} == {vni}
    assert [f for f in vx if f[VXLAN].haslayer(ARP)] == []
    # the containers did resolve each other: answered on their own host by the VXLAN proxy
    out = subprocess.run(["nsenter", f"--net={cl.ns['c1']}", "ip", "neigh", "show", cl.ip["c2"]],
                         capture_output=True, text=True, check=True).stdout
    assert cl.mac["c2"] in out


def _churn(cl: Cluster, tag: str, midway=None) -> None:
    """A container on each Docker host and a pod on host 3, each reaching the others' old
    peers, then removed; ``midway()`` runs after the first container started."""
    new = {}
    for i, d in enumerate(cl.dh):
        ip = d.run(f"{tag}{i + 1}", NET)
        new[f"{tag}{i + 1}"] = (d.netns_of(f"{tag}{i + 1}"), ip)
        if i == 0 and midway is not None:
            midway()
    pod = cl.lab.pod(tag)
    r = cl.h3.call("cni_add", name=tag, netns_path=pod, network=NET, cni=conflist(cl.lab, 2), ifname="eth0")
    new[tag] = (pod, r["address"].split("/")[0])
    assert len({ip for _, ip in new.values()} | set(cl.ip.values())) == len(new) + len(cl.ip)
    for name, (ns, ip) in new.items():
        for old in ("c1", "c2", "pod3"):
            wait(lambda: icmp_ping(ns, cl.ip[old]), f"{name} -> {old}", bound=30, step=0.3)
            wait(lambda: icmp_ping(cl.ns[old], ip), f"{old} -> {name}", bound=30, step=0.3)
    for i, d in enumerate(cl.dh):
        d.docker("rm", "-f", f"{tag}{i + 1}")
    cl.h3.call("cni_del", name=tag)


def test_one_etcd_member_down_every_operation_succeeds(cl):
    lab = cl.lab
    before = cl.started()
    try:
        _churn(cl, "k", midway=lambda: lab.etcd.kill(0))   # host 1's own member, mid-churn
        # a network made and removed on the degraded cluster
        cl.dh[1].network(NETX, SUBNETX, GWX)
        cl.dh[1].docker("network", "rm", NETX)
    finally:
        lab.etcd.restart(0)
        lab.etcd.wait_healthy()
    assert cl.started() == before


def test_two_etcd_members_down_refuse_changes_fast_and_running_ones_keep_talking(cl):
    lab = cl.lab
    before = cl.started()
    probes = [Probe(cl.ns["c1"], cl.ip["c2"]), Probe(cl.ns["pod3"], cl.ip["c1"]), Probe(cl.ns["c2"], cl.ip["pod3"])]
    for p in probes:
        p.__enter__()
    try:
        lab.etcd.kill(0)
        lab.etcd.kill(1)
        try:
            # a network, a container's endpoint, a pod: each refused with a transient error
            p = cl.dh[0].network(NETX, SUBNETX, GWX, check=False)
            assert p.returncode != 0 and "cluster store" in p.stderr, p.stderr
            p = cl.dh[1].docker("run", "-d", "--name", "x2", "--network", NET, cl.dh[1].image, "sleep", "600",
                                check=False)
            assert p.returncode != 0 and "cluster store" in p.stderr, p.stderr
            cl.dh[1].docker("rm", "-f", "x2", check=False)  # docker run created it before the start failed
            refused = cl.h3.call("cni_add_refused", name="x3", netns_path=lab.pod("x3"), network=NET,
                                 cni=conflist(lab, 2), ifname="eth0")
            assert refused.get("code") == 11 and "cluster store" in refused["message"], refused
            # the data plane never depended on the store: nothing lost so far
            assert [p.lost for p in probes] == [0, 0, 0], [p.results for p in probes]
        finally:
            lab.etcd.restart(0)
            lab.etcd.restart(1)
            lab.etcd.wait_healthy()
        # the hosts converge without restarts: new containers and a pod reach the old ones
        _churn(cl, "r")
    finally:
        sent_lost = [p.stop() for p in probes]
    assert all(lost == 0 and sent > 0 for sent, lost in sent_lost), sent_lost
    assert cl.started() == before
    cl.dh[0].docker("network", "rm", NETX, check=False)     # dockerd may keep a refused create's record


def test_a_sigkilled_daemon_is_dropped_after_its_lease_and_its_containers_return(cl):
    lab, d2 = cl.lab, cl.dh[1]
    before = cl.started()
    h1_ns, h3_ns, vtep2 = lab.namespaces_path("h1"), lab.namespaces_path("h3"), host_address(1)
    entry = (cl.mac["c2"], vtep2)
    assert entry in vxlan_fdb(h1_ns) and entry in vxlan_fdb(h3_ns)
    d2.kill_pynet()
    for ns, h in ((h1_ns, "host 1"), (h3_ns, "host 3")):
        wait(lambda: not any(dst == vtep2 for _, dst in vxlan_fdb(ns)), f"host 2 dropped by {h}",
             bound=DOCKER_TTL * 4, step=0.3)
    d2.start_pynet()
    for ns, h in ((h1_ns, "host 1"), (h3_ns, "host 3")):
        wait(lambda: entry in vxlan_fdb(ns), f"c2 back in {h}'s FDB", bound=30, step=0.3)
    cl.all_talk()
    assert cl.started() == before


def test_restarting_any_daemon_loses_at_most_one_probe(cl):
    lab = cl.lab
    before = cl.started()
    for i, d in enumerate(cl.dh):
        other = "c2" if i == 0 else "c1"
        with Probe(cl.ns[other], cl.ip[f"c{i + 1}"]) as probe:
            d.restart_pynet()
            # the restarted daemon is back in the cluster: a new container of its host is reached
            ip = d.run(f"s{i + 1}", NET)
            wait(lambda: icmp_ping(cl.ns[other], ip), f"new container on host {i + 1}", bound=30, step=0.3)
        sent, lost = probe.stop()
        assert sent > 0 and lost <= 1, (f"host {i + 1}", probe.results)
        d.docker("rm", "-f", f"s{i + 1}")
    # host 3: its pynet daemon (on the worker's state dir: the same host) takes over from the
    # worker's agent, then is restarted
    h3 = cl.h3
    sock = os.path.join(lab.base_dir, "state-h3", "daemon.sock")
    procs: list = []

    def start_daemon():
        procs.append(host_daemon(lab, 2, ttl=DOCKER_TTL))
        wait(lambda: os.path.exists(sock) or procs[-1].poll() is not None, "host 3's daemon serving", bound=90)
        assert procs[-1].poll() is None, "host 3's daemon exited"
    with Probe(cl.ns["c1"], cl.ip["pod3"]) as probe:
        marks = {"leave": len(probe.results)}
        h3.call("leave_cluster", revoke=False)       # the worker's lease lasts DOCKER_TTL too
        try:
            start_daemon()
            marks["started"] = len(probe.results)
            stop_process(procs[-1], 30)
            marks["stopped"] = len(probe.results)
            start_daemon()
            marks["restarted"] = len(probe.results)
            pod = lab.pod("s3")
            r = h3.call("cni_add", name="s3", netns_path=pod, network=NET, cni=conflist(lab, 2), ifname="eth0")
            wait(lambda: icmp_ping(cl.ns["c1"], r["address"].split("/")[0]), "new pod on host 3 via its daemon",
                 bound=30, step=0.3)
            h3.call("cni_del", name="s3")
            marks["pod"] = len(probe.results)
        finally:
            for p in procs:
                stop_process(p, 30)
            marks["daemon gone"] = len(probe.results)
            h3.call("join_cluster")
        cl.all_talk()
    sent, lost = probe.stop()
    assert sent > 0 and lost <= 1, ("host 3", marks, [i for i, ok in enumerate(probe.results) if not ok])
    assert cl.started() == before
