"""A Docker-made pynet network shared with CNI pods (issue 9, defects 2 and 3),
on the real dockerd with the real ``pynet-bridge`` binary.

The pod: a throwaway namespace ``<prefix>-p<hex>``, attached by exec'ing the
installed ``pynet-bridge`` with a conflist whose ``name`` is the Docker
network's name, pointed at the test daemon (its state dir, socket, chain
prefix); its only interface is on the test network's bridge and nothing is
sent.  The daemon is restarted with SIGKILL, as a crash does.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess

import pytest

from tests.support import harness
from tests.e2e.test_docker_bridge import addr_on, create_network, pynet_cli, run_container


@pytest.fixture(scope="module")
def cni_bin(tmp_path_factory):
    from pynet.cni.install import install

    d = tmp_path_factory.mktemp("cnibin")
    install(str(d), conf_dir=None)
    return str(d)


class Pods:
    """CNI pods on a daemon's networks; every one is DELeted and its namespace removed at the end."""

    def __init__(self, daemon, prefix, cni_bin):
        self.daemon, self.prefix, self.bin = daemon, prefix, cni_bin
        self.live: dict[str, tuple[dict, str]] = {}
        self.namespaces: list[str] = []

    def conf(self, name, subnet):
        return {"cniVersion": "1.0.0", "name": name, "type": "pynet-bridge", "isGateway": True,
                "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": subnet}]]},
                "pynet": {"stateDir": str(self.daemon.state_dir), "socket": str(self.daemon.socket),
                          "chainPrefix": harness.chain_prefix_for(self.daemon.name),
                          "instance": self.daemon.name}}

    def call(self, command, conf, cid, netns):
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
               "CNI_IFNAME": "eth0", "CNI_NETNS": netns, "CNI_PATH": self.bin}
        p = subprocess.run([os.path.join(self.bin, "pynet-bridge")], input=json.dumps(conf).encode(),
                           env=env, capture_output=True, timeout=120)
        out = p.stdout.decode()
        return p.returncode, (json.loads(out) if out.strip() else None), p.stderr.decode()

    def add(self, network, subnet) -> tuple[str, str]:
        """A pod on ``network``: (container id, its IPv4 address)."""
        from pynet.cnm import sandbox

        name = f"{self.prefix}-p{secrets.token_hex(2)}"
        path = sandbox.create_netns(name)
        self.namespaces.append(name)
        cid = f"{self.prefix}pod{secrets.token_hex(4)}"
        conf = self.conf(network, subnet)
        rc, res, err = self.call("ADD", conf, cid, path)
        assert rc == 0, (res, err)
        self.live[cid] = (conf, path)
        return cid, res["ips"][0]["address"].split("/")[0]

    def delete(self, cid):
        conf, path = self.live.pop(cid)
        rc, res, err = self.call("DEL", conf, cid, path)
        assert rc == 0, (res, err)

    def cleanup(self):
        from pynet.cnm import sandbox

        for cid in list(self.live):
            try:
                self.delete(cid)
            except Exception as e:  # noqa: BLE001 -- remove the rest anyway
                print(f"[pynet] DEL of pod {cid} failed: {e}")
        for name in self.namespaces:
            sandbox.delete_netns(name)


@pytest.fixture
def pods(pynet_daemon, prefix, cni_bin):
    p = Pods(pynet_daemon, prefix, cni_bin)
    yield p
    if not pynet_daemon.running:
        pynet_daemon.start()
    p.cleanup()


def pool_of(daemon, subnet):
    return next((p for p in pynet_cli(daemon, "ipam", "ls") if p["pool"] == subnet), None)


def pod_link(daemon, cid):
    ep = next(e for e in pynet_cli(daemon, "endpoint", "ls") if e.get("container_id") == cid)
    return (ep.get("driver_state") or {}).get("host_veth")


def test_daemon_restart_never_issues_a_pods_address_twice(docker, test_image, pynet_daemon, pods, prefix):
    """Regression (defect 2): after a SIGKILL and start, the reconcile with
    dockerd released the pod's address (Docker does not list CNI pods), and the
    next container could be given it."""
    net, subnet = f"{prefix}-sh", "10.236.91.0/24"
    create_network(docker, pynet_daemon, net, "--subnet", subnet)
    a = f"{prefix}-a"
    run_container(docker, test_image, a, net)
    ip_a = addr_on(docker, a, net)["IPAddress"]
    cid, ip_pod = pods.add(net, subnet)
    assert ip_pod != ip_a
    used = pool_of(pynet_daemon, subnet)["used"]        # gateway, a, the pod
    pynet_daemon.kill()
    pynet_daemon.start()
    assert pool_of(pynet_daemon, subnet)["used"] == used
    # dockerd asks for exactly the pod's address: refused, it is taken
    b = f"{prefix}-b"
    p = docker.run("run", "-d", "--name", b, "--network", net, "--ip", ip_pod, test_image,
                   "sleep", "3600", check=False)
    assert p.returncode != 0, "dockerd was given the CNI pod's address"
    docker.run("rm", "-f", b, check=False)
    c = f"{prefix}-c"
    run_container(docker, test_image, c, net)
    seen = [ip_a, ip_pod, addr_on(docker, c, net)["IPAddress"]]
    assert len(set(seen)) == 3, seen
    pods.delete(cid)
    docker.run("rm", "-f", a, c)
    docker.run("network", "rm", net)
    assert pool_of(pynet_daemon, subnet) is None


def test_docker_network_rm_with_a_pod_attached(docker, test_image, pynet_daemon, pods, prefix):
    """Regression (defect 3): `docker network rm` with a CNI pod attached --
    pynet refuses DeleteNetwork, dockerd releases the pool anyway, and pynet
    freed it with the pod's address in it; at the next start the network
    pynet had kept was force-deleted, the pod's veth with it."""
    net, subnet = f"{prefix}-rm", "10.236.92.0/24"
    info = create_network(docker, pynet_daemon, net, "--subnet", subnet)
    cid, ip_pod = pods.add(net, subnet)
    veth = pod_link(pynet_daemon, cid)
    assert veth and veth in harness.list_links()
    docker.run("network", "rm", net, check=False)   # dockerd forgets it whatever the driver says
    # the pool stays reserved (gateway and pod), the network stays for the pod
    pool = pool_of(pynet_daemon, subnet)
    assert pool is not None and pool["used"] == 2, pool
    assert [n["id"] for n in pynet_cli(pynet_daemon, "network", "ls")] == [info["Id"]]
    # the subnet cannot be pooled again
    p = docker.run("network", "create", "-d", pynet_daemon.name, "--ipam-driver", pynet_daemon.name,
                   "--subnet", subnet, f"{prefix}-rm2", check=False)
    assert p.returncode != 0, "the pod's subnet was pooled again"
    # next start: nothing is force-deleted
    pynet_daemon.kill()
    pynet_daemon.start()
    assert [n["id"] for n in pynet_cli(pynet_daemon, "network", "ls")] == [info["Id"]]
    assert veth in harness.list_links()
    assert pool_of(pynet_daemon, subnet)["used"] == 2
    # the last pod leaves: the network and its pool go with it
    pods.delete(cid)
    assert pynet_cli(pynet_daemon, "network", "ls") == []
    assert pool_of(pynet_daemon, subnet) is None
    create_network(docker, pynet_daemon, f"{prefix}-rm3", "--subnet", subnet)
    docker.run("network", "rm", f"{prefix}-rm3")
