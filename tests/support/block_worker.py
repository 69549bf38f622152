"""One host allocating from a cluster block pool (tests/store/test_ipam_blocks.py and
benchmarks/bench_blocks.py).

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
``--retry-transient N``: retry an allocation or release that failed with a transient error (an
etcd member killed under it) up to N times with the same handle, and count them (``transient``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from pynet.errors import Exhausted, Transient
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


def _answer_log(path: str):
    """``note(line)``: one line appended to ``path`` (nothing without a path), unbuffered so a
    SIGKILL loses no line that was written."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT) if path else None
    return (lambda line: None) if fd is None else (lambda line: os.write(fd, line.encode() + b"\n"))


def _args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    for name in ("store", "prefix", "pool", "host"):
        ap.add_argument(name)
    ap.add_argument("count", type=int, help="0: until the pool is exhausted")
    for flag, kind, default in (("--release-every", int, 0), ("--start-at", float, 0.0), ("--out", str, ""),
                                ("--pause-after", int, 0), ("--go", str, ""),
                                ("--retry-transient", int, 0)):
        ap.add_argument(flag, type=kind, default=default)
    return ap.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _args(argv)
    store = open_for_test(args.store)
    ipam = BlockIpam(store, args.host, prefix=args.prefix)
    note = _answer_log(args.out)

    transient = 0

    def retrying(call):
        """``call()``, again on a transient error (``--retry-transient`` times at most), as a
        runtime retries an ADD or DEL: safe because the handle names the allocation."""
        nonlocal transient
        for attempt in range(args.retry_transient + 1):
            try:
                return call()
            except Transient:
                if attempt == args.retry_transient:
                    raise
                transient += 1
                time.sleep(0.05)

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
            a = retrying(lambda: ipam.allocate(args.pool, handle)).split("/")[0]
        except Exhausted as e:
            exhausted, error = True, type(e).__name__
            break
        note(f"+{handle} {a}")
        if args.release_every and i % args.release_every == args.release_every - 1:
            note(f"?{handle} {a}")
            retrying(lambda: ipam.release(args.pool, handle))
            note(f"-{handle} {a}")
            released.append(a)
        else:
            kept[handle] = a
        i += 1
    elapsed = time.perf_counter() - t0
    store.close()
    summary = dict(host=args.host, kept=kept, released=released, exhausted=exhausted, error=error,
                   transient=transient, round_trips=getattr(store, "round_trips", None), elapsed=elapsed)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
