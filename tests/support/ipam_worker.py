"""One of several processes allocating from one IPAM pool (tests/store/test_ipam_on_etcd.py).

    python -m tests.support.ipam_worker <store> <pool_id> <worker> <count> [options]

``<store>``: a SQLite file path or ``etcd://host:port,...``.  Allocates ``count`` addresses
(holder ``w/<worker>/<i>``), releasing every ``--release-every``-th one again (churn, so cursors
and frees interleave).  ``--start-at T``: wait until wall-clock time T first, so the processes
really contend.  Prints one JSON line: ``{"worker", "kept", "released", "round_trips", "elapsed"}``
(``elapsed``: seconds of the allocation loop, for benchmarks/bench_ipam.py --etcd).

``--out FILE``: write ``+<addr>`` to FILE after each allocation returned (and ``?<addr>`` /
``-<addr>`` around a release), as a CNI binary prints its result only once it has it -- for the
SIGKILL test, which kills the worker at some instant of that loop.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from pynet.ipam import Ipam
from tests.support.store_worker import open_for_test


def read_answers(text: str) -> tuple[set, set]:
    """An allocation log (header line, then ``+addr`` / ``?addr`` / ``-addr``) -> (addresses
    the process was told it holds, addresses in doubt: a release was started but not seen done)."""
    held, in_doubt = set(), set()
    for line in text.splitlines()[1:]:
        kind, addr = line[0], line[1:]
        if kind == "+":
            held.add(addr)
        elif kind == "?":
            in_doubt.add(addr)
        elif kind == "-":
            held.discard(addr)
            in_doubt.discard(addr)
    return held, in_doubt


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("pool_id")
    ap.add_argument("worker")
    ap.add_argument("count", type=int)
    ap.add_argument("--release-every", type=int, default=0)
    ap.add_argument("--start-at", type=float, default=0.0)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    store = open_for_test(args.store)
    ipam = Ipam(store, default_pools=[], host_routes=lambda: [])
    fd = os.open(args.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT) if args.out else None

    def note(line: str) -> None:
        if fd is not None:
            os.write(fd, line.encode() + b"\n")

    note("ready")
    time.sleep(max(0.0, args.start_at - time.time()))
    t0 = time.perf_counter()
    kept, released = [], []
    for i in range(args.count):
        holder = f"w/{args.worker}/{i}"
        a = ipam.request_address(args.pool_id, holder=holder).split("/")[0]
        note("+" + a)
        if args.release_every and i % args.release_every == args.release_every - 1:
            note("?" + a)  # about to release: may or may not have happened
            ipam.release_address(args.pool_id, a, holder)
            note("-" + a)
            released.append(a)
        else:
            kept.append(a)
    print(json.dumps({"worker": args.worker, "kept": kept, "released": released,
                      "round_trips": getattr(store, "round_trips", None),
                      "elapsed": time.perf_counter() - t0}))
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
