"""Firewall / port-publishing benchmark: pynet vs Docker's built-in bridge, same run.

    .venv/bin/python benchmarks/bench_firewall.py [--runs 5] [--ports 1,5,10,100]

1. ``docker run -d`` with N published ports (tcp, explicit host ports) and ``docker rm -f``,
   on a pynet network vs a built-in bridge network (dockerd with its defaults), alternating,
   medians.  Goal: ratio <= 0.8 at 5 ports, lower as ports grow.
2. pynet alone, in a throwaway namespace (nft backend): one endpoint with 1,000 published
   ports applied in one batch (goal < 1 s); the firewall apply for the 100th network with 99
   present vs the first (goal <= 1.5x).
Every resource is named ``pt<hex>-...`` (harness.RunLock) and removed even on failure.
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

IMAGE = harness.TEST_IMAGE


def line(label, a, b=None):
    def st(xs):
        return f"median {statistics.median(xs) * 1000:.1f} ms (min {min(xs) * 1000:.1f}, max {max(xs) * 1000:.1f})"
    if b is None:
        print(f"{label:<34} pynet {st(a)}  n={len(a)}", flush=True)
    else:
        r = statistics.median(a) / statistics.median(b)
        print(f"{label:<34} pynet {st(a)}  peer {st(b)}  ratio {r:.2f}  n={len(a)}", flush=True)


def timed(*argv):
    t = time.perf_counter()
    harness.sh(*argv, timeout=600)
    return time.perf_counter() - t


def bench_docker(prefix, runs, port_counts, progress=None,
                 subnets=("10.239.250.0/24", "10.239.251.0/24"), base=40000):
    """{ports: {"pynet"|"peer": ([run -d seconds], [rm -f seconds])}}, printed as it goes;
    ``progress()`` after every run+rm. benchmarks/run passes subnets and host ports of its own
    (``base`` .. ``base`` + 200 + the largest count), so it can run beside this script."""
    out = {}
    d = harness.Docker()
    daemon = harness.PynetDaemon(f"{prefix}-bench", harness.PLUGIN_DIR / f"{prefix}-bench.sock",
                                 f"/tmp/{prefix}-bench-state")
    daemon.start()
    try:
        pn, bn = f"{prefix}-pn", f"{prefix}-bn"
        d.run("network", "create", "-d", daemon.name, "--ipam-driver", daemon.name,
              "--subnet", subnets[0], pn)
        d.run("network", "create", "--subnet", subnets[1], bn)
        for n in port_counts:
            res = {"pynet": ([], []), "peer": ([], [])}
            for r in range(runs + 1):  # first round: warm-up
                for side, net, off in (("pynet", pn, 0), ("peer", bn, 200)):
                    ports = [a for i in range(n) for a in ("-p", f"{base + off + i}:{1000 + i}")]
                    c = f"{prefix}-c{side}"
                    t_run = timed(harness.DOCKER, "run", "-d", "--name", c, "--network", net, *ports,
                                  IMAGE, "sleep", "600")
                    t_rm = timed(harness.DOCKER, "rm", "-f", c)
                    if r:
                        res[side][0].append(t_run)
                        res[side][1].append(t_rm)
                    if progress is not None:
                        progress()
            line(f"docker run -d, {n} ports", res["pynet"][0], res["peer"][0])
            line(f"docker rm -f, {n} ports", res["pynet"][1], res["peer"][1])
            out[n] = res
        return out
    finally:
        harness.cleanup_docker(d, [prefix + "-"])
        daemon.stop()
        harness.flush_firewall(harness.daemon_chain_prefix(daemon.argv()))
        harness.sh("rm", "-rf", f"/tmp/{prefix}-bench-state", check=False)


def bench_alone(prefix, runs):
    ns = f"{prefix}-fwb"
    harness.sh("ip", "netns", "add", ns)
    try:
        fw = Firewall("PNBENCH", backend="nft", netns=ns, sysctl=lambda p, v: None)
        net = NetworkSpec("n0", "pn-bench0", ["10.239.0.0/24"])
        t1000 = []
        for _ in range(runs):
            fw.remove_all()
            ep = EndpointSpec("e0", "n0", "10.239.0.2", None, None,
                              [PortMapping("tcp", "", 30000 + i, 1000 + i) for i in range(1000)])
            fw.apply([net], [])
            t = time.perf_counter()
            fw.apply([net], [ep])
            t1000.append(time.perf_counter() - t)
        line("apply 1000 ports on one endpoint", t1000)
        first, hundredth = [], []
        nets = [NetworkSpec(f"n{i}", f"pn-bench{i}", [f"10.{238 - i // 250}.{i % 250}.0/24"]) for i in range(100)]
        for _ in range(runs):
            fw.remove_all()
            t = time.perf_counter()
            fw.apply(nets[:1], [])
            first.append(time.perf_counter() - t)
            fw.apply(nets[:99][::-1], [])
            t = time.perf_counter()
            fw.apply(nets[::-1], [])  # newest first, as the adapter renders
            hundredth.append(time.perf_counter() - t)
        line("apply: 100th network, 99 present", hundredth, first)
        fw.remove_all()
    finally:
        harness.sh("ip", "netns", "del", ns, check=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ports", default="1,5,10,100")
    ap.add_argument("--skip-docker", action="store_true")
    a = ap.parse_args()
    lock = harness.RunLock.acquire_new()
    try:
        bench_alone(lock.prefix, a.runs)
        if not a.skip_docker:
            harness.ensure_dockerd()
            bench_docker(lock.prefix, a.runs, [int(x) for x in a.ports.split(",")])
    finally:
        lock.release()


if __name__ == "__main__":
    main()
