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

import json
import os
import shutil
import subprocess

import pytest

from tests.support import harness
from tests.support.icmp import icmp_ping
from tests.support.overlay import (OverlayLab, host_address, installed_lab, stop_process, tcp_echo, udp_echo,
                                   wait_until as wait)

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)"),
              pytest.mark.skipif(not os.path.exists("/usr/sbin/dockerd"), reason="docker.io not installed")]

NET, SUBNET, GW = "ovd", "10.79.0.0/24", "10.79.0.1"
NET2, SUBNET2, GW2 = "ovd2", "10.80.0.0/24", "10.80.0.1"
DOCKER = "/usr/bin/docker"
START_BOUND = 90.0


class DockerHost:
    """A private dockerd and its pynet daemon in host namespace ``netns_path``."""

    def __init__(self, lab: OverlayLab, i: int):
        self.lab, self.i = lab, i
        self.dir = os.path.join(lab.base_dir, f"docker-h{i}")
        os.makedirs(self.dir, exist_ok=True)
        self.sock = os.path.join(self.dir, "docker.sock")
        self.name = f"{lab.prefix}-d{i}"                  # the plugin name dockerd knows
        self.plugin_sock = str(harness.LOCK_DIR / f"{self.name}.sock")
        self.netns = lab.namespaces_path(f"h{i}")
        self.pynet = None
        self.dockerd = None

    def start(self) -> None:
        state = os.path.join(self.dir, "pynet")
        argv = ["nsenter", f"--net={self.netns}", *harness.default_daemon_argv(
            self.name, self.plugin_sock, state),
            "--cluster-store", self.lab.url, "--advertise-address", host_address(self.i - 1),
            "--cluster-ttl", "3"]
        self.pynet_log = open(os.path.join(self.dir, "pynet.log"), "w")
        self.pynet = subprocess.Popen(argv, stdout=self.pynet_log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        wait(lambda: os.path.exists(self.plugin_sock) or self.pynet.poll() is not None,
             f"pynet daemon of host {self.i}", bound=START_BOUND)
        assert self.pynet.poll() is None, open(os.path.join(self.dir, "pynet.log")).read()[-2000:]
        # dockerd reads .spec files only under /etc and /usr/lib: the daemon's socket is bound
        # onto a socket path in this mount namespace's /run/docker/plugins instead
        here = f"/run/docker/plugins/{self.name}.sock"
        script = (f"mount -t tmpfs tmpfs /run/docker && mkdir -p /run/docker/plugins && "
                  f"touch {here} && mount --bind {self.plugin_sock} {here} && "
                  f"exec nsenter --net={self.netns} /usr/sbin/dockerd --data-root {self.dir}/root "
                  f"--exec-root {self.dir}/exec -H unix://{self.sock} --pidfile {self.dir}/pid "
                  f"--bridge none")
        self.dockerd_log = open(os.path.join(self.dir, "dockerd.log"), "w")
        self.dockerd = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                        stdout=self.dockerd_log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait(lambda: self.docker("info", check=False).returncode == 0 or self.dockerd.poll() is not None,
             f"dockerd of host {self.i}", bound=START_BOUND, step=0.5)
        assert self.dockerd.poll() is None, open(os.path.join(self.dir, "dockerd.log")).read()[-2000:]
        image = harness.ensure_test_image()
        save = subprocess.Popen([DOCKER, "save", image], stdout=subprocess.PIPE)
        subprocess.run([DOCKER, "-H", f"unix://{self.sock}", "load"], stdin=save.stdout, check=True,
                       capture_output=True, timeout=120)
        save.wait(60)
        self.image = image

    def docker(self, *args, check: bool = True, timeout: float = 120):
        p = subprocess.run([DOCKER, "-H", f"unix://{self.sock}", *args], capture_output=True, text=True,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} on host {self.i}: {p.stderr.strip()}")
        return p

    def network(self, name: str, subnet: str, gw: str) -> None:
        self.docker("network", "create", "-d", self.name, "--ipam-driver", self.name,
                    "-o", "pynet.driver=overlay", "-o", f"pynet.overlay.network={name}",
                    "--subnet", subnet, "--gateway", gw, name)

    def run(self, cname: str, network: str) -> str:
        self.docker("run", "-d", "--name", cname, "--network", network, self.image, "sleep", "600")
        info = json.loads(self.docker("inspect", cname).stdout)[0]
        return info["NetworkSettings"]["Networks"][network]["IPAddress"]

    def netns_of(self, cname: str) -> str:
        """The container's network namespace, as a path this process can enter (dockerd and
        its containers share the machine's PID namespace)."""
        pid = json.loads(self.docker("inspect", cname).stdout)[0]["State"]["Pid"]
        return f"/proc/{pid}/ns/net"

    def ping(self, cname: str, ip: str) -> bool:
        return self.docker("exec", cname, "ping", "-c", "1", "-W", "1", ip, check=False,
                           timeout=30).returncode == 0

    def stop(self) -> None:
        if self.dockerd is not None and self.dockerd.poll() is None:
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
            for n in (NET, NET2):
                self.docker("network", "rm", n, check=False)
            stop_process(self.dockerd, 60)      # it stops its containerd and shims
        stop_process(self.pynet, 30)
        harness.flush_firewall(harness.chain_prefix_for(self.name))
        try:
            os.unlink(self.plugin_sock)
        except FileNotFoundError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


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
