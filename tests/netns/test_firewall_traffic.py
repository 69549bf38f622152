"""Real traffic through pynet's rules (root), entirely inside namespaces we create.

Topology: a "host" namespace H with bridges b1 (10.241.1.1/24, fd00:241:1::1/64)
and b2 (10.241.2.1/24, fd00:241:2::1/64), IP forwarding on; "containers" c1, c2 on
b1 and c3 on b2, each its own namespace behind a veth; "x", a client outside the
host on a routed link (10.241.9.0/24, fd00:241:9::/64) whose default route is H.
TCP servers/clients are short python processes with 1 s timeouts (there is
no ping on this machine).  Runs on every firewall backend (``fw_backend``, tests/netns/conftest.py):
iptables-nft, legacy iptables and pynet's native nftables tables.

Every test runs under both filter FORWARD policies (``iptables``/``ip6tables -P
FORWARD``, in H): DROP as dockerd sets it when it turns forwarding on, and ACCEPT
as it leaves it on a host where forwarding was already on (a router, a Kubernetes
node).  pynet's promises must hold under both (issue 9, defect 1).
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time

import pytest

from pynet.firewall import EndpointSpec, NetworkSpec, PortMapping

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

SERVER = """
import socket, sys, time
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 and IPv6 on one socket
s.bind(("::", int(sys.argv[1]))); s.listen(8); s.settimeout(0.2)
print("ready", flush=True)
end = time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        c, a = s.accept()
    except socket.timeout:
        continue
    peer = a[0][7:] if a[0].startswith("::ffff:") else a[0]
    c.sendall(("hello from " + sys.argv[3] + " to " + peer).encode()); c.close()
"""
CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
    c.settimeout(1); print(c.recv(100).decode())
except OSError as e:
    print("FAIL", e); sys.exit(1)
"""


def sh(*argv, check=True):
    p = subprocess.run(argv, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {p.stderr.strip()}")
    return p


@pytest.fixture(params=["DROP", "ACCEPT"], ids=lambda p: f"policy-{p}")
def topo(prefix, request, fw_backend):
    tag = secrets.token_hex(2)
    H, C = f"{prefix}-fth{tag}", {k: f"{prefix}-ft{k}{tag}" for k in ("c1", "c2", "c3", "x")}
    made = []
    try:
        for ns in [H, *C.values()]:
            sh("ip", "netns", "add", ns)
            made.append(ns)
            # IPv6 on for the links made below, whatever the host's defaults
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0",
               "net.ipv6.conf.default.disable_ipv6=0")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", H, "sysctl", "-qw", "net.ipv4.ip_forward=1",
           "net.ipv6.conf.all.forwarding=1")
        for br, gw, gw6 in (("b1", "10.241.1.1/24", "fd00:241:1::1/64"),
                            ("b2", "10.241.2.1/24", "fd00:241:2::1/64")):
            sh("ip", "-n", H, "link", "add", br, "type", "bridge")
            sh("ip", "-n", H, "addr", "add", gw, "dev", br)
            sh("ip", "-n", H, "addr", "add", gw6, "dev", br, "nodad")
            sh("ip", "-n", H, "link", "set", br, "up")
        for k, br, ip in (("c1", "b1", "10.241.1.2"), ("c2", "b1", "10.241.1.3"), ("c3", "b2", "10.241.2.2")):
            veth = f"v{k}"
            ip6 = V6[ip]
            sh("ip", "-n", H, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", C[k])
            sh("ip", "-n", H, "link", "set", veth, "master", br, "up")
            sh("ip", "-n", C[k], "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", C[k], "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad")
            sh("ip", "-n", C[k], "link", "set", "eth0", "up")
            sh("ip", "-n", C[k], "route", "add", "default", "via", ip.rsplit(".", 1)[0] + ".1")
            sh("ip", "-n", C[k], "-6", "route", "add", "default", "via", ip6.rsplit(":", 1)[0] + ":1")
        # "x": a client outside the host, on a routed link 10.241.9.0/24, fd00:241:9::/64
        sh("ip", "-n", H, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", C["x"])
        sh("ip", "-n", H, "addr", "add", "10.241.9.1/24", "dev", "up0")
        sh("ip", "-n", H, "addr", "add", "fd00:241:9::1/64", "dev", "up0", "nodad")
        sh("ip", "-n", H, "link", "set", "up0", "up")
        sh("ip", "-n", C["x"], "addr", "add", "10.241.9.2/24", "dev", "eth0")
        sh("ip", "-n", C["x"], "addr", "add", "fd00:241:9::2/64", "dev", "eth0", "nodad")
        sh("ip", "-n", C["x"], "link", "set", "eth0", "up")
        sh("ip", "-n", C["x"], "route", "add", "default", "via", "10.241.9.1")
        sh("ip", "-n", C["x"], "-6", "route", "add", "default", "via", "fd00:241:9::1")
        for ipt in (fw_backend.iptables, fw_backend.ip6tables):
            sh("ip", "netns", "exec", H, ipt, "-P", "FORWARD", request.param)
        yield H, C, fw_backend.make
        fw_backend.check()  # `pynet firewall diff` empty after the test, on every backend
    finally:
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)


def serve(ns, port, name, seconds=30):  # killed at the end; long enough on a busy machine
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, str(port), str(seconds), name],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def connect(ns, addr, port) -> str | None:
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, addr, str(port)],
                       capture_output=True, text=True, timeout=10)
    return p.stdout.strip() if p.returncode == 0 else None


V6 = {"10.241.1.2": "fd00:241:1::2", "10.241.1.3": "fd00:241:1::3", "10.241.2.2": "fd00:241:2::2"}


def nets(icc=True):
    return [NetworkSpec("n1", "b1", ["10.241.1.0/24"], ["fd00:241:1::/64"], icc=icc),
            NetworkSpec("n2", "b2", ["10.241.2.0/24"], ["fd00:241:2::/64"])]


EPS = [EndpointSpec("e1", "n1", "10.241.1.2", "fd00:241:1::2", None,
                    [PortMapping("tcp", "", 18088, 80, "")], "vc1")]


def test_icc_isolation_and_published_port(topo):
    H, C, make_firewall = topo
    fw = make_firewall(H)
    servers = [serve(C["c1"], 80, "c1"), serve(C["c2"], 7000, "c2"), serve(C["c3"], 7000, "c3")]
    try:
        # no rules yet: FORWARD policy DROP stops even same-bridge traffic (br_netfilter)
        fw.apply(nets(icc=True), EPS)
        assert connect(C["c1"], "10.241.1.3", 7000) == "hello from c2 to 10.241.1.2"  # ICC on
        assert connect(C["c1"], "10.241.2.2", 7000) is None  # other network: isolated
        assert connect(C["c3"], "10.241.1.3", 7000) is None  # and the other way round
        # published port: from the host's loopback (route_localnet + OUTPUT DNAT + LOCAL masquerade)
        got = connect(H, "127.0.0.1", 18088)
        assert got and got.startswith("hello from c1 to 10.241.1.1")
        assert sh("ip", "netns", "exec", H, "cat", "/proc/sys/net/ipv4/conf/b1/route_localnet").stdout.strip() == "1"
        # ... from outside the host (PREROUTING DNAT, accept in the DNAT chain, no masquerade)
        assert connect(C["x"], "10.241.9.1", 18088) == "hello from c1 to 10.241.9.2"
        # ... but not from another network: isolation drops it (Docker does the same with the
        # userland proxy off -- the proxy was what used to carry that traffic)
        assert connect(C["c3"], "10.241.2.1", 18088) is None
        # ... hairpin: c2 on the same bridge reaches c1 through the published port
        assert (connect(C["c2"], "10.241.1.1", 18088) or "").startswith("hello from c1")

        fw.apply(nets(icc=False), EPS)
        assert connect(C["c1"], "10.241.1.3", 7000) is None  # ICC off
        assert (connect(H, "127.0.0.1", 18088) or "").startswith("hello from c1")  # port still published

        fw.remove_all()
        assert connect(C["x"], "10.241.9.1", 18088) is None
    finally:
        for p in servers:
            p.kill()
            p.wait()


def test_routed_outside_reaches_only_published_ports(topo):
    """Defect 1 (issue 9): "x" routes straight to the container subnets through H.  A
    container port is reachable from outside its network only if it is published,
    under either FORWARD policy, for IPv4 and IPv6; replies to the containers' own
    connections (RELATED,ESTABLISHED) still come back."""
    H, C, make_firewall = topo
    fw = make_firewall(H)
    servers = [serve(C["c1"], 80, "c1"), serve(C["c1"], 81, "c1"), serve(C["c2"], 7000, "c2"),
               serve(C["x"], 9000, "x")]
    try:
        fw.apply(nets(), EPS)
        for fam, (c1, c2, c3, h) in {
                "ipv4": ("10.241.1.2", "10.241.1.3", "10.241.2.2", "10.241.9.1"),
                "ipv6": ("fd00:241:1::2", "fd00:241:1::3", "fd00:241:2::2", "fd00:241:9::1")}.items():
            # the published mapping, through H's address (DNAT) ...
            assert (connect(C["x"], h, 18088) or "").startswith("hello from c1"), fam
            # ... and to the published container port itself, routed (as Docker accepts it)
            assert (connect(C["x"], c1, 80) or "").startswith("hello from c1"), fam
            # unpublished ports, routed straight to the container addresses: refused
            assert connect(C["x"], c1, 81) is None, fam
            assert connect(C["x"], c2, 7000) is None, fam
            # still there from the own network (ICC) -- the drop is only for traffic from outside
            assert (connect(C["c1"], c2, 7000) or "").startswith("hello from c2"), fam
            # outbound from a container and its replies
            assert (connect(C["c2"], "10.241.9.2" if fam == "ipv4" else "fd00:241:9::2", 9000)
                    or "").startswith("hello from x"), fam
            # the other pynet network stays isolated
            assert connect(C["c3"], c2, 7000) is None, fam
    finally:
        for p in servers:
            p.kill()
            p.wait()
