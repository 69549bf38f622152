"""Issue 2 acceptance: restarts, a deleted bridge, and bad input on the real dockerd."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.support import harness
from tests.e2e.test_docker_bridge import (addr_on, create_network, links, ping, pynet_cli, run_container,
                                store_keys, start_tcp_server, tcp_get)


def test_pynet_daemon_restart_while_containers_run(docker, test_image, pynet_daemon, prefix):
    net = f"{prefix}-d"
    create_network(docker, pynet_daemon, net, "--subnet", "10.231.20.0/24")
    a, b = f"{prefix}-a", f"{prefix}-b"
    run_container(docker, test_image, a, net)
    run_container(docker, test_image, b, net)
    ip_b = addr_on(docker, b, net)["IPAddress"]
    start_tcp_server(docker, b)
    pynet_daemon.stop()
    ping(docker, a, ip_b)                       # the data path does not need the daemon
    pynet_daemon.start()
    ping(docker, a, ip_b)
    assert tcp_get(docker, a, ip_b) == f"pong-{b}"
    c = f"{prefix}-c"
    run_container(docker, test_image, c, net)    # a new container joins
    ping(docker, c, ip_b)
    docker.run("rm", "-f", a)                   # an old one detaches
    docker.run("rm", "-f", b, c)
    docker.run("network", "rm", net)            # and the network deletes cleanly
    assert pynet_cli(pynet_daemon, "network", "ls") == []
    assert pynet_cli(pynet_daemon, "endpoint", "ls") == []


def test_pynet_daemon_sigkill_then_restart(docker, test_image, pynet_daemon, prefix):
    net = f"{prefix}-k"
    create_network(docker, pynet_daemon, net, "--subnet", "10.231.21.0/24")
    a = f"{prefix}-a"
    run_container(docker, test_image, a, net)
    pynet_daemon.kill()                         # a crash: the socket file stays behind
    pynet_daemon.start()
    b = f"{prefix}-b"
    run_container(docker, test_image, b, net)
    ping(docker, b, a)
    docker.run("rm", "-f", a, b)
    docker.run("network", "rm", net)
    assert pynet_cli(pynet_daemon, "ipam", "ls") == []


def test_bridge_deleted_while_daemon_stopped(docker, test_image, pynet_daemon, prefix):
    net = f"{prefix}-bd"
    info = create_network(docker, pynet_daemon, net, "--subnet", "10.231.22.0/24")
    bridge = pynet_cli(pynet_daemon, "network", "inspect", info["Id"])["driver_state"]["bridge"]
    a, b = f"{prefix}-a", f"{prefix}-b"
    run_container(docker, test_image, a, net)
    run_container(docker, test_image, b, net)
    pynet_daemon.stop()
    harness.sh("ip", "link", "del", "dev", bridge)
    assert bridge not in links()
    pynet_daemon.start()
    assert bridge in links()
    out = harness.sh("ip", "-o", "addr", "show", "dev", bridge).stdout
    assert "10.231.22.1/24" in out
    # the surviving host veths are back on the bridge: the containers reach each other again
    ping(docker, a, b)
    # and can be re-joined: disconnect + connect gives a working interface
    docker.run("network", "disconnect", net, a)
    docker.run("network", "connect", net, a)
    ping(docker, a, b)


# --------------------------------------------------------------------------- bad input


def _kernel_and_store(daemon):
    """pynet's links with their addresses, and the store.  Only pynet's own
    links: Docker's and the kernel's (link-local addresses settling, other
    bridges) are not pynet's business and may change meanwhile."""
    # This daemon's links only (tagged ``pynet:<instance>:``; a veth's untagged
    # peer dies with it): another pynet instance on the host may be busy.
    mine = sorted(harness.daemon_links(daemon.name))
    addrs = {l: sorted(line.split()[3] for line in
                       harness.sh("ip", "-o", "addr", "show", "dev", l, "scope", "global").stdout.splitlines())
             for l in mine}
    return mine, addrs, store_keys(daemon)


@pytest.mark.parametrize("case", [
    "overlap", "invalid-cidr", "gateway-outside", "ip-outside-range", "ip-used",
    "exhausted", "invalid-option", "unknown-option"])
def test_bad_input_changes_nothing(docker, test_image, pynet_daemon, prefix, case):
    net = f"{prefix}-ok"
    create_network(docker, pynet_daemon, net, "--subnet", "10.231.30.0/29", "--ip-range", "10.231.30.0/31")
    c1 = f"{prefix}-c1"
    run_container(docker, test_image, c1, net, "--ip", "10.231.30.2")
    before = _kernel_and_store(pynet_daemon)
    bad = f"{prefix}-bad"
    if case == "overlap":
        p = docker.run("network", "create", "-d", pynet_daemon.name, "--ipam-driver", pynet_daemon.name,
                       "--subnet", "10.231.30.0/24", bad, check=False)
        want = "overlap"
    elif case == "invalid-cidr":
        p = docker.run("network", "create", "-d", pynet_daemon.name, "--ipam-driver", pynet_daemon.name,
                       "--subnet", "10.231.300.0/24", bad, check=False)
        want = "invalid"
    elif case == "gateway-outside":
        p = docker.run("network", "create", "-d", pynet_daemon.name, "--ipam-driver", pynet_daemon.name,
                       "--subnet", "10.231.31.0/24", "--gateway", "10.231.32.1", bad, check=False)
        want = "gateway"
    elif case == "ip-outside-range":
        p = docker.run("run", "-d", "--name", bad, "--network", net, "--ip", "10.231.99.5",
                       test_image, "sleep", "60", check=False)
        want = ""
    elif case == "ip-used":
        p = docker.run("run", "-d", "--name", bad, "--network", net, "--ip", "10.231.30.2",
                       test_image, "sleep", "60", check=False)
        want = "already allocated"
    elif case == "exhausted":
        # the range 10.231.30.0/31 holds .0 (never handed out) and .1 (the gateway): nothing left
        p = docker.run("run", "-d", "--name", bad, "--network", net, test_image, "sleep", "60", check=False)
        want = "no free address"
    elif case == "invalid-option":
        p = docker.run("network", "create", "-d", pynet_daemon.name, "--subnet", "10.231.33.0/24",
                       "-o", "com.docker.network.driver.mtu=huge", bad, check=False)
        want = "mtu"
    else:
        p = docker.run("network", "create", "-d", pynet_daemon.name, "--subnet", "10.231.33.0/24",
                       "-o", "com.docker.network.bridge.bogus=1", bad, check=False)
        want = "bogus"
    msg = (p.stderr + p.stdout).lower()
    assert p.returncode != 0, f"{case} was accepted: {p.stdout}"
    assert want in msg, msg
    docker.run("rm", "-f", bad, check=False)   # a failed `docker run` leaves a created container
    assert _kernel_and_store(pynet_daemon) == before
    assert bad not in docker.network_names()
    ping(docker, c1, "10.231.30.1")           # and what was there still works


def test_malformed_json_posted_to_socket(pynet_daemon):
    before = store_keys(pynet_daemon)
    conn = harness.UnixHTTPConnection(pynet_daemon.socket)
    conn.request("POST", "/NetworkDriver.CreateNetwork", body=b"{not json",
                 headers={"Accept": harness.DOCKER_ACCEPT})
    r = conn.getresponse()
    body = json.loads(r.read())
    assert r.status == 400 and body["Err"], body
    status, body = pynet_daemon.post("IpamDriver.RequestPool", {"Pool": 42, "V6": "no"})
    assert status == 400 and "Err" in body
    status, body = pynet_daemon.post("NetworkDriver.CreateNetwork",
                                     {"NetworkID": "f" * 64, "IPv4Data": [{"Pool": "10.1.0.0/33"}]})
    assert status == 400 and "10.1.0.0/33" in body["Err"]
    assert store_keys(pynet_daemon) == before


def test_lost_answers_are_released_by_reconciliation_with_docker(docker, test_image, pynet_daemon, prefix):
    """An allocation whose caller never got the answer (pynet killed before replying, or
    dockerd gone) is found by asking dockerd what it holds at the next start -- never by
    guessing: what Docker holds stays."""
    net = f"{prefix}-lost"
    create_network(docker, pynet_daemon, net, "--subnet", "10.231.50.0/24")
    a = f"{prefix}-a"
    run_container(docker, test_image, a, net)
    held_ip = addr_on(docker, a, net)["IPAddress"]
    pool_id = next(p["id"] for p in pynet_cli(pynet_daemon, "ipam", "ls") if p["pool"] == "10.231.50.0/24")
    # answers Docker never received: an address in a held pool, and a whole pool
    status, body = pynet_daemon.post("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "", "Options": {}})
    assert status == 200
    lost_ip = body["Address"].split("/")[0]
    status, body = pynet_daemon.post("IpamDriver.RequestPool", {"AddressSpace": "LocalDefault", "Pool": "10.231.51.0/24",
                                                                "SubPool": "", "Options": {}, "V6": False})
    assert status == 200
    pynet_daemon.kill()
    pynet_daemon.start()
    pools = pynet_cli(pynet_daemon, "ipam", "ls")
    assert [p["pool"] for p in pools] == ["10.231.50.0/24"]
    (pool,) = pools
    assert pool["used"] == 2  # the gateway and the running container; the lost one is free
    assert lost_ip != held_ip
    # the running container kept its address and its connectivity
    b = f"{prefix}-b"
    run_container(docker, test_image, b, net)
    ping(docker, b, held_ip)
