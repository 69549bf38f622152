"""The nftables backend at scale (issue 13), in a throwaway namespace, against the
iptables backend (iptables-nft) in the same run:

    .venv/bin/python benchmarks/bench_nft.py [--networks 1000] [--ports 10000] [--quick]

1. Networks: created one at a time, each one's apply a change (``changed={id}``); the
   per-change apply time of the first ten against the last ten (goal <= 1.3x on nftables),
   and nftables' last ten against iptables' last ten.
2. Published ports: endpoints with 100 ports each up to ``--ports``; then the apply of one
   more endpoint with one port, at the end against at the start (goal <= 1.3x).
Nothing leaves the namespace (``pt<hex>-bn...``, removed even on failure); no bridge or
packet exists, only the rule sets.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]

from tests.support import harness  # noqa: E402

from pynet.firewall import EndpointSpec, Firewall, NetworkSpec, PortMapping  # noqa: E402
from pynet.firewall.nft import NftFirewall  # noqa: E402


def med(xs):
    return statistics.median(xs) * 1000


def net(i):
    return NetworkSpec(f"n{i}", f"pn-b{i}", [f"10.{100 + i // 250}.{i % 250}.0/24"])


def timed(fw, nets, eps, changed):
    t = time.perf_counter()
    fw.apply(nets, eps, changed=changed) if isinstance(fw, NftFirewall) else fw.apply(nets, eps)
    return time.perf_counter() - t


def networks(fw, n):
    nets, times = [], []
    for i in range(n):
        nets.append(net(i))
        times.append(timed(fw, nets, [], {f"n{i}"}))
    return times


def ports(fw, total):
    """(apply times of one more 1-port endpoint at the start, at the end, ports at the end)."""
    nets, eps = [net(0)], []
    fw.apply(nets, [])
    probe = EndpointSpec("probe", "n0", "10.100.0.250", None, None, [PortMapping("tcp", "", 9999, 80)])

    def probe_times():
        out = []
        for _ in range(5):
            out.append(timed(fw, nets, eps + [probe], {"probe"}))
            fw.apply(nets, eps, changed={"probe"})  # and gone again (not timed)
        return out

    first = probe_times()
    for k in range(min(-(-total // 100), 240)):  # 100 ports per endpoint, one /24 of them
        eps.append(EndpointSpec(f"e{k}", "n0", f"10.100.0.{2 + k}", None, None,
                                [PortMapping("tcp", "", 10000 + k * 100 + j, 80 + j) for j in range(100)]))
        fw.apply(nets, eps, changed={f"e{k}"})
    return first, probe_times(), sum(len(e.ports) for e in eps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--networks", type=int, default=1000)
    ap.add_argument("--ports", type=int, default=10000)
    ap.add_argument("--quick", action="store_true", help="100 networks, 2,000 ports")
    a = ap.parse_args()
    if a.quick:
        a.networks, a.ports = 100, 2000
    lock = harness.RunLock.acquire_new()
    ns = f"{lock.prefix}-bn"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    noop = lambda path, value: None  # noqa: E731 -- no bridges exist, only rule sets
    try:
        res = {}
        for name, make in (("nftables", lambda: NftFirewall("PNBENCH", netns=ns, sysctl=noop)),
                           ("iptables-nft", lambda: Firewall("PNBENCH", backend="nft", netns=ns, sysctl=noop))):
            fw = make()
            t = networks(fw, a.networks)
            res[name] = t
            print(f"{name:<13} network create apply: first ten {med(t[:10]):.1f} ms, last ten "
                  f"{med(t[-10:]):.1f} ms (growth {med(t[-10:]) / med(t[:10]):.2f}x) at {a.networks} networks",
                  flush=True)
            fw.remove_all()
        print(f"nftables / iptables-nft, last ten: {med(res['nftables'][-10:]) / med(res['iptables-nft'][-10:]):.2f}x")
        fw = NftFirewall("PNBENCH", netns=ns, sysctl=noop)
        first, last, n = ports(fw, a.ports)
        print(f"nftables      one more published port: at 0 ports {med(first):.1f} ms, at {n} ports "
              f"{med(last):.1f} ms (growth {med(last) / med(first):.2f}x)")
        fw.remove_all()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        lock.release()


if __name__ == "__main__":
    main()
