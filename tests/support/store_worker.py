"""One of several processes sharing a store (tests/store: "no lost update").

    python -m tests.support.store_worker <store> <prefix> <worker> <rounds>

``<store>``: a SQLite file path or ``etcd://host:port,...``.  Each round is one ``store.txn``:
increment the shared counter ``<prefix>shared``, increment this worker's own ``<prefix>own/<worker>``
and claim the lowest free slot under ``<prefix>slots/`` (create-only).  Prints one JSON line:
``{"worker": w, "slots": [...], "attempts": n}``.
"""
from __future__ import annotations

import json
import sys

from pynet.store.etcd import EtcdStore
from pynet.store.sqlite import SqliteStore


def open_for_test(spec: str):
    return EtcdStore.from_url(spec) if spec.startswith("etcd://") else SqliteStore(spec)


def main(argv: list[str]) -> int:
    spec, prefix, worker, rounds = argv[0], argv[1], argv[2], int(argv[3])
    store = open_for_test(spec)
    attempts = 0
    slots = []

    def one_round(t):
        nonlocal attempts
        attempts += 1
        shared = t.get(prefix + "shared")
        t.put(prefix + "shared", (shared.value if shared else 0) + 1)
        own = t.get(f"{prefix}own/{worker}")
        t.put(f"{prefix}own/{worker}", (own.value if own else 0) + 1)
        taken = {r.key.rsplit("/", 1)[1] for r in t.list(prefix + "slots/")}
        slot = next(f"{i:04d}" for i in range(10000) if f"{i:04d}" not in taken)
        t.create(f"{prefix}slots/{slot}", worker)
        return slot

    for _ in range(rounds):
        slots.append(store.txn(one_round, retries=200))
    print(json.dumps({"worker": worker, "slots": slots, "attempts": attempts}))
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
