"""Firewall / port-publishing benchmark: pynet vs Docker's built-in bridge, same run.

    .venv/bin/python benchmarks/bench_firewall.py [--runs 5] [--ports 1,5,10,100]
        [--networks 100] [--networks-alone 1000] [--only alone|ports|networks]

1. ``docker run -d`` with N published ports (tcp, explicit host ports) and ``docker rm -f``,
   on a pynet network vs a built-in bridge network (dockerd with its defaults), alternating,
   medians.  Goal: ratio <= 0.8 at 5 ports, lower as ports grow.
2. ``docker network create``/``rm`` of the 1st..100th network, pynet and the built-in bridge
   interleaved, then pynet alone (``--networks``, ``--networks-alone``): first-ten and last-ten
   medians.  Goal: pynet's last ten <= 1.0x the built-in's, growth <= 1.3.
3. pynet alone, in a throwaway namespace (nft backend): one endpoint with 1,000 published
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
        # the per-change path (what the daemon does on network create): the 100th network
        # against the 2nd (the 1st lays the base rules, which is the full reconcile's work)
        per = {2: [], 100: []}
        for _ in range(runs):
            fw.remove_all()
            for i in range(100):
                t = time.perf_counter()
                fw.apply(nets[:i + 1][::-1], [], changed={nets[i].id})
                if i + 1 in per:
                    per[i + 1].append(time.perf_counter() - t)
        line("change: 100th network vs the 2nd", per[100], per[2])
        fw.remove_all()
    finally:
        harness.sh("ip", "netns", "del", ns, check=False)


def _tens(xs):
    """Medians of the first ten and of the last ten samples (fewer when short)."""
    k = max(1, min(10, len(xs) // 2))
    return statistics.median(xs[:k]), statistics.median(xs[-k:])


def growth_line(label, xs, peer=None):
    a0, a1 = _tens(xs)
    out = f"{label:<34} pynet first ten {a0 * 1000:.1f} ms, last ten {a1 * 1000:.1f} ms, growth {a1 / a0:.2f}"
    if peer:
        b0, b1 = _tens(peer)
        out += (f"; built-in {b0 * 1000:.1f} -> {b1 * 1000:.1f} ms, growth {b1 / b0:.2f}; "
                f"ratio at the last ten {a1 / b1:.2f} (goal <= 1.0)")
    print(out + f"  n={len(xs)}", flush=True)


def bench_network_growth(prefix, n_peer=100, n_alone=0, progress=None):
    """``docker network create`` of the 1st..``n_peer``-th network, pynet (pynet driver and
    IPAM) and Docker's built-in bridge interleaved (the side going first alternates), then
    pynet alone on to the ``n_alone``-th; then ``docker network rm`` of them all, newest
    first, pynet alone down to ``n_peer`` and interleaved below.  Engine API calls (no CLI
    start-up in the samples).  Returns {"create"|"rm": {"pynet"|"peer": [seconds by count]}}
    (rm samples in the order of the networks present, 1 first).  Subnets: /28s of
    10.<a>.64.0/18 (pynet) and 10.<a>.128.0/18 (built-in), <a> from the run prefix."""
    import tempfile

    from benchmarks import bench_docker

    image = harness.ensure_test_image()
    a = 128 + int(prefix[2:], 16) % 64
    n_alone = max(n_alone, n_peer)
    assert n_alone <= 1024, "the /18 holds 1,024 /28s"
    state = tempfile.mkdtemp(prefix=f"{prefix}-bench-growth-")
    api = bench_docker.Api(image)
    res = {op: {"pynet": [], "peer": []} for op in ("create", "rm")}
    made = {"pynet": [], "peer": []}
    daemon = None

    def subnet(side, i):
        base = (64 if side == "pynet" else 128) * 256 + i * 16
        return f"10.{a}.{base // 256}.{base % 256}/28"

    def create(side, i):
        name = f"{prefix}-g{'pn' if side == 'pynet' else 'bi'}{i}"
        drv = daemon.name if side == "pynet" else "bridge"
        t = time.perf_counter()
        api.net_create(name, drv, daemon.name if side == "pynet" else None, subnet(side, i))
        res["create"][side].append(time.perf_counter() - t)
        made[side].append(name)

    def rm(side):
        name = made[side].pop()
        t = time.perf_counter()
        api.net_rm(name)
        res["rm"][side].append(time.perf_counter() - t)

    try:
        daemon = bench_docker.start_daemon(prefix, state)
        for i in range(n_alone):
            for side in (("pynet", "peer") if i % 2 == 0 else ("peer", "pynet")):
                if side == "pynet" or i < n_peer:
                    create(side, i)
            if progress is not None:
                progress()
        for i in reversed(range(n_alone)):
            for side in (("pynet", "peer") if i % 2 == 0 else ("peer", "pynet")):
                if side == "pynet" or i < n_peer:
                    rm(side)
            if progress is not None:
                progress()
        for side in ("pynet", "peer"):
            res["rm"][side].reverse()  # by networks present: 1 first
        growth_line(f"network create 1..{n_peer}", res["create"]["pynet"][:n_peer], res["create"]["peer"])
        growth_line(f"network rm {n_peer}..1", res["rm"]["pynet"][:n_peer], res["rm"]["peer"])
        if n_alone > n_peer:
            growth_line(f"network create 1..{n_alone} (alone)", res["create"]["pynet"])
            growth_line(f"network rm {n_alone}..1 (alone)", res["rm"]["pynet"])
        return res
    finally:
        bench_docker.teardown(daemon, prefix)
        import shutil
        shutil.rmtree(state, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ports", default="1,5,10,100")
    ap.add_argument("--skip-docker", action="store_true")
    ap.add_argument("--networks", type=int, default=100,
                    help="network create/rm growth: networks of each side interleaved (0: skip)")
    ap.add_argument("--networks-alone", type=int, default=0,
                    help="... then pynet alone on to this many networks")
    ap.add_argument("--only", choices=("alone", "ports", "networks"), help="run one part only")
    a = ap.parse_args()
    lock = harness.RunLock.acquire_new()
    try:
        if a.only in (None, "alone"):
            bench_alone(lock.prefix, a.runs)
        if not a.skip_docker and a.only in (None, "ports", "networks"):
            harness.ensure_dockerd()
            if a.only in (None, "ports"):
                bench_docker(lock.prefix, a.runs, [int(x) for x in a.ports.split(",")])
            if a.only in (None, "networks") and a.networks:
                bench_network_growth(lock.prefix, a.networks, a.networks_alone)
    finally:
        lock.release()


if __name__ == "__main__":
    main()
