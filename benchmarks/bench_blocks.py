"""Cluster block IPAM benchmark: allocations per second on a real three-member etcd, by 1 and by 4
hosts in parallel, with blocks (pynet/ipam/blocks.py) against the single-pool IPAM
(pynet/ipam/allocator.py) on the same cluster, in the same run.

    .venv/bin/python benchmarks/bench_blocks.py [--rounds 5] [--per-host 300] [--hosts 1,4] [--quick]

Each host is one process (tests/support/block_worker.py for blocks, tests/support/ipam_worker.py
for the single pool; each with its own record cache), allocating ``--per-host`` addresses with a
handle / holder record each from a fresh /16 (blocks: /26).  The four processes start together
(``--start-at``); a side's rate is all addresses over the slowest process's loop time.  Rounds
alternate the sides so drift hits both; per side the median (min, max) over the rounds and the
ratio of the medians are printed, with the round trips per allocation (1 = no conflict: the
block IPAM's goal while free blocks remain; the single pool's four writers conflict on its
bitmap block by design).

Why 1 host is about 1x the single pool (0.9x measured): both sides are one etcd commit per
allocation (round trips/alloc 1.03 vs 1.00 with one host), so the commit is the cost of both; the
block side adds a listing and a create-only claim per /26 it fills (one every ~61 addresses) and
compares three keys per txn (pool record, block, absent handle) instead of one.  Its gain is that
hosts do not contend: the single pool's writers conflict on its bitmap, the blocks' do not.  The
total rate is bounded by the commit latency of the three-member etcd (fsync on this machine's disk)
and, with several hosts, by CPU: ~1.5 ms of client CPU (httpx) per allocation plus etcd's own
on the members, on a 2-core machine shared with other runs -- report it with the load average.

Why a private etcd: the figures must not depend on what else the machine's etcd does; its
members, data and keys go with it, even on failure (tests/support/etcd_cluster.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pynet.ipam import Ipam  # noqa: E402
from pynet.ipam.blocks import BlockIpam  # noqa: E402
from pynet.store.etcd import EtcdStore  # noqa: E402
from pynet.store.keys import cluster_prefix  # noqa: E402
from tests.support.etcd_cluster import EtcdCluster  # noqa: E402

START_DELAY = 3.0  # s: every worker past its imports before the clock starts
GOAL_HOSTS, GOAL_RATE = 3, 500.0  # issue 11: >= 500 allocations/s in total by three hosts


def _run(cmds: list[list[str]]) -> list[dict]:
    procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    out = []
    try:
        for p in procs:
            o, e = p.communicate(timeout=600)
            if p.returncode != 0:
                raise RuntimeError(f"worker failed: {e[-2000:]}")
            out.append(json.loads(o.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out


def blocks_round(cluster, store, hosts: int, per_host: int, seq: int) -> tuple[float, float]:
    prefix = cluster_prefix("bench", f"blocks-{uuid.uuid4().hex[:8]}")
    ipam = BlockIpam(store, "bench", prefix=prefix)
    ipam.create_pool("p", f"10.{110 + seq % 100}.0.0/16")
    try:
        start = time.time() + START_DELAY
        res = _run([[sys.executable, "-m", "tests.support.block_worker", cluster.url(), prefix, "p",
                     f"h{i}", str(per_host), "--start-at", str(start)] for i in range(hosts)])
        addrs = [a for r in res for a in r["kept"].values()]
        assert len(addrs) == len(set(addrs)) == hosts * per_host, "duplicate or missing address"
        assert ipam.verify("p") == []
        return len(addrs) / max(r["elapsed"] for r in res), sum(r["round_trips"] for r in res) / len(addrs)
    finally:
        store.delete_prefix(prefix)


def ipam_round(cluster, store, hosts: int, per_host: int, seq: int) -> tuple[float, float]:
    ipam = Ipam(store, default_pools=[], host_routes=lambda: [])
    pid, _, _ = ipam.request_pool(f"bench{uuid.uuid4().hex[:8]}", f"10.{110 + seq % 100}.0.0/16")
    try:
        start = time.time() + START_DELAY
        res = _run([[sys.executable, "-m", "tests.support.ipam_worker", cluster.url(), pid, f"h{i}",
                     str(per_host), "--start-at", str(start)] for i in range(hosts)])
        addrs = [a for r in res for a in r["kept"]]
        assert len(addrs) == len(set(addrs)) == hosts * per_host, "duplicate or missing address"
        return len(addrs) / max(r["elapsed"] for r in res), sum(r["round_trips"] for r in res) / len(addrs)
    finally:
        ipam.release_pool(pid)


def _fmt(xs: list[float]) -> str:
    return f"median {statistics.median(xs):,.0f}/s (min {min(xs):,.0f}, max {max(xs):,.0f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-host", type=int, default=300)
    ap.add_argument("--hosts", default="1,3",
                    help="host counts, comma-separated; the first is the base of the scaling ratio "
                         "(issue 11's goal is stated for 3 hosts: --hosts 1,3,4)")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 60 allocations per host")
    args = ap.parse_args()
    counts = [int(n) for n in args.hosts.split(",") if n.strip()]
    if not counts or min(counts) < 1:
        ap.error("--hosts: positive integers, e.g. 1,4")
    rounds, per_host = (2, 60) if args.quick else (args.rounds, args.per_host)
    workdir = tempfile.mkdtemp(prefix="pynet-bench-blocks-")
    try:
        with EtcdCluster(3, workdir, name="bblk") as cluster:
            store = EtcdStore(cluster.endpoints, timeout=5.0)
            rates: dict = {}
            seq = 0
            for r in range(rounds):
                for hosts in counts:
                    sides = [("blocks", blocks_round), ("ipam", ipam_round)]
                    if r % 2:
                        sides.reverse()  # alternate who goes first: drift hits both
                    for name, fn in sides:
                        seq += 1
                        rates.setdefault((name, hosts), []).append(fn(cluster, store, hosts, per_host, seq))
            store.close()
        print(f"cluster IPAM on a 3-member etcd: {per_host} allocations per host, {rounds} rounds")
        med = {k: statistics.median(x for x, _ in v) for k, v in rates.items()}
        for hosts in counts:
            b, i = rates[("blocks", hosts)], rates[("ipam", hosts)]
            rt_b = statistics.median(x for _, x in b)
            rt_i = statistics.median(x for _, x in i)
            print(f"allocations/s x{hosts} hosts  pynet blocks {_fmt([x for x, _ in b])}  "
                  f"peer single pool {_fmt([x for x, _ in i])}  "
                  f"ratio {med[('blocks', hosts)] / med[('ipam', hosts)]:.2f}  n={rounds}  "
                  f"round trips/alloc {rt_b:.2f} vs {rt_i:.2f}")
        if ("blocks", GOAL_HOSTS) in med:
            rt = statistics.median(x for _, x in rates[("blocks", GOAL_HOSTS)])
            print(f"goal: {GOAL_HOSTS} hosts >= {GOAL_RATE:.0f}/s in total: {med[('blocks', GOAL_HOSTS)]:,.0f}/s "
                  f"({'met' if med[('blocks', GOAL_HOSTS)] >= GOAL_RATE else 'MISSED'}), round trips/alloc "
                  f"{rt:.2f} (1.00 = no conflict); load average {os.getloadavg()[0]:.2f} on "
                  f"{os.cpu_count()} cores")
        base = counts[0]
        for hosts in counts[1:]:
            for name in ("blocks", "ipam"):
                ratio = med[(name, hosts)] / med[(name, base)]
                print(f"scaling {hosts} hosts / {base}  {name}  ratio {ratio:.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
