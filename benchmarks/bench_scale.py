"""Scale benchmark: pynet's own cost per change as the host fills up, without dockerd.

    .venv/bin/python benchmarks/bench_scale.py [--networks 1000] [--endpoints 300]

The controller built as the daemon builds it (real netlink, real iptables, SQLite store), in a
throwaway network namespace ``pt<hex>-scale`` (so nothing touches the host's tables or links):
``create_network`` of the 1st..Nth network (a /28 each, Docker's way: pool and gateway from the
IPAM first), then ``create_endpoint`` + ``program_external_connectivity`` (one published port)
of the 1st..Mth endpoint on one network.  Printed: first-ten and last-ten medians, wall and
this process's CPU time (iptables-restore runs in a child process, so the CPU figure is pynet's
Python alone, the steadier one on a busy machine), and their growth (last ten / first ten;
goal <= 1.3, issue 13).  Everything is removed even on failure (the namespace with its links
and rules, the state dir).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]


def _tens(xs):
    k = max(1, min(10, len(xs) // 2))
    return statistics.median(xs[:k]) * 1000, statistics.median(xs[-k:]) * 1000


def _line(label, wall, cpu):
    (w0, w1), (c0, c1) = _tens(wall), _tens(cpu)
    print(f"{label:<26} wall {w0:.1f} -> {w1:.1f} ms (growth {w1 / w0:.2f}); "
          f"cpu {c0:.1f} -> {c1:.1f} ms (growth {c1 / c0:.2f}; goal <= 1.3)  n={len(wall)}", flush=True)


def inside(n_networks: int, n_endpoints: int, prefix: str) -> None:
    """Runs in the namespace: the measurements."""
    from pynet.cnm.model import IPData, PortMapping
    from pynet.cnm.networks import GATEWAY_OPTS, LOCAL_DEFAULT
    from pynet.config import Config
    from pynet.root import build_controller

    state = tempfile.mkdtemp(prefix=f"{prefix}-scale-")
    try:
        c = build_controller(Config(plugin_name=f"{prefix}-scale", state_dir=state,
                                    chain_prefix=prefix.upper() + "SC", socket_path=f"{state}/sock"))

        def network(i: int, subnet: str) -> tuple:
            pid, pool, _ = c.request_pool(LOCAL_DEFAULT, subnet)
            gw = c.request_address(pid, "", GATEWAY_OPTS)
            nid = hashlib.sha256(f"{prefix}-n{i}".encode()).hexdigest()
            return nid, pid, IPData(pool=pool, gateway=gw, address_space=LOCAL_DEFAULT, pool_id=pid)

        wall, cpu = [], []
        for i in range(n_networks):  # /28s of 10.100.0.0/14
            nid, _, data = network(i, f"10.{100 + i // 4096}.{(i % 4096) // 16}.{(i % 16) * 16}/28")
            t, p = time.perf_counter(), time.process_time()
            c.create_network(nid, [data], driver="bridge", name=f"{prefix}-n{i}")
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - p)
        if wall:
            _line(f"network create 1..{n_networks}", wall, cpu)
        if n_endpoints:
            nid, pid, data = network(-1, "10.99.0.0/20")
            c.create_network(nid, [data], driver="bridge", name=f"{prefix}-ep")
            wall, cpu = [], []
            for j in range(n_endpoints):
                addr = c.request_address(pid, "", {})
                eid = hashlib.sha256(f"{prefix}-e{j}".encode()).hexdigest()
                t, p = time.perf_counter(), time.process_time()
                c.create_endpoint(nid, eid, address=addr)
                c.program_external_connectivity(nid, eid, [PortMapping("tcp", 80, 20000 + j)])
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - p)
            _line(f"endpoint + port 1..{n_endpoints}", wall, cpu)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=300)
    ap.add_argument("--inside", metavar="PREFIX", help=argparse.SUPPRESS)
    args = ap.parse_args()
    assert args.networks <= 16384 and args.endpoints <= 4000, "the subnets hold that many"
    if args.inside:
        inside(args.networks, args.endpoints, args.inside)
        return 0
    from tests.support import harness

    lock = harness.RunLock.acquire_new()
    ns = f"{lock.prefix}-scale"
    try:
        harness.sh("ip", "netns", "add", ns)
        harness.sh("ip", "-n", ns, "link", "set", "lo", "up")
        return subprocess.call(["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__),
                                "--networks", str(args.networks), "--endpoints", str(args.endpoints),
                                "--inside", lock.prefix])
    finally:
        harness.sh("ip", "netns", "del", ns, check=False)  # its links and rules go with it
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
