"""Docker containers on the overlay (issue 11, second slice), on real components only.

Three hosts (network namespaces on one underlay switch namespace, a three-member etcd on the
underlay: tests/support/overlay.py).  Hosts 1 and 2 each run a private dockerd inside their
namespace (own mount namespace with its own /run/docker/plugins, data root, exec root and API
socket: /work/shared/kernel-lab.md) and a ``pynet daemon --cluster-store ...`` serving it (its
socket bound onto ``/run/docker/plugins/<name>.sock`` in that mount namespace).  Each dockerd makes its own
network ID; ``-o pynet.overlay.network=NAME`` names the cluster network.  Host 3 attaches a pod
through the installed ``pynet-overlay`` CNI binary with a conflist of that name.

Proved: a container on host 1 and one on host 2 reach each other (ICMP, TCP, UDP) at the
addresses ``docker inspect`` reports (which come from the cluster's block IPAM: distinct blocks per host), the pod
on host 3 reaches both and they reach it; a container on a second overlay reaches none of them.
Waits are bounded polls; everything is removed at the end, even on failure.
"""
from __future__ import annotations

import os

import pytest

from tests.support.icmp import icmp_ping
from tests.support.overlay import DockerHost, OverlayLab, installed_lab, tcp_echo, udp_echo, wait_until as wait

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)"),
              pytest.mark.skipif(not os.path.exists("/usr/sbin/dockerd"), reason="docker.io not installed")]

NET, SUBNET, GW = "ovd", "10.79.0.0/24", "10.79.0.1"
NET2, SUBNET2, GW2 = "ovd2", "10.80.0.0/24", "10.80.0.1"


def conflist(lab: OverlayLab, i: int) -> dict:
    return {"cniVersion": "1.0.0", "plugin": {
        "type": "pynet-overlay", "isGateway": True, "ipMasq": True,
        "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": SUBNET, "gateway": GW}]]},
        "pynet": lab.conflist_pynet(i)}}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    # hosts 1 and 2: their Docker-serving daemons join; host 3's agent serves the pod
    with installed_lab(str(tmp_path_factory.mktemp("overlay-docker")), joined=(2,)) as lab:
        yield lab


def test_containers_on_two_hosts_and_a_pod_on_a_third_share_one_overlay(lab):
    dh = [DockerHost(lab, 1), DockerHost(lab, 2)]
    h3 = lab.hosts[2]
    pod = None
    try:
        for d in dh:
            d.start()
        for d in dh:
            d.network(NET, SUBNET, GW)
        ip1 = dh[0].run("c1", NET)
        ip2 = dh[1].run("c2", NET)
        # each host's address comes from its own block of the cluster pool: never the same one
        assert ip1 != ip2 and ip1.startswith("10.79.0.") and ip2.startswith("10.79.0."), (ip1, ip2)
        assert int(ip2.rsplit(".", 1)[1]) >= 64, ip2
        wait(lambda: dh[0].ping("c1", ip2), "c1 (host 1) -> c2 (host 2)", bound=30, step=0.5)
        assert dh[1].ping("c2", ip1)
        ns1, ns2 = dh[0].netns_of("c1"), dh[1].netns_of("c2")
        assert tcp_echo(ns2, ns1, ip2) == b"echo:hello"
        assert udp_echo(ns1, ns2, ip1) == b"echo:hello"
        pod = lab.pod("p3")
        r = h3.call("cni_add", name="pod3", netns_path=pod, network=NET, cni=conflist(lab, 2), ifname="eth0")
        ip3 = r["address"].split("/")[0]
        assert ip3 not in (ip1, ip2)
        wait(lambda: icmp_ping(pod, ip1) and icmp_ping(pod, ip2), "pod on host 3 -> both containers",
             bound=30, step=0.5)
        assert dh[0].ping("c1", ip3) and dh[1].ping("c2", ip3)
        assert tcp_echo(pod, ns1, ip3, port=7778) == b"echo:hello"
        assert udp_echo(ns2, pod, ip2, port=7780) == b"echo:hello"
        # a container on a second overlay reaches none of them
        dh[0].network(NET2, SUBNET2, GW2)
        dh[0].run("c9", NET2)
        for ip in (ip1, ip2, ip3):
            assert not dh[0].ping("c9", ip), ip
    finally:
        if pod is not None:
            h3.call("cni_del_all")
        for d in dh:
            d.stop()
    # nothing of the Docker hosts' pynet left in the cluster but host 3's own records
    wait(lambda: [k for k in h3.call("cluster_keys") if "/hosts/" not in k and "/vteps/" not in k] == [],
         "no cluster key of the Docker networks", bound=30)
