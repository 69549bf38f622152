"""Store v2 round trips: one compare-and-swap and one optimistic ``txn`` (read + commit) per backend.

    .venv/bin/python -m benchmarks.bench_store [--ops 300]     (from the repository root)

Backends: SQLite (a temp file), a one-member and a three-member etcd (real ``etcd`` processes on
loopback, started and removed here via tests/support/etcd_cluster.py).  Per backend, medians in
ms of: ``put(version=...)`` (one etcd Txn: one round trip), ``txn`` reading one key and writing
it back (a range at the snapshot, then the compare-Txn: two round trips), the same with the read
answered by the record cache (``get(key, cached=True)``: only the compare-Txn, one round trip),
and a blind ``txn`` that only writes a key (one round trip).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from pynet.store.etcd import EtcdStore
from pynet.store.sqlite import SqliteStore
from tests.support.etcd_cluster import EtcdCluster


def measure(store, ops: int) -> dict:
    ns = f"pynet/v2/cluster/bench/{os.getpid()}/"
    key = ns + "cas"
    v = store.put(key, 0)
    cas, rmw, cached, blind = [], [], [], []
    for i in range(ops):
        t0 = time.perf_counter()
        v = store.put(key, i, version=v)
        cas.append(time.perf_counter() - t0)
    for _ in range(ops):
        t0 = time.perf_counter()
        store.txn(lambda t: t.put(key, t.get(key).value + 1))
        rmw.append(time.perf_counter() - t0)
    for _ in range(ops):
        t0 = time.perf_counter()
        store.txn(lambda t: t.put(key, t.get(key, cached=True).value + 1))
        cached.append(time.perf_counter() - t0)
    for i in range(ops):
        t0 = time.perf_counter()
        store.txn(lambda t, i=i: t.put(f"{ns}blind/{i}", i))
        blind.append(time.perf_counter() - t0)
    store.delete_prefix(ns)
    ms = lambda xs: round(statistics.median(xs) * 1000, 2)  # noqa: E731
    return {"cas_put_ms": ms(cas), "txn_read_write_ms": ms(rmw), "txn_cached_read_write_ms": ms(cached),
            "txn_blind_write_ms": ms(blind)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=int, default=300)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="pynet-bench-store-")
    try:
        s = SqliteStore(os.path.join(tmp, "pynet.db"))
        print("sqlite", measure(s, args.ops))
        s.close()
        for size in (1, 3):
            with EtcdCluster(size, tmp, name=f"bench{size}") as c:
                s = EtcdStore(c.endpoints)
                print(f"etcd x{size}", measure(s, args.ops))
                s.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
