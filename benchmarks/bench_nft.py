"""The nftables backend at scale (issue 13), in throwaway namespaces, against the
iptables backend (iptables-nft) in the same run:

    .venv/bin/python benchmarks/bench_nft.py [--networks 1000] [--ports 10000] [--quick]
                                             [--rounds 5] [--seconds 3] [--no-iperf]

1. Networks: created one at a time, each one's apply a change (``changed={id}``); the
   per-change apply time of the first ten against the last ten, nftables against
   iptables-nft's last ten.
2. 1,000 networks and 10,000 published ports (one endpoint per network, ports/networks
   ports each), built up change by change; then the apply of one more network and of one
   more 1-port endpoint at the end against at the start (goal <= 1.3x) -- in a warm
   process (the daemon: one NftFirewall object) and in fresh ones (a CNI binary: a new
   object per change, its state in the file ledger).
3. The packet path: iperf3 (TCP) from an "outside" namespace through a DNAT-published
   port of the "host" namespace to a "container" namespace on a pynet bridge, with that
   one port published against the same with ``--ports`` published (the others on other
   addresses of the bridge's subnet), interleaved rounds, medians (goal: 10,000 at most
   5 % slower than 1).
Nothing leaves the namespaces (``pt<hex>-b*``, removed even on failure); every packet goes
between addresses inside them.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]

from tests.support import harness  # noqa: E402

from pynet.firewall import EndpointSpec, Firewall, NetworkSpec, PortMapping  # noqa: E402
from pynet.firewall.ledger import FileLedger  # noqa: E402
from pynet.firewall.nft import NftFirewall  # noqa: E402


def med(xs):
    return statistics.median(xs) * 1000


def net(i):
    return NetworkSpec(f"n{i}", f"pn-b{i}", [f"10.{100 + i // 250}.{i % 250}.0/24"])


def ep(i, n_ports, base_port):
    return EndpointSpec(f"e{i}", f"n{i}", f"10.{100 + i // 250}.{i % 250}.2", None, None,
                        [PortMapping("tcp", "", base_port + j, 80 + j) for j in range(n_ports)])


CLOCK = "cpu"


def now() -> float:
    """The benchmark's clock: wall time, or (``--clock cpu``, the default) the CPU time of
    this process and its waited-for children (nft, iptables-save): what a change costs,
    less at the mercy of a loaded machine's scheduling than wall time."""
    if CLOCK == "wall":
        return time.perf_counter()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # microseconds (os.times() counts 10 ms ticks)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def timed(make, nets, eps, changed):
    fw = make()
    t = now()
    fw.apply(nets, eps, changed=changed) if isinstance(fw, NftFirewall) else fw.apply(nets, eps)
    return now() - t


def networks(make, n):
    nets, times = [], []
    for i in range(n):
        nets.append(net(i))
        times.append(timed(make, nets, [], {f"n{i}"}))
    return times


def probes(make, nets, eps, k=5):
    """(one more network, one more 1-port endpoint): apply times, each undone (not timed)."""
    pn = NetworkSpec("probe-n", "pn-probe", ["10.99.99.0/24"])
    pe = EndpointSpec("probe-e", nets[0].id, nets[0].subnets_v4[0].replace(".0/24", ".250"), None, None,
                      [PortMapping("tcp", "", 9999, 80)])
    tn, te = [], []
    for _ in range(k):
        tn.append(timed(make, nets + [pn], eps, {"probe-n"}))
        make().apply(nets, eps, changed={"probe-n"})
        te.append(timed(make, nets, eps + [pe], {"probe-e"}))
        make().apply(nets, eps, changed={"probe-e"})
    return tn, te


def scale(make, n_nets, n_ports):
    """Build up n_nets networks with n_ports ports (change by change); probe at the
    start and at the end."""
    per = max(1, n_ports // n_nets)
    nets, eps = [net(0)], []
    make().apply(nets, [], changed={"n0"})
    first = probes(make, nets, eps)
    for i in range(n_nets):
        if i:
            nets.append(net(i))
            make().apply(nets, eps, changed={f"n{i}"})
        eps.append(ep(i, per, 10000 + (i * per) % 50000))
        make().apply(nets, eps, changed={f"e{i}"})
    last = probes(make, nets, eps)
    return first, last, sum(len(e.ports) for e in eps)


# --- the packet path -----------------------------------------------------------
def sh(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def inns(ns, *argv, check=True):
    return sh("ip", "netns", "exec", ns, *argv, check=check)


def lab(prefix):
    """host (bridge + pynet's table), container (iperf3 -s), outside (iperf3 -c)."""
    h, c, o = f"{prefix}-bh", f"{prefix}-bc", f"{prefix}-bo"
    for ns in (h, c, o):
        sh("ip", "netns", "add", ns)
        inns(ns, "ip", "link", "set", "lo", "up")
    br = f"{prefix}-br"
    inns(h, "ip", "link", "add", br, "type", "bridge")
    inns(h, "ip", "addr", "add", "10.201.0.1/24", "dev", br)
    inns(h, "ip", "link", "set", br, "up")
    inns(h, "ip", "link", "add", f"{prefix}-hc", "type", "veth", "peer", "name", "eth0", "netns", c)
    inns(h, "ip", "link", "set", f"{prefix}-hc", "master", br, "up")
    inns(c, "ip", "addr", "add", "10.201.0.2/24", "dev", "eth0")
    inns(c, "ip", "link", "set", "eth0", "up")
    inns(c, "ip", "route", "add", "default", "via", "10.201.0.1")
    inns(h, "ip", "link", "add", f"{prefix}-ho", "type", "veth", "peer", "name", "eth0", "netns", o)
    inns(h, "ip", "addr", "add", "10.202.0.1/24", "dev", f"{prefix}-ho")
    inns(h, "ip", "link", "set", f"{prefix}-ho", "up")
    inns(o, "ip", "addr", "add", "10.202.0.2/24", "dev", "eth0")
    inns(o, "ip", "link", "set", "eth0", "up")
    inns(o, "ip", "route", "add", "default", "via", "10.202.0.1")
    inns(h, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    return h, c, o, br


def iperf(o, seconds):
    p = inns(o, "timeout", str(seconds + 20), "iperf3", "-c", "10.202.0.1", "-p", "15201", "-t", str(seconds),
             "-J", check=False)
    if p.returncode != 0:
        raise RuntimeError(f"iperf3: {p.stdout[-400:]} {p.stderr[-400:]}")
    return json.loads(p.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9


def packet_path(prefix, n_ports, rounds, seconds):
    h, c, o, br = lab(prefix)
    srv = subprocess.Popen(["ip", "netns", "exec", c, "iperf3", "-s", "-p", "5201"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        fw = NftFirewall("PNBENCH", netns=h, sysctl=lambda path, value: None)
        nets = [NetworkSpec("nb", br, ["10.201.0.0/24"])]
        one = [EndpointSpec("eb", "nb", "10.201.0.2", None, None, [PortMapping("tcp", "", 15201, 5201)])]
        many = one + [EndpointSpec(f"f{k}", "nb", f"10.201.0.{10 + k}", None, None,
                                   [PortMapping("tcp", "", 20000 + k * 100 + j, 80 + j) for j in range(100)])
                      for k in range(-(-(n_ports - 1) // 100))]
        fw.apply(nets, one)
        for _ in range(50):  # the server is up
            if inns(o, "iperf3", "-c", "10.202.0.1", "-p", "15201", "-t", "1", check=False).returncode == 0:
                break
            time.sleep(0.2)
        res = {1: [], n_ports: []}
        for r in range(rounds):
            for k in ((1, n_ports) if r % 2 == 0 else (n_ports, 1)):
                fw.apply(nets, one if k == 1 else many)
                res[k].append(iperf(o, seconds))
        published = sum(len(e.ports) for e in many)
        fw.remove_all()
        return res, published
    finally:
        srv.terminate()
        srv.wait(timeout=10)
        for ns in (h, c, o):
            sh("ip", "netns", "del", ns, check=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--networks", type=int, default=1000)
    ap.add_argument("--ports", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--no-iperf", action="store_true")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="see now()")
    ap.add_argument("--no-iptables", action="store_true", help="skip the iptables-nft comparison (slow at 1,000)")
    ap.add_argument("--quick", action="store_true", help="100 networks, 2,000 ports, 3 rounds of 1 s")
    a = ap.parse_args()
    global CLOCK
    CLOCK = a.clock
    if a.quick:
        a.networks, a.ports, a.rounds, a.seconds = 100, 2000, 3, 1
    lock = harness.RunLock.acquire_new()
    ns = f"{lock.prefix}-bn"
    sh("ip", "netns", "add", ns)
    noop = lambda path, value: None  # noqa: E731 -- no bridges exist, only rule sets
    tmp = tempfile.mkdtemp(prefix=f"{lock.prefix}-ledger-")
    try:
        res = {}
        backends = [("nftables", lambda: NftFirewall("PNBENCH", netns=ns, sysctl=noop))]
        if not a.no_iptables:
            backends.append(("iptables-nft", lambda: Firewall("PNBENCH", backend="nft", netns=ns, sysctl=noop)))
        print(f"apply times: {CLOCK} time, medians", flush=True)
        for name, make in backends:
            fw = make()
            t = networks(lambda: fw, a.networks)
            res[name] = t
            print(f"{name:<13} network create apply: first ten {med(t[:10]):.1f} ms, last ten "
                  f"{med(t[-10:]):.1f} ms (growth {med(t[-10:]) / med(t[:10]):.2f}x) at {a.networks} networks",
                  flush=True)
            fw.remove_all()
        if "iptables-nft" in res:
            print(f"nftables / iptables-nft, last ten: "
                  f"{med(res['nftables'][-10:]) / med(res['iptables-nft'][-10:]):.2f}x", flush=True)
        warm = NftFirewall("PNBENCH", netns=ns, sysctl=noop)
        for label, make in (("warm process", lambda: warm),
                            ("fresh process", lambda: NftFirewall("PNBENCH", netns=ns, sysctl=noop,
                                                                  ledger=FileLedger(tmp)))):
            (fn, fe), (ln, le), n = scale(make, a.networks, a.ports)
            print(f"nftables {label:<13} at 1 network / 0 ports -> {a.networks} networks / {n} ports: "
                  f"one more network {med(fn):.1f} -> {med(ln):.1f} ms ({med(ln) / med(fn):.2f}x), "
                  f"one more published port {med(fe):.1f} -> {med(le):.1f} ms ({med(le) / med(fe):.2f}x)",
                  flush=True)
            make().remove_all()
        if not a.no_iperf:
            if shutil.which("iperf3") is None:
                sys.exit("iperf3 not found: apt-get install iperf3 (scripts/test's list)")
            tp, published = packet_path(lock.prefix, a.ports, a.rounds, a.seconds)
            m1, mn = statistics.median(tp[1]), statistics.median(tp[a.ports])
            print(f"iperf3 through a DNAT-published port: 1 port published {m1:.2f} Gbit/s, {published} ports "
                  f"{mn:.2f} Gbit/s ({(1 - mn / m1) * 100:+.1f} % slower; {a.rounds} rounds of {a.seconds} s, "
                  f"medians; all {[round(x, 2) for x in tp[1]]} vs {[round(x, 2) for x in tp[a.ports]]})")
    finally:
        sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        lock.release()


if __name__ == "__main__":
    main()
