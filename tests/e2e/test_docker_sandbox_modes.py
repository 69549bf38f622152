"""Issue 5 acceptance on the real dockerd: Docker's container, host and none
network modes beside pynet networks.

`docker run --network container:ID` where ID is on a pynet network sees pynet's
interface, address and traffic; Docker's own host and none modes live beside
pynet networks without interference (pynet records nothing for them, and pynet's
containers keep reaching each other).  Subnets in 10.233.0.0/16.
"""
from __future__ import annotations

import json

import pytest

from tests.support import harness


def mk(docker, daemon, name, subnet, *args):
    docker.run("network", "create", "-d", daemon.name, "--ipam-driver", daemon.name,
               "--subnet", subnet, *args, name)


def run(docker, image, name, network, *args):
    docker.run("run", "-d", "--name", name, "--network", network, *args, image, "sleep", "3600")


def sh_in(docker, container, *argv):
    return docker.run("exec", container, *argv).stdout


def ping(docker, container, target):
    return docker.run("exec", container, "ping", "-c", "1", "-W", "2", target,
                      check=False, timeout=30).returncode == 0


def ip_of(docker, container, network):
    return docker.inspect(container, "container")["NetworkSettings"]["Networks"][network]["IPAddress"]


def pynet_json(daemon, *args):
    out = harness.sh(*harness.pynet_command(), "--state-dir", str(daemon.state_dir),
                     "--plugin-name", daemon.name, "--json", *args)
    return json.loads(out.stdout)


def ifaces(text):
    return sorted(l.split(": ")[1].split("@")[0] for l in text.splitlines() if ": " in l)


def test_container_mode_shares_pynet_interface(docker, test_image, pynet_daemon, prefix):
    net = f"{prefix}-cm"
    mk(docker, pynet_daemon, net, "10.233.1.0/24")
    run(docker, test_image, f"{prefix}-web", net)
    run(docker, test_image, f"{prefix}-peer", net)
    run(docker, test_image, f"{prefix}-side", f"container:{prefix}-web")
    web_ip = ip_of(docker, f"{prefix}-web", net)
    web_if = sh_in(docker, f"{prefix}-web", "ip", "-o", "addr", "show", "eth0")
    assert sh_in(docker, f"{prefix}-side", "ip", "-o", "addr", "show", "eth0") == web_if
    assert f"inet {web_ip}/24" in web_if
    # traffic: the sharer speaks with web's address; peer's TCP reaches a server in the sharer
    assert ping(docker, f"{prefix}-side", ip_of(docker, f"{prefix}-peer", net))
    docker.run("exec", "-d", f"{prefix}-side", "sh", "-c", "echo pong-side | nc -l -p 8080")
    import time
    time.sleep(0.5)
    got = docker.run("exec", f"{prefix}-peer", "sh", "-c", f"nc -w 3 {web_ip} 8080 </dev/null",
                     check=False).stdout
    assert "pong-side" in got
    # pynet knows one endpoint per real network attachment, none for the sharer
    eps = pynet_json(pynet_daemon, "endpoint", "ls")
    assert len(eps) == 2
    # Docker's own refusals for the impossible combinations
    res = docker.run("network", "connect", net, f"{prefix}-side", check=False)
    assert res.returncode != 0 and "sharing network namespace" in res.stderr, res.stderr
    res = docker.run("run", "-d", "--name", f"{prefix}-pub", "--network",
                     f"container:{prefix}-web", "-p", "8081:80", test_image, "true", check=False)
    assert res.returncode != 0 and "port publishing" in res.stderr, res.stderr


def test_docker_host_and_none_beside_pynet(docker, test_image, pynet_daemon, prefix):
    net = f"{prefix}-hn"
    mk(docker, pynet_daemon, net, "10.233.2.0/24")
    run(docker, test_image, f"{prefix}-a", net)
    run(docker, test_image, f"{prefix}-b", net)
    run(docker, test_image, f"{prefix}-host", "host")
    run(docker, test_image, f"{prefix}-none", "none")
    assert ifaces(sh_in(docker, f"{prefix}-none", "ip", "-o", "link")) == ["lo"]
    host_links = set(harness.list_links())
    bridge = "pn-" + docker.inspect(net, "network")["Id"][:12]
    seen = set(ifaces(sh_in(docker, f"{prefix}-host", "ip", "-o", "link")))
    assert bridge in seen and seen <= host_links | {"lo"}
    # host mode reaches pynet's containers through pynet's bridge; pynet's containers still
    # reach each other; pynet holds no record for host/none containers
    b_ip = ip_of(docker, f"{prefix}-b", net)
    assert ping(docker, f"{prefix}-host", b_ip)
    assert ping(docker, f"{prefix}-a", b_ip)
    assert len(pynet_json(pynet_daemon, "endpoint", "ls")) == 2
    docker.run("rm", "-f", f"{prefix}-host", f"{prefix}-none")
    assert ping(docker, f"{prefix}-a", b_ip)
    assert bridge in set(harness.list_links())
