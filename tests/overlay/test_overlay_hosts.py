"""Acceptance slice of the overlay (issue 11), on real components only.

Three hosts (network namespaces on one underlay switch namespace), each with its own pynet
instance (state dir, chain prefix) and a member of a real three-member etcd on the underlay;
each host's agent (what ``pynet daemon --cluster-store`` runs) keeps its lease and programs its
VXLAN devices.  Pods are attached by executing the installed ``pynet-overlay`` CNI binary in
their host's namespace (HostService.cni_add), as a runtime does.

Proved: pods on host 1 and host 2 reach each other (ICMP, TCP) over one overlay; ARP is answered
on the host (no inner ARP frame on the underlay, while the VXLAN frames carry the network's VNI);
a host whose lease expires vanishes from its peers' FDB and comes back when it returns, without
touching its pods; CNI DEL removes the pod's entries on the peers; after teardown no etcd key,
link or rule of pynet's is left.  Waits are bounded polls, never timing assertions.
"""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.support.icmp import icmp_ping
from tests.support.overlay import OverlayLab, capture, host_daemon, installed_lab, tcp_echo, wait_until as wait

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")]

NET = "ovl-a"
SUBNET = "10.77.0.0/24"
POD_IPS = {1: "10.77.0.11", 2: "10.77.0.12", 3: "10.77.0.13"}


def conflist(lab: OverlayLab, i: int) -> dict:
    return {"cniVersion": "1.0.0", "plugin": {
        "type": "pynet-overlay", "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
        "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": SUBNET}]]},
        "capabilities": {"ips": True}, "pynet": lab.conflist_pynet(i)}}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with installed_lab(str(tmp_path_factory.mktemp("overlay"))) as lab:
        yield lab


def test_pods_on_two_hosts_reach_each_other_and_arp_stays_local(lab):
    h1, h2, h3 = lab.hosts
    pods = {i: lab.pod(f"{i}") for i in (1, 2)}
    res = {i: lab.hosts[i - 1].call("cni_add", name=f"pod{i}", netns_path=pods[i], network=NET,
                                    cni=conflist(lab, i - 1), ifname="eth0", address=POD_IPS[i],
                                    prefixlen=24)
           for i in (1, 2)}
    for i in (1, 2):
        assert res[i]["address"] == f"{POD_IPS[i]}/24"
        assert res[i]["mac"] == "02:42:" + ":".join(f"{int(b):02x}" for b in POD_IPS[i].split("."))
    o1, o2 = h1.call("overlay", network=NET), h2.call("overlay", network=NET)
    assert o1["vni"] == o2["vni"] >= 4096 and o1["id"] == o2["id"]
    assert (o1["info"]["learning"], o1["info"]["proxy"], o1["info"]["port"]) == (False, True, 4789)
    assert o1["mtu"] == 1450                              # underlay 1500 - 50
    # each host's agent programs the other's pod (and its flood entry)
    wait(lambda: (res[2]["mac"], "198.18.77.12") in h1.call("overlay", network=NET)["fdb"], "pod2 in h1's FDB")
    wait(lambda: (res[1]["mac"], "198.18.77.11") in h2.call("overlay", network=NET)["fdb"], "pod1 in h2's FDB")
    # the flood entry follows host 2's VTEP announcement (its agent's, after the endpoint)
    wait(lambda: ("00:00:00:00:00:00", "198.18.77.12") in h1.call("overlay", network=NET)["fdb"],
         "host 2's flood entry on h1")
    o1 = h1.call("overlay", network=NET)
    assert not any(dst == "198.18.77.13" for _, dst in o1["fdb"])   # host 3 has no pod on it
    assert (POD_IPS[2], res[2]["mac"]) in o1["neigh"]

    # ICMP both ways, with no ARP frame inside the VXLAN on the underlay
    for i in (1, 2):
        subprocess.run(["nsenter", f"--net={pods[i]}", "ip", "neigh", "flush", "all"], check=True)
    frames = capture(lab.namespaces_path("ul"), 0.5, lambda: (
        wait(lambda: icmp_ping(pods[1], POD_IPS[2]), "pod1 -> pod2 ping", bound=20),
        wait(lambda: icmp_ping(pods[2], POD_IPS[1]), "pod2 -> pod1 ping", bound=20)))
    from scapy.layers.l2 import ARP
    from scapy.layers.vxlan import VXLAN
    vx = [f for f in frames if f.haslayer(VXLAN)]
    assert vx, f"no VXLAN frame captured ({len(frames)} frames)"
    assert {f[VXLAN].vni for f in vx} == {o1["vni"]}
    assert [f for f in vx if f[VXLAN].haslayer(ARP)] == []
    # ... and the pods did resolve each other (answered on their own host, by the VXLAN proxy)
    out = subprocess.run(["nsenter", f"--net={pods[1]}", "ip", "neigh", "show", POD_IPS[2]],
                         capture_output=True, text=True).stdout
    assert res[2]["mac"] in out

    # the MTU: a DF packet of underlay MTU - 50 (1450: 28 bytes of IP and ICMP headers) crosses;
    # one byte more does not
    assert wait(lambda: icmp_ping(pods[1], POD_IPS[2], size=1450 - 28, df=True), "1450-byte DF ping")
    assert not icmp_ping(pods[1], POD_IPS[2], size=1450 - 28 + 1, df=True)

    # TCP both ways
    assert tcp_echo(pods[2], pods[1], POD_IPS[2]) == b"echo:hello"
    assert tcp_echo(pods[1], pods[2], POD_IPS[1], port=7778) == b"echo:hello"


def test_host_ls_lists_the_members_their_vteps_and_networks(lab):
    import json
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.run(["nsenter", f"--net={lab.namespaces_path('h1')}", sys.executable, "-m", "pynet",
                        "host", "ls", "--json", "--cluster-store", lab.url,
                        "--state-dir", os.path.join(lab.base_dir, "state-h1")],
                       cwd=repo, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert sorted(r["address"] for r in rows) == ["198.18.77.11", "198.18.77.12", "198.18.77.13"]
    assert [r["self"] for r in rows if r["address"] == "198.18.77.11"] == [True]
    nid = NET[:12]          # the cluster network: the conflist's name (pynet.drivers.overlay.cluster_network)
    assert {r["address"]: r["networks"] for r in rows} == {
        "198.18.77.11": [nid], "198.18.77.12": [nid], "198.18.77.13": []}
    assert all(r["lease"] for r in rows)
    p = subprocess.run([sys.executable, "-m", "pynet", "host", "ls"], cwd=repo, capture_output=True,
                       text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "PYNET_CLUSTER_STORE"})
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "no cluster store" in p.stderr

def test_an_expired_host_vanishes_from_peers_and_comes_back(lab):
    h1, h2, _ = lab.hosts
    mac2 = "02:42:0a:4d:00:0c"
    wait(lambda: (mac2, "198.18.77.12") in h1.call("overlay", network=NET)["fdb"], "pod2 in h1's FDB")
    # host 2's agent dies without revoking: its lease expires (TTL 3 s) and host 1 drops it
    h2.call("leave_cluster", revoke=False)
    wait(lambda: not any(dst == "198.18.77.12" for _, dst in h1.call("overlay", network=NET)["fdb"]),
         "host 2 gone from host 1's FDB")
    assert all(mac != mac2 for _, mac in h1.call("overlay", network=NET)["neigh"])
    # its endpoint was not freed by anyone, and the pod was not touched
    assert any("/endpoints/" in k for k in h1.call("cluster_keys"))
    # host 2 returns: it re-announces itself, host 1 re-adds it, the pods talk again
    h2.call("join_cluster")
    wait(lambda: (mac2, "198.18.77.12") in h1.call("overlay", network=NET)["fdb"], "host 2 back")
    pods = {i: f"/var/run/netns/{lab.prefix}-p{i}" for i in (1, 2)}
    wait(lambda: icmp_ping(pods[1], POD_IPS[2]), "pod1 -> pod2 after host 2 returned", bound=20)


def test_a_sigkilled_daemon_is_dropped_by_peers_and_rejoins_on_restart(lab):
    """The real daemon (``pynet daemon --cluster-store``) is host 2's agent here: SIGKILLed, its
    lease expires and host 1 drops it; restarted, it re-announces its pod, which was never
    restarted, and host 1 reaches it again."""
    h1, h2, _ = lab.hosts
    mac2 = "02:42:0a:4d:00:0c"
    pod1 = lab.namespaces_path("p1")
    on_h1 = lambda: h1.call("overlay", network=NET)   # noqa: E731
    h2.call("leave_cluster", revoke=True)               # the test's agent steps aside
    wait(lambda: (mac2, "198.18.77.12") not in on_h1()["fdb"], "host 2 revoked")
    procs = []
    try:
        procs.append(host_daemon(lab, 1))
        wait(lambda: (mac2, "198.18.77.12") in on_h1()["fdb"], "host 2's daemon announced its pod")
        wait(lambda: icmp_ping(pod1, POD_IPS[2]), "pod1 -> pod2 via the daemon", bound=20)
        procs[-1].kill()
        procs[-1].wait(10)
        wait(lambda: (mac2, "198.18.77.12") not in on_h1()["fdb"], "killed daemon's lease expired")
        procs.append(host_daemon(lab, 1))
        wait(lambda: (mac2, "198.18.77.12") in on_h1()["fdb"], "restarted daemon re-announced")
        wait(lambda: icmp_ping(pod1, POD_IPS[2]), "pod1 -> pod2 after the restart", bound=20)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
        h2.call("join_cluster")
    wait(lambda: (mac2, "198.18.77.12") in on_h1()["fdb"], "host 2's own agent back")

def test_cni_del_removes_the_pods_entries_on_peers(lab):
    h1, h2, h3 = lab.hosts
    pod3 = lab.pod("3")
    r = h3.call("cni_add", name="pod3", netns_path=pod3, network=NET, cni=conflist(lab, 2), ifname="eth0",
                address=POD_IPS[3], prefixlen=24)
    wait(lambda: (r["mac"], "198.18.77.13") in h1.call("overlay", network=NET)["fdb"], "pod3 in h1's FDB")
    wait(lambda: icmp_ping(f"/var/run/netns/{lab.prefix}-p1", POD_IPS[3]), "pod1 -> pod3", bound=20)
    assert h3.call("cni_del_all") == []
    wait(lambda: not any(dst == "198.18.77.13" for _, dst in h1.call("overlay", network=NET)["fdb"]),
         "pod3 and host 3's flood entry gone from h1")
    assert all(ip != POD_IPS[3] for ip, _ in h2.call("overlay", network=NET)["neigh"])


def test_addresses_come_from_each_hosts_own_block_and_overlays_are_isolated(lab):
    """A second overlay whose pods ask for no address: each host picks from a /26 block it
    claimed in the cluster (no address twice), the pods reach each other across hosts, and
    neither reaches the first overlay's pods."""
    import ipaddress

    h1, h2, _ = lab.hosts
    conf = {i: conflist(lab, i) for i in (0, 1)}
    for i in (0, 1):
        conf[i]["plugin"]["ipam"] = {"type": "pynet-ipam", "ranges": [[{"subnet": "10.78.0.0/24"}]]}
    pods = {i: lab.pod(f"b{i}") for i in (1, 2)}
    got = {i: lab.hosts[i - 1].call("cni_add", name=f"podb{i}", netns_path=pods[i], network="ovl-b",
                                    cni=conf[i - 1], ifname="eth0")["address"] for i in (1, 2)}
    ips = {i: ipaddress.ip_interface(got[i]).ip for i in (1, 2)}
    assert ips[1] != ips[2]
    blocks = {i: ipaddress.ip_network(f"{ips[i]}/26", strict=False) for i in (1, 2)}
    assert blocks[1] != blocks[2], got                 # each host allocates from its own block
    assert h1.call("overlay", network="ovl-b")["vni"] != h1.call("overlay", network=NET)["vni"]
    wait(lambda: icmp_ping(pods[1], str(ips[2])), "podb1 -> podb2", bound=30)
    wait(lambda: icmp_ping(pods[2], str(ips[1])), "podb2 -> podb1", bound=30)
    for other in (POD_IPS[1], POD_IPS[2]):
        assert not any(icmp_ping(pods[1], other) for _ in range(2)), f"ovl-b reached {other} on ovl-a"

def test_external_reach_masquerade_and_a_published_port_on_the_pods_host(lab):
    """Build 4's external reach, as for a bridge network: a pod reaches an address outside the
    overlay through its own host, masqueraded to that host's address; a port published by the
    pod's ADD (portMappings) is reached at its host's address from outside.  The "outside" is a
    namespace plugged into the underlay switch (never the machine's uplink)."""
    import socket
    from pynet.sysctl import run_in_netns

    h1 = lab.hosts[0]
    outside = lab.netns("x")
    lab.switch.call("plug", port="x", netns_path=outside, peer_name="eth0", bridge="br0")
    out_ip = "198.18.77.200"
    run_in_netns(outside, lambda: (subprocess.run(["ip", "addr", "add", f"{out_ip}/24", "dev", "eth0"], check=True),
                                   subprocess.run(["ip", "link", "set", "eth0", "up"], check=True),
                                   subprocess.run(["ip", "link", "set", "lo", "up"], check=True)))
    pod = lab.pod("e1")
    conf = conflist(lab, 0)
    conf["plugin"]["capabilities"] = {"ips": True, "portMappings": True}
    h1.call("cni_add", name="pode1", netns_path=pod, network=NET, cni=conf, ifname="eth0",
            address="10.77.0.21", prefixlen=24,
            publish=[{"host_port": 18081, "container_port": 8081, "proto": "tcp"}])

    def served(server_ns, listen_port, client_ns, ip, port):
        """(what the client got back, the peer address the server saw)."""
        srv = run_in_netns(server_ns, lambda: socket.create_server(("0.0.0.0", listen_port)))
        srv.settimeout(10)
        try:
            cli = run_in_netns(client_ns, lambda: socket.create_connection((ip, port), timeout=10))
            with cli:
                conn, peer = srv.accept()
                with conn:
                    conn.sendall(b"from " + peer[0].encode())
                    return cli.recv(64), peer[0]
        finally:
            srv.close()

    # masquerade: the outside sees host 1's underlay address, not the pod's
    got, peer = served(outside, 7791, pod, out_ip, 7791)
    assert peer == "198.18.77.11" and got == b"from 198.18.77.11", (got, peer)
    # the published port: host 1's address:18081 reaches the pod's 8081 (DNAT on the pod's host)
    got, peer = served(pod, 8081, outside, "198.18.77.11", 18081)
    assert got == f"from {out_ip}".encode(), (got, peer)
    h1.call("cni_del", name="pode1")


def test_one_etcd_member_down_every_operation_still_succeeds(lab):
    """Host 1's etcd member is SIGKILLed: a pod added on host 1 (its store fails over to the
    other members) is programmed on host 2 and reached from there; the member comes back."""
    h1, h2, _ = lab.hosts
    lab.etcd.kill(0)
    try:
        pod = lab.pod("k1")
        r = h1.call("cni_add", name="podk1", netns_path=pod, network=NET, cni=conflist(lab, 0), ifname="eth0")
        ip = r["address"].split("/")[0]
        wait(lambda: (r["mac"], "198.18.77.11") in h2.call("overlay", network=NET)["fdb"], "podk1 on h2")
        wait(lambda: icmp_ping(lab.namespaces_path("p2"), ip), "pod2 -> podk1", bound=20)
    finally:
        lab.etcd.restart(0)
        lab.etcd.wait_healthy()

def test_teardown_leaves_nothing(lab):
    """Last in the module: every host tears its pynet down (CNI DEL, networks removed); then no
    cluster key but the hosts' own leased records, and no link or rule of pynet's is left."""
    for h in lab.hosts:
        out = h.call("teardown")
        assert out["problems"] == [] and out["leftovers"] == [], out
    wait(lambda: [k for k in lab.hosts[0].call("cluster_keys") if "/hosts/" not in k] == [],
         "no cluster key but the hosts'")
    for h in lab.hosts:
        h.call("leave_cluster", revoke=True)
    assert lab.hosts[0].call("cluster_keys") == []
