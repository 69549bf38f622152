"""Issue 2 acceptance on the real dockerd: `docker network create -d pynet` end to end.

Every test uses its own pynet daemon (plugin ``<prefix>-pynet``, its own state dir) and names
its Docker objects ``<prefix>-...``; the fixtures remove them even when a test fails.
Subnets are in 10.231.0.0/16, which nothing else on the machine uses.
"""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.support import harness

PAIRINGS = {
    "pynet+default-ipam": ("pynet", None),
    "pynet+pynet-ipam": ("pynet", "pynet"),
    "bridge+pynet-ipam": ("bridge", "pynet"),
}


def create_network(docker, daemon, name, *args, driver="pynet", ipam="pynet"):
    argv = ["network", "create"]
    argv += ["-d", daemon.name if driver == "pynet" else driver]
    if ipam:
        argv += ["--ipam-driver", daemon.name if ipam == "pynet" else ipam]
    docker.run(*argv, *args, name)
    return docker.inspect(name, "network")


def run_container(docker, image, name, network, *args, cmd=("sleep", "3600")):
    docker.run("run", "-d", "--name", name, "--network", network, *args, image, *cmd)
    return docker.inspect(name, "container")


def addr_on(docker, container, network):
    info = docker.inspect(container, "container")
    return info["NetworkSettings"]["Networks"][network]


def ping(docker, container, target, count=1, v6=False, check=True):
    argv = ["exec", container, "ping"] + (["-6"] if v6 else []) + ["-c", str(count), "-W", "2", target]
    p = docker.run(*argv, check=False, timeout=30)
    if check:
        assert p.returncode == 0, f"{container} cannot ping {target}: {p.stdout}{p.stderr}"
    return p.returncode == 0


def start_tcp_server(docker, container, port=8080):
    # busybox nc answers one connection per loop round; bounded by the container's life.
    docker.run("exec", "-d", container, "sh", "-c",
               f"while true; do echo pong-{container} | nc -l -p {port}; done")
    time.sleep(0.3)


def tcp_get(docker, container, ip, port=8080, check=True):
    p = docker.run("exec", container, "sh", "-c", f"nc -w 3 {ip} {port} </dev/null", check=False, timeout=30)
    if check:
        assert p.returncode == 0 and "pong" in p.stdout, f"TCP {container} -> {ip}:{port}: {p.stdout}{p.stderr}"
    return p.stdout.strip()


def pynet_cli(daemon, *args):
    out = harness.sh(*harness.pynet_command(), "--state-dir", str(daemon.state_dir),
                     "--plugin-name", daemon.name, "--json", *args)
    return json.loads(out.stdout)


def store_keys(daemon):
    import sqlite3
    db = daemon.state_dir / "pynet.db"
    with sqlite3.connect(db) as c:
        return [k for (k,) in c.execute("SELECT key FROM kv ORDER BY key")]


def links():
    return set(harness.list_links())


def container_iface(docker, container, ifname="eth0"):
    return docker.run("exec", container, "ip", "-o", "addr", "show", "dev", ifname).stdout


# --------------------------------------------------------------------------- create, three pairings

@pytest.mark.parametrize("pairing", list(PAIRINGS))
@pytest.mark.parametrize("with_subnet", [True, False], ids=["subnet", "no-subnet"])
def test_network_create_pairings(docker, test_image, pynet_daemon, prefix, pairing, with_subnet):
    driver, ipam = PAIRINGS[pairing]
    net = f"{prefix}-p"
    args = ["--subnet", "10.231.1.0/24"] if with_subnet else []
    info = create_network(docker, pynet_daemon, net, *args, driver=driver, ipam=ipam)
    subnet = info["IPAM"]["Config"][0]["Subnet"]
    if with_subnet:
        assert subnet == "10.231.1.0/24"
    c = f"{prefix}-c"
    run_container(docker, test_image, c, net)
    ip = addr_on(docker, c, net)["IPAddress"]
    import ipaddress
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(subnet)
    assert f"inet {ip}/" in container_iface(docker, c)
    if ipam == "pynet":
        pools = pynet_cli(pynet_daemon, "ipam", "ls")
        assert any(p["pool"] == subnet and p["used"] >= 2 for p in pools), pools  # gateway + container
    if driver == "pynet":
        nets = pynet_cli(pynet_daemon, "network", "ls")
        assert any(n["id"] == info["Id"] for n in nets)
        # the gateway Docker reports sits on pynet's bridge
        gw = info["IPAM"]["Config"][0].get("Gateway") or addr_on(docker, c, net)["Gateway"]
        ping(docker, c, gw)


def test_ipam_options_ip_range_gateway_aux(docker, test_image, pynet_daemon, prefix):
    net = f"{prefix}-o"
    info = create_network(docker, pynet_daemon, net, "--subnet", "10.231.2.0/24",
                          "--ip-range", "10.231.2.128/25", "--gateway", "10.231.2.254",
                          "--aux-address", "reserved=10.231.2.128")
    cfg = info["IPAM"]["Config"][0]
    assert cfg["Gateway"] == "10.231.2.254" and cfg["IPRange"] == "10.231.2.128/25"
    c = f"{prefix}-c"
    run_container(docker, test_image, c, net)
    a = addr_on(docker, c, net)
    assert a["Gateway"] == "10.231.2.254"
    last = int(a["IPAddress"].split(".")[-1])
    assert 129 <= last <= 253, a["IPAddress"]  # inside the range, not the aux address
    ping(docker, c, "10.231.2.254")


def test_ipv6_and_mtu(docker, test_image, pynet_daemon, prefix):
    net = f"{prefix}-6"
    create_network(docker, pynet_daemon, net, "--subnet", "10.231.3.0/24", "--ipv6",
                   "--subnet", "fd00:231:3::/64", "-o", "com.docker.network.driver.mtu=1400")
    a, b = f"{prefix}-a", f"{prefix}-b"
    run_container(docker, test_image, a, net)
    run_container(docker, test_image, b, net, "--ip6", "fd00:231:3::99")
    assert "mtu 1400" in docker.run("exec", a, "ip", "link", "show", "eth0").stdout
    bv6 = addr_on(docker, b, net)
    assert bv6["GlobalIPv6Address"] == "fd00:231:3::99"
    av6 = addr_on(docker, a, net)["GlobalIPv6Address"]
    assert av6.startswith("fd00:231:3::")
    ping(docker, a, "fd00:231:3::99", v6=True)
    ping(docker, b, av6, v6=True)


# --------------------------------------------------------------------------- reachability

def test_two_containers_reach_each_other(docker, test_image, pynet_daemon, prefix):
    net = f"{prefix}-r"
    create_network(docker, pynet_daemon, net, "--subnet", "10.231.4.0/24")
    a, b = f"{prefix}-a", f"{prefix}-b"
    run_container(docker, test_image, a, net)
    run_container(docker, test_image, b, net, "--network-alias", "bee")
    ip_a = addr_on(docker, a, net)["IPAddress"]
    ip_b = addr_on(docker, b, net)["IPAddress"]
    ping(docker, a, ip_b)
    ping(docker, b, ip_a)
    start_tcp_server(docker, b)
    assert tcp_get(docker, a, ip_b) == f"pong-{b}"
    # Docker's embedded DNS: by container name and by alias
    ping(docker, a, b)
    ping(docker, a, "bee")
    assert tcp_get(docker, a, "bee") == f"pong-{b}"


def test_static_ip_ip6_mac(docker, test_image, pynet_daemon, prefix):
    net = f"{prefix}-s"
    create_network(docker, pynet_daemon, net, "--subnet", "10.231.5.0/24", "--ipv6",
                   "--subnet", "fd00:231:5::/64")
    c = f"{prefix}-c"
    run_container(docker, test_image, c, net, "--ip", "10.231.5.77", "--ip6", "fd00:231:5::77",
                  "--mac-address", "02:42:de:ad:be:ef")
    a = addr_on(docker, c, net)
    assert a["IPAddress"] == "10.231.5.77"
    assert a["GlobalIPv6Address"] == "fd00:231:5::77"
    assert a["MacAddress"] == "02:42:de:ad:be:ef"
    out = docker.run("exec", c, "ip", "addr", "show", "eth0").stdout
    assert "10.231.5.77/24" in out and "fd00:231:5::77/64" in out and "02:42:de:ad:be:ef" in out


def test_connect_disconnect_second_network(docker, test_image, pynet_daemon, prefix):
    n1, n2 = f"{prefix}-n1", f"{prefix}-n2"
    create_network(docker, pynet_daemon, n1, "--subnet", "10.231.6.0/24")
    create_network(docker, pynet_daemon, n2, "--subnet", "10.231.7.0/24")
    a, b = f"{prefix}-a", f"{prefix}-b"
    run_container(docker, test_image, a, n1)
    run_container(docker, test_image, b, n2)
    ip_b = addr_on(docker, b, n2)["IPAddress"]
    docker.run("network", "connect", n2, a)
    assert "eth1" in docker.run("exec", a, "ip", "-o", "link").stdout
    ping(docker, a, ip_b)
    docker.run("network", "disconnect", n2, a)
    assert "eth1" not in docker.run("exec", a, "ip", "-o", "link").stdout
    eps = pynet_cli(pynet_daemon, "endpoint", "ls")
    n2_id = docker.inspect(n2, "network")["Id"]
    assert len([e for e in eps if e["network_id"] == n2_id]) == 1  # only b's


def test_container_restart_keeps_working(docker, test_image, pynet_daemon, prefix):
    net = f"{prefix}-rs"
    create_network(docker, pynet_daemon, net, "--subnet", "10.231.8.0/24")
    a, b = f"{prefix}-a", f"{prefix}-b"
    run_container(docker, test_image, a, net)
    run_container(docker, test_image, b, net)
    docker.run("restart", "-t", "1", b)
    ip_b = addr_on(docker, b, net)["IPAddress"]
    ping(docker, a, ip_b)
    ping(docker, b, a)
    assert len(pynet_cli(pynet_daemon, "endpoint", "ls")) == 2  # the old endpoint is gone


# --------------------------------------------------------------------------- removal leaves nothing

def test_network_rm_leaves_nothing(docker, test_image, pynet_daemon, prefix):
    # This daemon's own (tagged) links: other pynet instances may run beside it.
    def links():
        return set(harness.daemon_links(pynet_daemon.name))

    before_links = links()
    net = f"{prefix}-rm"
    info = create_network(docker, pynet_daemon, net, "--subnet", "10.231.9.0/24")
    c = f"{prefix}-c"
    run_container(docker, test_image, c, net)
    assert links() - before_links  # a bridge and a veth appeared
    docker.run("rm", "-f", c)
    docker.run("network", "rm", net)
    assert links() == before_links
    # the layout marker (pynet/meta: schema and host) stays with the state dir
    assert [k for k in store_keys(pynet_daemon) if k != "pynet/meta" and not k.startswith("meta")] == []
    # the pool is free again: the same subnet can be created at once
    create_network(docker, pynet_daemon, net, "--subnet", "10.231.9.0/24")
    assert info["Id"] != docker.inspect(net, "network")["Id"]
