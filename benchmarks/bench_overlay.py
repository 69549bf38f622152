"""From an endpoint's creation on one host to its FDB entry on another (the overlay, issue 11).

    .venv/bin/python benchmarks/bench_overlay.py [--endpoints 200] [--gap 0.02]

The overlay lab of the acceptance tests (tests/support/overlay.py: three host namespaces on an
underlay switch namespace, a three-member etcd on the underlay, each host's pynet instance and
agent).  Host 1 creates ``--endpoints`` endpoints on one overlay, ``--gap`` s apart; host 2's
driver notes when it programmed each one's FDB entry (no polling of the tables on the path
measured).  Both times are CLOCK_MONOTONIC, the machine's.  Printed: the median and 99th
percentile, against the goals (median <= 20 ms, p99 <= 100 ms); also when host 2's agent took
each event off the watch, and its pass durations.  Absolute numbers: there is no peer to compare
with in the same run.  Everything is named ``po<hex>-`` and removed even on failure.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pynet.cni import install as cni_install  # noqa: E402
from tests.support.overlay import OverlayLab, wait_until  # noqa: E402

GOAL_MEDIAN_MS, GOAL_P99_MS = 20.0, 100.0
SUBNET = "10.79.0.0/16"


def pct(values: list, q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(q * len(v))) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoints", type=int, default=200)
    ap.add_argument("--gap", type=float, default=0.02, help="seconds between two creates on host 1")
    ap.add_argument("--profile", action="store_true", help="print cProfile of host 1's creates and host 2's passes")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="pynet-bench-overlay-")
    bin_dir = os.path.join(base, "bin")
    cni_install.install(bin_dir=bin_dir, conf_dir=None)
    with OverlayLab(hosts=3, base_dir=base, cni_path=bin_dir, lease_ttl=15) as lab:
        h1, h2, _ = lab.hosts
        for h in lab.hosts:
            h.call("join_cluster", reconcile_interval=10.0)
        net = ipaddress.ip_network(SUBNET)
        for i, h in ((0, h1), (1, h2)):         # one pod each: both hosts instantiate the network
            conf = {"cniVersion": "1.0.0", "plugin": {
                "type": "pynet-overlay", "isGateway": True, "ipMasq": True,
                "ipam": {"type": "pynet-ipam", "ranges": [[{"subnet": SUBNET}]]},
                "capabilities": {"ips": True}, "pynet": lab.conflist_pynet(i)}}
            h.call("cni_add", name=f"pod{i}", netns_path=lab.pod(str(i)), network="bench", cni=conf,
                   ifname="eth0", address=str(net.network_address + 10 + i), prefixlen=net.prefixlen)
        h2.call("time_fdb")
        if args.profile:
            h1.call("profile", on=True)
            h2.call("profile", on=True)
        made = h1.call("create_endpoints_timed", network="bench", count=args.endpoints, gap=args.gap,
                       call_timeout=600)
        wait_until(lambda: len(h2.call("fdb_timings")) >= args.endpoints, "every entry on host 2", bound=300)
        if args.profile:
            print("== host 1: create_endpoint ==\n" + h1.call("profile", on=False))
            print("== host 2: agent passes ==\n" + h2.call("profile", on=False))
        seen, events, passes = h2.call("fdb_timings"), h2.call("event_timings"), h2.call("pass_timings")
        fdb = [(seen[m] - t) * 1000 for m, t in made.items()]
        ev = [(events[m] - t) * 1000 for m, t in made.items() if m in events]
        print(f"endpoint on host 1 -> FDB entry on host 2, {len(fdb)} endpoints {args.gap * 1000:.0f} ms apart:")
        print(f"  median {statistics.median(fdb):.1f} ms (goal <= {GOAL_MEDIAN_MS:.0f}), "
              f"p99 {pct(fdb, 0.99):.1f} ms (goal <= {GOAL_P99_MS:.0f}), max {max(fdb):.1f} ms")
        print(f"  event taken off the watch: median {statistics.median(ev):.1f} ms, p99 {pct(ev, 0.99):.1f} ms")
        cr = h1.call("create_timings")
        print(f"  create_endpoint on host 1 (veth + cluster record): median {statistics.median(cr) * 1000:.1f} ms")
        print(f"  agent passes: {len(passes)}, median {statistics.median(p[0] for p in passes) * 1000:.1f} ms")
        h1.call("delete_endpoints", network="bench", call_timeout=600)
        for h in lab.hosts:
            h.call("teardown", call_timeout=300)
    return 0


if __name__ == "__main__":
    sys.exit(main())
