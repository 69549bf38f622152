"""One host allocating from a cluster block pool (tests/store/test_ipam_blocks.py, benchmarks/bench_blocks.py).

    python -m tests.support.block_worker <store> <prefix> <pool> <host> <count> [options]

``<store>``: a SQLite file path or ``etcd://host:port,...``; ``<prefix>``: the block IPAM's key
prefix (per run).  Allocates ``count`` addresses (handles ``<host>-<i>``; ``count`` 0: until the
pool is exhausted), releasing every ``--release-every``-th one again.  ``--start-at T``: wait
until wall-clock time T first, so the hosts really contend.  Prints one JSON line:
``{"host", "kept": {handle: addr}, "released", "exhausted", "error", "round_trips", "elapsed"}``.

``--out FILE``: ``+<handle> <addr>`` after each allocation returned (``?``/``-`` around a
release), as a CNI binary prints its result only once it has it -- for the SIGKILL test.
``--pause-after N --go FILE``: after N allocations write ``paused`` there and wait for FILE, so a
test can let every host claim its first block before the race for the rest begins.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from pynet.errors import Exhausted
from pynet.ipam.blocks import BlockIpam
from tests.support.store_worker import open_for_test


def read_log(text: str) -> tuple[dict, set]:
    """An allocation log -> ({handle: addr} the process was told it holds, handles in doubt)."""
    held: dict = {}
    in_doubt: set = set()
    for line in text.splitlines()[1:]:
        kind, rest = line[0], line[1:]
        handle, _, addr = rest.partition(" ")
        if kind == "+":
            held[handle] = addr
        elif kind == "?":
            in_doubt.add(handle)
        elif kind == "-":
            held.pop(handle, None)
            in_doubt.discard(handle)
    return held, in_doubt


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("prefix")
    ap.add_argument("pool")
    ap.add_argument("host")
    ap.add_argument("count", type=int)
    ap.add_argument("--release-every", type=int, default=0)
    ap.add_argument("--start-at", type=float, default=0.0)
    ap.add_argument("--out", default="")
    ap.add_argument("--pause-after", type=int, default=0,
                    help="after this many allocations note 'paused' and wait for --go FILE to exist")
    ap.add_argument("--go", default="")
    args = ap.parse_args(argv)
    store = open_for_test(args.store)
    ipam = BlockIpam(store, args.host, prefix=args.prefix)
    fd = os.open(args.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT) if args.out else None

    def note(line: str) -> None:
        if fd is not None:
            os.write(fd, line.encode() + b"\n")

    note("ready")
    time.sleep(max(0.0, args.start_at - time.time()))
    t0 = time.perf_counter()
    kept, released = {}, []
    exhausted, error = False, ""
    i = 0
    while args.count == 0 or i < args.count:
        assert i < 1_000_000  # bounded even when "until exhausted" never comes
        if args.pause_after and i == args.pause_after:
            note("paused")
            deadline = time.monotonic() + 120
            while not os.path.exists(args.go):
                assert time.monotonic() < deadline, "never told to go on"
                time.sleep(0.01)
        handle = f"{args.host}-{i}"
        try:
            a = ipam.allocate(args.pool, handle).split("/")[0]
        except Exhausted as e:
            exhausted, error = True, type(e).__name__
            break
        note(f"+{handle} {a}")
        if args.release_every and i % args.release_every == args.release_every - 1:
            note(f"?{handle} {a}")
            ipam.release(args.pool, handle)
            note(f"-{handle} {a}")
            released.append(a)
        else:
            kept[handle] = a
        i += 1
    print(json.dumps({"host": args.host, "kept": kept, "released": released, "exhausted": exhausted,
                      "error": error, "round_trips": getattr(store, "round_trips", None),
                      "elapsed": time.perf_counter() - t0}))
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
