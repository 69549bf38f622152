"""Several processes on one SQLite file, and SIGKILL in the middle of work."""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from pynet.errors import PoolExhausted
from pynet.ipam import Ipam
from pynet.store.sqlite import SqliteStore
from tests.support.ipam_worker import read_answers

LOCAL = "LocalDefault"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _allocate_worker(db: str, pool_id: str, count: int, release_every: int,
                     start_at: float) -> list[str]:
    """Runs in a spawned process with its own SqliteStore on the same file."""
    ipam = Ipam(SqliteStore(db), host_routes=lambda: [])
    got, kept = [], []
    # start together, so the processes really contend instead of taking turns
    time.sleep(max(0.0, start_at - time.time()))
    for i in range(count):
        addr = ipam.request_address(pool_id).split("/")[0]
        got.append(addr)
        if release_every and i % release_every == 0:
            ipam.release_address(pool_id, addr)  # churn, so cursors and frees interleave
        else:
            kept.append(addr)
    return kept


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cidr", ["10.60.0.0/19", "fd00:60::/64"])
def test_concurrent_processes_never_hand_out_twice(tmp_path, cidr):
    db = str(tmp_path / "pynet.db")
    ipam = Ipam(SqliteStore(db), host_routes=lambda: [])
    pid, _, _ = ipam.request_pool(LOCAL, cidr)
    workers, per_worker = 6, 1000
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 1.5
    with ctx.Pool(workers) as pool:
        results = pool.starmap(_allocate_worker, [(db, pid, per_worker, 7, start_at)] * workers)
    kept = [a for r in results for a in r]
    assert len(kept) == len(set(kept))
    assert set(ipam.allocated(pid)) == set(kept)
    assert ipam.get_pool(pid)["used"] == len(kept)
    assert ipam.verify(pid) == []


@pytest.mark.timeout(60)
def test_concurrent_processes_exhaust_a_small_pool_exactly(tmp_path):
    db = str(tmp_path / "pynet.db")
    ipam = Ipam(SqliteStore(db), host_routes=lambda: [])
    pid, _, _ = ipam.request_pool(LOCAL, "10.61.0.0/24")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_drain_worker, [(db, pid)] * 4)
    got = [a for r in results for a in r]
    assert sorted(got) == sorted(f"10.61.0.{i}" for i in range(1, 255))
    assert ipam.verify(pid) == []


def _drain_worker(db: str, pool_id: str) -> list[str]:
    ipam = Ipam(SqliteStore(db), host_routes=lambda: [])
    got = []
    while True:
        try:
            got.append(ipam.request_address(pool_id).split("/")[0])
        except PoolExhausted:
            return got


# The child allocates (and now and then releases) in a tight loop and writes
# each answer to the file only after receiving it -- like a CNI binary that
# prints its result.  Whatever it wrote must be allocated in the store.
_CHILD = r"""
import os, sys
from pynet.ipam import Ipam
from pynet.store.sqlite import SqliteStore
db, pool_id, out = sys.argv[1:4]
ipam = Ipam(SqliteStore(db), host_routes=lambda: [])
fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
os.write(fd, b"ready\n")
i = 0
while True:
    a = ipam.request_address(pool_id).split("/")[0]
    os.write(fd, b"+" + a.encode() + b"\n")
    i += 1
    if i % 5 == 0:
        os.write(fd, b"?" + a.encode() + b"\n")   # about to release: may or may not have happened
        ipam.release_address(pool_id, a)
        os.write(fd, b"-" + a.encode() + b"\n")
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cidr", ["10.62.0.0/16", "fd00:62::/64"])
def test_sigkill_mid_allocation_leaves_store_consistent(tmp_path, cidr):
    db = str(tmp_path / "pynet.db")
    ipam = Ipam(SqliteStore(db), host_routes=lambda: [])
    pid, _, _ = ipam.request_pool(LOCAL, cidr)
    held_before: set[str] = set()  # what earlier (killed) children hold
    for round_ in range(5):
        out = tmp_path / f"answers-{round_}"
        # cwd: ``python -c`` puts it first on the child's sys.path, so the checkout's pynet imports
        child = subprocess.Popen([sys.executable, "-c", _CHILD, db, pid, str(out)], cwd=ROOT)
        deadline = time.monotonic() + 30
        while not (out.exists() and out.read_bytes().startswith(b"ready\n")):
            assert child.poll() is None, "child died before starting"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.05 + 0.04 * round_)  # different instants in the loop
        os.kill(child.pid, signal.SIGKILL)
        child.wait()

        held, in_doubt = read_answers(out.read_text())
        held = (held - in_doubt) | held_before
        allocated = set(ipam.allocated(pid))
        assert held, "the child should have allocated something"
        assert held <= allocated, "an address handed out is not marked allocated"
        assert ipam.verify(pid) == []
        # whatever the child got but never reported (killed between commit
        # and write) is found by reconcile against what the caller really holds
        leaked = allocated - held - in_doubt
        assert len(leaked) <= 1
        ipam.reconcile(pid, held | in_doubt)
        held_before = held | (in_doubt & allocated)
        assert set(ipam.allocated(pid)) == held_before
        assert ipam.verify(pid) == []
