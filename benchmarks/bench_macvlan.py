"""Container start on a pynet macvlan network vs Docker's built-in macvlan, same run.

    .venv/bin/python benchmarks/bench_macvlan.py [--runs 10] [--warmup 2]

Each side gets its own isolated parent made here (one network per parent, for
both drivers): a dummy link where the kernel has CONFIG_DUMMY, else a veth pair
whose peer stays up and addressless (this VM's kernel has no dummy driver).
Never the machine's uplink.  The operation timed is ``docker run -d`` (create +
start: CreateEndpoint, Join, move into the container) followed, untimed, by
``docker rm -f``; rounds alternate pynet / built-in so drift hits both.
Goal: ratio <= 1.0.  Everything is named ``pt<4 hex>-`` and removed even on failure.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import harness  # noqa: E402

GOAL = 1.0


def make_parent(name: str) -> list[str]:
    """An isolated parent; returns the links to delete afterwards."""
    if harness.sh("ip", "link", "add", name, "type", "dummy", check=False).returncode == 0:
        harness.sh("ip", "link", "set", name, "up")
        return [name]
    peer = name + "x"
    harness.sh("ip", "link", "add", name, "type", "veth", "peer", "name", peer)
    harness.sh("ip", "link", "set", name, "up")
    harness.sh("ip", "link", "set", peer, "up")
    return [name]


def timed_run(docker, image, name, network) -> float:
    t0 = time.perf_counter()
    docker.run("run", "-d", "--name", name, "--network", network, image, "sleep", "600")
    dt = time.perf_counter() - t0
    docker.run("rm", "-f", name)
    return dt * 1000


def fmt(xs):
    return f"median {statistics.median(xs):.1f} ms (min {min(xs):.1f}, max {max(xs):.1f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    harness.ensure_dockerd()
    image = harness.ensure_test_image()
    docker = harness.Docker()
    lock = harness.RunLock.acquire_new()
    p = lock.prefix
    links: list[str] = []
    tmp = tempfile.mkdtemp(prefix=f"{p}-bench-")
    daemon = harness.PynetDaemon(f"{p}-pynet", harness.PLUGIN_DIR / f"{p}-pynet.sock",
                                 Path(tmp) / "state", log_dir=Path(tmp))
    try:
        links += make_parent(f"{p}-pa")
        links += make_parent(f"{p}-pb")
        daemon.start()
        docker.run("network", "create", "-d", daemon.name, "-o", "pynet.driver=macvlan",
                   "-o", f"parent={p}-pa", "--subnet", "10.234.1.0/24", f"{p}-pynet-mv")
        docker.run("network", "create", "-d", "macvlan", "-o", f"parent={p}-pb",
                   "--subnet", "10.234.2.0/24", f"{p}-docker-mv")
        sides = {"pynet": f"{p}-pynet-mv", "peer": f"{p}-docker-mv"}
        res = {k: [] for k in sides}
        for i in range(args.warmup + args.runs):
            order = list(sides.items()) if i % 2 == 0 else list(reversed(sides.items()))
            for side, net in order:
                dt = timed_run(docker, image, f"{p}-c{side}", net)
                if i >= args.warmup:
                    res[side].append(dt)
        ratio = statistics.median(res["pynet"]) / statistics.median(res["peer"])
        print(f"macvlan docker run -d  pynet {fmt(res['pynet'])}  peer {fmt(res['peer'])}  "
              f"ratio {ratio:.2f}  n={args.runs}  (goal <= {GOAL:.1f}: "
              f"{'met' if ratio <= GOAL else 'NOT met'})")
        return 0
    finally:
        try:
            harness.teardown_daemon(daemon, docker, [p + "-"])
        except Exception as e:  # noqa: BLE001
            print(f"teardown: {e}", file=sys.stderr)
        for link in links:
            harness.sh("ip", "link", "del", link, check=False)
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
