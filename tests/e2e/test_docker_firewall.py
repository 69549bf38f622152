"""Issue 4 acceptance on the real dockerd: Docker's firewall layout for pynet networks.

One pynet daemon for the module (own chain prefix, re-check every 2 s), an "outside" host
(namespace ``<prefix>-out``, veth to the root namespace, 10.236.K.0/24 + fd00:236:K::/64,
never the real uplink) and containers on pynet and on Docker's own bridge networks.  Servers
and clients are small Python programs run inside the container namespaces from the host
(``nsenter -t PID -n``), so no tool is needed in the image.  K is derived from the run prefix.

The dockerd restart runs last and leaves dockerd running with its defaults.

The reachability and isolation tests run under both filter FORWARD policies (fixture
``forward_policy``: ``iptables``/``ip6tables -P FORWARD`` on the host, the original policies
put back afterwards, even on failure): DROP as dockerd sets it when it turns ip_forward on,
ACCEPT as it leaves it where ip_forward was already 1 (issue 9, defect 1).  Tests that do not
depend on forwarding verdicts (bad input, removal, reconciliation) run once.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.support import harness

PY = sys.executable
K = None  # per-run third octet, set by the fixture

SERVER = r"""
import socket, sys, threading, time
name, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
def tcp(fam, port):
    s = socket.socket(fam, socket.SOCK_STREAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port)); s.listen(64)
    while True:
        c, a = s.accept(); c.sendall(f"pong {name} {a[0]}\n".encode()); c.close()
def udp(fam, port):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port))
    while True:
        d, a = s.recvfrom(2048); print("udp", a[0], d.decode(errors="replace"), flush=True)
        s.sendto(f"pong {name} {a[0]}\n".encode(), a)
for p in ports:
    for fam in (socket.AF_INET, socket.AF_INET6):
        for f in (tcp, udp):
            try:
                socket.socket(fam, socket.SOCK_DGRAM).close()
                threading.Thread(target=f, args=(fam, p), daemon=True).start()
            except OSError:
                pass
print("ready", flush=True)
time.sleep(600)
"""

CLIENT = r"""
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
try:
    if proto == "tcp":
        s = socket.create_connection((host, port), timeout=2); print(s.recv(200).decode().strip())
    else:
        s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(2); s.sendto(b"hi", (host, port))
        print(s.recv(200).decode().strip())
except OSError as e:
    print("ERR", e)
"""

FORGE = r"""
import sys
from scapy.all import IP, UDP, send, conf
conf.verb = 0
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
send(IP(src=src, dst=dst) / UDP(sport=4242, dport=port) / b"forged", count=3, inter=0.05)
"""


# --------------------------------------------------------------------------- helpers
def nsargv(where):
    """where: None (root ns), 'ns:<name>' (named netns) or a container pid (int)."""
    if where is None:
        return []
    if isinstance(where, str):
        return ["ip", "netns", "exec", where[3:]]
    return ["nsenter", "-t", str(where), "-n"]


def probe(where, proto, host, port) -> str:
    p = harness.sh(*nsargv(where), PY, "-c", CLIENT, proto, host, str(port), check=False, timeout=15)
    return (p.stdout.strip() or p.stderr.strip()).splitlines()[-1] if (p.stdout or p.stderr) else ""


def reach(where, proto, host, port, name) -> bool:
    return probe(where, proto, host, port).startswith(f"pong {name} ")


def pid_of(docker, c) -> int:
    return int(docker.inspect(c, "container")["State"]["Pid"])


def ip_of(docker, c, net, v6=False):
    n = docker.inspect(c, "container")["NetworkSettings"]["Networks"][net]
    return n["GlobalIPv6Address"] if v6 else n["IPAddress"]


def ping(docker, c, ip) -> bool:
    return docker.run("exec", c, "ping", "-c", "1", "-W", "1", ip, check=False, timeout=20).returncode == 0


def cli(env, *args, check=True):
    return harness.sh(*harness.pynet_command(), "--state-dir", str(env.daemon.state_dir),
                      "--plugin-name", env.daemon.name, "--chain-prefix", env.cp, *args,
                      check=check, timeout=60)


def ports_of(env, c) -> list[dict]:
    return [p for e in json.loads(cli(env, "--json", "port", c).stdout) for p in e["ports"]]


def ipt_save() -> str:
    return harness.sh("iptables-save").stdout + harness.sh("ip6tables-save").stdout


def wait_in_sync(env, timeout=15.0) -> None:
    deadline = time.monotonic() + timeout
    while cli(env, "firewall", "diff", check=False).returncode != 0:
        assert time.monotonic() < deadline, cli(env, "firewall", "diff", check=False).stdout
        time.sleep(0.5)


class Env:
    pass


# --------------------------------------------------------------------------- fixture
@pytest.fixture(scope="module")
def env(request, docker, test_image, prefix):
    global K
    K = int(prefix[2:], 16) % 250 + 2
    old = os.environ.get("PYNET_FIREWALL_RECHECK")
    os.environ["PYNET_FIREWALL_RECHECK"] = "2"
    # the firewall backend of the module's daemon and CLI (tests/e2e/test_docker_nft.py
    # runs these tests again on the nftables backend); kept for the daemon's teardown too
    backend = getattr(request.module, "FIREWALL_BACKEND", None)
    if backend:
        os.environ["PYNET_FIREWALL_BACKEND"] = backend
        request.addfinalizer(lambda: os.environ.pop("PYNET_FIREWALL_BACKEND", None))
    try:
        daemon = request.getfixturevalue("pynet_daemon_module")
    finally:
        if old is None:
            os.environ.pop("PYNET_FIREWALL_RECHECK", None)
        else:
            os.environ["PYNET_FIREWALL_RECHECK"] = old
    e = Env()
    e.docker, e.daemon, e.prefix, e.image = docker, daemon, prefix, test_image
    e.cp = harness.daemon_chain_prefix(daemon.argv())
    e.servers: list[subprocess.Popen] = []
    e.out = f"{prefix}-out"
    e.host4, e.out4 = f"10.236.{K}.1", f"10.236.{K}.2"
    e.host6, e.out6 = f"fd00:236:{K}::1", f"fd00:236:{K}::2"
    veth = f"{prefix}-o0"
    try:
        # the "outside" host
        harness.sh("ip", "netns", "add", e.out)
        harness.sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "o1", "netns", e.out)
        harness.sh("sysctl", "-qw", f"net.ipv6.conf.{veth}.disable_ipv6=0")
        harness.sh("ip", "addr", "add", f"{e.host4}/24", "dev", veth)
        harness.sh("ip", "-6", "addr", "add", f"{e.host6}/64", "dev", veth, "nodad")
        harness.sh("ip", "link", "set", veth, "up")
        o = ["ip", "netns", "exec", e.out]
        harness.sh(*o, "ip", "link", "set", "lo", "up")
        harness.sh(*o, "ip", "addr", "add", f"{e.out4}/24", "dev", "o1")
        harness.sh(*o, "ip", "-6", "addr", "add", f"{e.out6}/64", "dev", "o1", "nodad")
        harness.sh(*o, "ip", "link", "set", "o1", "up")
        harness.sh(*o, "ip", "route", "add", "default", "via", e.host4)
        harness.sh(*o, "ip", "-6", "route", "add", "default", "via", e.host6)
        e.out_server = start_server(e, f"ns:{e.out}", "outside", 9000)

        def net(name, *args):
            docker.run("network", "create", "-d", daemon.name, "--ipam-driver", daemon.name, *args, name)
            return name

        e.n1 = net(f"{prefix}-fw1", "--subnet", f"10.232.{K}.0/24", "--ipv6", "--subnet", f"fd00:232:{K}::/64")
        e.n2 = net(f"{prefix}-fw2", "--subnet", f"10.233.{K}.0/24")
        e.dn = f"{prefix}-dk1"
        docker.run("network", "create", "--subnet", f"10.234.{K}.0/24", e.dn)
        e.H = 20000 + K * 20  # explicit host ports H, range R..R+9
        e.R = e.H + 5
        variants = {
            "explicit": ["-p", f"{e.H}:80", "-p", f"{e.H}:80/udp"],
            "dynamic": ["-p", "80", "-p", "80/udp"],
            "all": ["--expose", "80", "--expose", "80/udp", "-P"],
            "range": ["-p", f"{e.R}-{e.R + 9}:80", "-p", f"{e.R}-{e.R + 9}:80/udp"],
        }
        e.pub = {}
        for v, args in variants.items():
            c = f"{prefix}-{v}"
            docker.run("run", "-d", "--name", c, "--network", e.n1, *args, test_image, "sleep", "3600")
            start_server(e, pid_of(docker, c), c, 80, 81)
            e.pub[v] = c
        e.peer = f"{prefix}-peer"
        e.c2 = f"{prefix}-c2"
        e.cd = f"{prefix}-cd"
        for c, n in ((e.peer, e.n1), (e.c2, e.n2), (e.cd, e.dn)):
            docker.run("run", "-d", "--name", c, "--network", n, test_image, "sleep", "3600")
        wait_in_sync(e)
        yield e
    finally:
        for s in e.servers:
            try:
                os.killpg(s.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            s.wait(5)
        harness.sh("ip", "link", "del", veth, check=False)
        harness.sh("ip", "netns", "del", e.out, check=False)


def start_server(e, where, name, *ports):
    log = harness.results_dir() / f"{e.prefix}-srv-{name}.log"
    f = open(log, "w")
    p = subprocess.Popen([*nsargv(where), "timeout", "900", PY, "-c", SERVER, name, *map(str, ports)],
                         stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    p.log = log
    e.servers.append(p)
    deadline = time.monotonic() + 10
    while "ready" not in log.read_text():
        assert p.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return p


def forward_policies() -> dict[str, str]:
    out = {}
    for ipt in ("iptables", "ip6tables"):
        first = harness.sh(ipt, "-S", "FORWARD").stdout.splitlines()[0].split()
        assert first[:2] == ["-P", "FORWARD"], first
        out[ipt] = first[2]
    return out


@pytest.fixture(params=["DROP", "ACCEPT"], ids=lambda p: f"policy-{p}")
def forward_policy(request, env):
    """The host's filter FORWARD policy (both families) set to DROP or ACCEPT for one test and
    put back as it was afterwards, even on failure.  pynet never sets a policy itself: its
    rules must give the same verdicts under either."""
    old = forward_policies()
    try:
        for ipt in old:
            harness.sh(ipt, "-P", "FORWARD", request.param)
        yield request.param
    finally:
        for ipt, pol in old.items():
            harness.sh(ipt, "-P", "FORWARD", pol, check=False)


# --------------------------------------------------------------------------- published ports
@pytest.mark.parametrize("variant", ["explicit", "dynamic", "all", "range"])
def test_published_port_reachable_five_ways(env, variant, forward_policy):
    c = env.pub[variant]
    ports = ports_of(env, c)
    by_proto = {}
    for p in ports:
        by_proto.setdefault(p["proto"], set()).add(p["host_port"])
    assert set(by_proto) == {"tcp", "udp"}, ports
    lo, hi = map(int, harness.sh("cat", "/proc/sys/net/ipv4/ip_local_port_range").stdout.split())
    for proto, hps in by_proto.items():
        assert len(hps) == 1, ports
        hp = hps.pop()
        if variant == "explicit":
            assert hp == env.H
        elif variant == "range":
            assert env.R <= hp <= env.R + 9
        else:
            assert lo <= hp <= hi, (hp, lo, hi)
        ways = {
            "a: outside via host address": (f"ns:{env.out}", env.host4),
            "b: host via its own address": (None, env.host4),
            "c: host via 127.0.0.1": (None, "127.0.0.1"),
            "d: hairpin from same network": (pid_of(env.docker, env.peer), env.host4),
            "e: outside over IPv6": (f"ns:{env.out}", env.host6),
        }
        bad = {w: probe(where, proto, host, hp) for w, (where, host) in ways.items()
               if not reach(where, proto, host, hp, c)}
        assert not bad, f"{variant} {proto}/{hp}: {bad}"
    # the `pynet port` text form
    text = cli(env, "port", c).stdout
    assert re.search(r"^80/tcp -> \S+:\d+$", text, re.M) and "80/udp" in text


def test_unpublished_port_not_reachable(env, forward_policy):
    c = env.pub["explicit"]
    ip, ip6 = ip_of(env.docker, c, env.n1), ip_of(env.docker, c, env.n1, v6=True)
    peer = pid_of(env.docker, env.peer)
    assert reach(peer, "tcp", ip, 81, c) and reach(peer, "tcp", ip6, 81, c)  # it listens
    for where, host in ((f"ns:{env.out}", env.host4), (None, env.host4), (None, "127.0.0.1"),
                        (f"ns:{env.out}", env.host6)):
        assert not reach(where, "tcp", host, 81, c), host
    # nor routed straight to the container's addresses from outside (no DNAT): pynet's own
    # drop, not the FORWARD policy, refuses it -- for IPv4 and IPv6
    for host in (ip, ip6):
        assert not reach(f"ns:{env.out}", "tcp", host, 81, c), host
        assert not reach(f"ns:{env.out}", "udp", host, 81, c), host
    # while the published container port, routed to the container itself, is accepted (as Docker does)
    assert reach(f"ns:{env.out}", "tcp", ip, 80, c)


# --------------------------------------------------------------------------- outbound
def test_outbound_masqueraded_to_host_address(env, forward_policy):
    got = probe(pid_of(env.docker, env.peer), "tcp", env.out4, 9000)
    assert got == f"pong outside {env.host4}", got
    got = probe(pid_of(env.docker, env.peer), "udp", env.out4, 9000)
    assert got == f"pong outside {env.host4}", got


# --------------------------------------------------------------------------- isolation
def isolation_pairs(env, docker_c):
    d = env.docker
    p1, p2 = env.peer, env.c2
    pairs = [(p1, ip_of(d, p2, env.n2)), (p2, ip_of(d, p1, env.n1)),
             (p1, ip_of(d, docker_c, d.inspect(docker_c, "container")["HostConfig"]["NetworkMode"])),
             (docker_c, ip_of(d, p1, env.n1))]
    return [(a, ip) for a, ip in pairs if ping(d, a, ip)]


def test_isolation_pynet_pynet_and_docker_both_ways(env, forward_policy):
    assert ping(env.docker, env.peer, ip_of(env.docker, env.pub["explicit"], env.n1))  # control
    assert ping(env.docker, env.peer, env.out4)  # control: outside reachable
    assert isolation_pairs(env, env.cd) == []


def test_isolation_after_docker_creates_a_network(env):
    d = env.docker
    dn2, cd2 = f"{env.prefix}-dk2", f"{env.prefix}-cd2"
    d.run("network", "create", "--subnet", f"10.235.{K}.0/24", dn2)
    d.run("run", "-d", "--name", cd2, "--network", dn2, env.image, "sleep", "3600")
    wait_in_sync(env)  # the periodic re-check puts pynet's block back on top
    assert isolation_pairs(env, cd2) == []
    first = harness.sh("iptables", "-S", "FORWARD").stdout.splitlines()[1]
    assert "pynet:" in first, first


def test_isolation_from_a_custom_named_docker_bridge(env):
    """`-o com.docker.network.bridge.name` gives dockerd's bridge a name no pattern
    matches: the daemon learns it from dockerd and isolates it too, both ways."""
    d = env.docker
    dn3, cd3 = f"{env.prefix}-dk3", f"{env.prefix}-cd3"
    d.run("network", "create", "--subnet", f"10.237.{K}.0/24",
          "-o", f"com.docker.network.bridge.name={env.prefix}-cb", dn3)
    d.run("run", "-d", "--name", cd3, "--network", dn3, env.image, "sleep", "3600")
    wait_in_sync(env)
    deadline = time.monotonic() + 15  # the next periodic re-check learns the bridge
    while f"-i {env.prefix}-cb" not in ipt_save() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert isolation_pairs(env, cd3) == []


# --------------------------------------------------------------------------- ICC / internal / spoofing
def test_icc_off_and_internal(env, forward_policy):
    d, pfx = env.docker, f"{env.prefix}-{forward_policy[0].lower()}"  # own names per policy
    half = 0 if forward_policy == "DROP" else 64
    d.run("network", "create", "-d", env.daemon.name, "--ipam-driver", env.daemon.name,
          "--subnet", f"10.237.{K}.{half}/26", "-o", "com.docker.network.bridge.enable_icc=false", f"{pfx}-icc")
    d.run("network", "create", "-d", env.daemon.name, "--ipam-driver", env.daemon.name, "--internal",
          "--subnet", f"10.237.{K}.{128 + half}/26", f"{pfx}-int")
    for c, n in (("i1", "icc"), ("i2", "icc"), ("t1", "int"), ("t2", "int")):
        d.run("run", "-d", "--name", f"{pfx}-{c}", "--network", f"{pfx}-{n}", env.image, "sleep", "3600")
    assert not ping(d, f"{pfx}-i1", ip_of(d, f"{pfx}-i2", f"{pfx}-icc"))
    assert ping(d, f"{pfx}-i1", env.out4)  # ICC off still reaches outside
    assert ping(d, f"{pfx}-t1", ip_of(d, f"{pfx}-t2", f"{pfx}-int"))  # internal: own subnet ok
    t1 = pid_of(d, f"{pfx}-t1")
    for host in (env.out4, env.host4, ip_of(d, env.peer, env.n1), ip_of(d, env.cd, env.dn)):
        assert not ping(d, f"{pfx}-t1", host), host
    assert not reach(t1, "tcp", env.out4, 9000, "outside")


@pytest.mark.parametrize("spoof_check", [True, False])
def test_spoof_check(env, spoof_check):
    d, pfx = env.docker, env.prefix
    net, third = f"{pfx}-sp{int(spoof_check)}", 238 if spoof_check else 239
    d.run("network", "create", "-d", env.daemon.name, "--ipam-driver", env.daemon.name,
          "--subnet", f"10.{third}.{K}.0/24", "-o", f"pynet.bridge.spoof_check={str(spoof_check).lower()}", net)
    a, b = f"{net}-a", f"{net}-b"
    for c in (a, b):
        d.run("run", "-d", "--name", c, "--network", net, env.image, "sleep", "3600")
    srv = start_server(env, pid_of(d, b), b, 5000)
    ip_b = ip_of(d, b, net)
    assert reach(pid_of(d, a), "udp", ip_b, 5000, b)  # honest traffic passes
    forged = f"10.{third}.{K}.200"
    harness.sh(*nsargv(pid_of(d, a)), PY, "-c", FORGE, forged, ip_b, "5000", timeout=60)
    time.sleep(0.5)
    seen = f"udp {forged} forged" in srv.log.read_text()
    assert seen is (not spoof_check), srv.log.read_text()


# --------------------------------------------------------------------------- bad input
def test_host_port_already_held(env):
    d, c = env.docker, f"{env.prefix}-dup"
    before = ipt_save()
    p = d.run("run", "-d", "--name", c, "--network", env.n1, "-p", f"{env.H}:80", env.image,
              "sleep", "60", check=False)
    d.run("rm", "-f", c, check=False)
    assert p.returncode != 0 and "already allocated" in p.stderr, p.stderr
    wait_in_sync(env)
    assert strip_counters(ipt_save(), env.cp) == strip_counters(before, env.cp)


@pytest.mark.parametrize("addr", ["not-local", "malformed"])
def test_invalid_host_address(env, addr):
    d, c = env.docker, f"{env.prefix}-badip"
    hip = f"10.236.{K}.77" if addr == "not-local" else "10.236.1.300"
    before = ipt_save()
    p = d.run("run", "-d", "--name", c, "--network", env.n1, "-p", f"{hip}:{env.H + 1}:80",
              env.image, "sleep", "60", check=False)
    d.run("rm", "-f", c, check=False)
    want = "not an address of this host" if addr == "not-local" else "invalid"  # docker's own check
    assert p.returncode != 0 and want in p.stderr.lower(), p.stderr
    wait_in_sync(env)
    assert strip_counters(ipt_save(), env.cp) == strip_counters(before, env.cp)


def strip_counters(text: str, cp: str) -> list[str]:
    """This instance's rules (other pynet instances on the host change concurrently)."""
    return sorted(l for l in text.splitlines() if l.startswith("-A ") and f"pynet:{cp}:" in l)


# --------------------------------------------------------------------------- removal
def test_rm_and_network_rm_leave_no_rule(env):
    d, pfx = env.docker, env.prefix
    net, c = f"{pfx}-rm", f"{pfx}-rmc"
    d.run("network", "create", "-d", env.daemon.name, "--ipam-driver", env.daemon.name,
          "--subnet", f"10.237.{(K + 100) % 250}.0/24", net)
    d.run("run", "-d", "--name", c, "--network", net, "-p", "80", "-p", "81/udp", env.image, "sleep", "3600")
    net_id = d.inspect(net, "network")["Id"]
    ep_id = d.inspect(c, "container")["NetworkSettings"]["Networks"][net]["EndpointID"]
    text = ipt_save()
    assert f"pynet:{env.cp}:{ep_id}" in text and f"pynet:{env.cp}:{net_id}" in text
    d.run("rm", "-f", c)
    text = ipt_save()
    assert ep_id not in text and f"pynet:{env.cp}:{net_id}" in text
    d.run("network", "rm", net)
    assert net_id not in ipt_save()


# --------------------------------------------------------------------------- reconciliation
def test_reconcile_after_forward_flushed(env):
    flushed_then_repaired(env, ["iptables", "-F", "FORWARD"])


def flushed_then_repaired(env, *flushes, timeout=5):
    """Run the ``flushes`` (argv lists) with the daemon held still, see the diff, let the
    daemon repair: the published port and the isolation work again; dockerd's FORWARD
    rules are put back whatever happens."""
    saved = harness.sh("iptables", "-S", "FORWARD").stdout.splitlines()
    foreign = [l for l in saved if l.startswith("-A ") and "pynet:" not in l]
    # The daemon re-checks every 2 s here: hold it still (SIGSTOP) so that the
    # CLI sees the flushed chain before the daemon repairs it, then let it go.
    os.kill(env.daemon.pid, signal.SIGSTOP)
    try:
        for argv in flushes:
            harness.sh(*argv)
        assert cli(env, "firewall", "diff", check=False).returncode == 1
    finally:
        os.kill(env.daemon.pid, signal.SIGCONT)
    try:
        os.kill(env.daemon.pid, signal.SIGHUP)
        wait_in_sync(env, timeout=timeout)
        assert reach(f"ns:{env.out}", "tcp", env.host4, env.H, env.pub["explicit"])
        assert isolation_pairs(env, env.cd) == []
    finally:  # give dockerd (and other instances) their rules back
        now = set(harness.sh("iptables", "-S", "FORWARD").stdout.splitlines())
        for l in foreign:
            if l not in now:
                harness.sh("iptables", *l.split(), check=False)


def test_y_daemon_starts_despite_a_record_the_firewall_refuses(env):
    """Issue 9, defect 6: one stored record the renderer refuses -- here a second programmed
    endpoint on the published host ports of a running container, as the Docker path could
    store -- used to make restore() at daemon start fail, so the daemon could not start.
    Now it starts, applies everything else and reports the record."""
    from pynet.root import open_state_dir

    d, c = env.docker, env.pub["explicit"]
    net_id = d.inspect(env.n1, "network")["Id"]
    ep_id = d.inspect(c, "container")["NetworkSettings"]["Networks"][env.n1]["EndpointID"]
    ghost_id = "f" * 64  # sorts after the real endpoint: the real one keeps the port
    store = open_state_dir(str(env.daemon.state_dir))
    real = store.get(f"endpoints/{net_id}/{ep_id}").value
    ghost = dict(real, id=ghost_id, address=f"10.232.{K}.250/24", address_v6="", mac="",
                 sandbox_key="-", container_id=f"{env.prefix}-ghost", ifname="eth9",
                 driver_state={})  # a CNI-held record (kept by the reconcile with dockerd)
    ghost_key = f"endpoints/{net_id}/{ghost_id}"
    old = os.environ.get("PYNET_FIREWALL_RECHECK")
    os.environ["PYNET_FIREWALL_RECHECK"] = "2"
    try:
        store.put(ghost_key, ghost)
        env.daemon.stop()
        env.daemon.start()  # raised: "daemon exited ... during startup" (PortInUse in restore)
        assert env.daemon.post("Plugin.Activate")[0] == 200
        assert f"skipped endpoint {ghost_id}" in env.daemon.log_text()
        diff = cli(env, "firewall", "diff", check=False)
        assert diff.returncode == 1 and f"# skipped endpoint {ghost_id}" in diff.stdout, diff.stdout
        assert "already allocated" in diff.stdout
        # everything else is in place: the real container keeps its published port
        assert reach(f"ns:{env.out}", "tcp", env.host4, env.H, c)
        assert reach(None, "tcp", "127.0.0.1", env.H, c)
        assert f"pynet:{env.cp}:{ghost_id}" not in ipt_save()
    finally:
        if old is None:
            os.environ.pop("PYNET_FIREWALL_RECHECK", None)
        else:
            os.environ["PYNET_FIREWALL_RECHECK"] = old
        store.delete(ghost_key)
        store.close()
        if not env.daemon.running:
            env.daemon.start()
    wait_in_sync(env)  # the record gone, the problem with it


def test_z_reconcile_after_dockerd_restart(env):
    """Last: restarts dockerd (defaults), which stops the containers and rewrites its chains."""
    d = env.docker
    harness.sh("bash", harness.DOCKER_SH, "stop-dockerd", timeout=120)
    harness.sh("bash", harness.DOCKER_SH, "ensure-dockerd",
               str(harness.results_dir() / "dockerd-restarts.log"), timeout=240)
    cs = [env.peer, env.c2, env.cd, env.pub["explicit"]]
    d.run("start", *cs, timeout=120)
    start_server(env, pid_of(d, env.pub["explicit"]), env.pub["explicit"], 80, 81)
    wait_in_sync(env)
    first = harness.sh("iptables", "-S", "FORWARD").stdout.splitlines()[1]
    assert "pynet:" in first, first
    assert isolation_pairs(env, env.cd) == []
    assert reach(f"ns:{env.out}", "tcp", env.host4, env.H, env.pub["explicit"])
    assert reach(None, "udp", "127.0.0.1", env.H, env.pub["explicit"])
