"""The IPAM on etcd (Store v2 only: no pessimistic transaction there).

Real etcd members (tests/support/etcd_cluster.py, the session clusters of tests/store/conftest.py).
Every test works in an address space of its own (the pool ID, hence every key, names it) and
forgets its pools at the end, so tests sharing a cluster never see each other's records.

Round trips are counted, not timed: ``EtcdStore.round_trips`` counts the HTTP requests sent.
Several processes are several ``tests.support.ipam_worker`` processes (each with its own record
cache); two ``EtcdStore`` objects in this process stand for two warm processes where the test
must interleave them deterministically.
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from pynet.errors import PoolExhausted
from pynet.ipam import Ipam
from pynet.store.etcd import EtcdStore
from tests.support.ipam_worker import read_answers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WAIT = 60.0  # s: upper bound of any wait for a worker


@pytest.fixture(params=["etcd1", "etcd3"])
def cluster(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def space():
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def open_ipam(cluster):
    """``open_ipam()``: an IPAM on a new EtcdStore (a new process's view: an empty cache)."""
    made = []

    def make():
        store = EtcdStore(cluster.endpoints, timeout=5.0)
        made.append(store)
        return Ipam(store, default_pools=[], host_routes=lambda: []), store

    yield make
    if made:
        ipam = Ipam(made[0], default_pools=[], host_routes=lambda: [])
        for p in ipam.list_pools():
            ipam.release_pool(p["id"])
    for s in made:
        s.close()


def _bare(cidr: str) -> str:
    return cidr.split("/")[0]


def _worker(cluster, pool_id, name, count, *extra):
    return subprocess.Popen([sys.executable, "-m", "tests.support.ipam_worker", cluster.url(), pool_id,
                             name, str(count), *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _result(p) -> dict:
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_four_processes_in_parallel_get_no_duplicate(open_ipam, cluster, space):
    ipam, store = open_ipam()
    pid, _, _ = ipam.request_pool(space, "10.70.0.0/22")
    per_worker = 40
    start_at = time.time() + 2.0  # all four past their imports: they really contend
    procs = [_worker(cluster, pid, f"p{i}", per_worker, "--release-every", "7",
                     "--start-at", str(start_at)) for i in range(4)]
    results = [_result(p) for p in procs]
    kept = [a for r in results for a in r["kept"]]
    released = [a for r in results for a in r["released"]]
    assert len(kept) + len(released) == 4 * per_worker
    assert len(kept) == len(set(kept)), "an address was handed out twice"
    assert set(ipam.allocated(pid)) == set(kept)  # every address told is set; nothing else is
    info = ipam.get_pool(pid)
    assert info["used"] == len(kept) and info["free"] == info["size"] - len(kept)
    assert ipam.verify(pid) == []
    holders = ipam.holders(pid)["addresses"]
    assert set(holders) == set(kept)  # each with the holder record written in its commit


def test_a_warm_allocation_costs_one_round_trip(open_ipam, space):
    ipam, store = open_ipam()
    pid, _, _ = ipam.request_pool(space, "10.71.0.0/16")
    assert ipam.request_address(pid, options={"RequestAddressType": "com.docker.network.gateway"}) \
        == "10.71.0.1/16"
    got = [ipam.request_address(pid, holder="warm-up")]  # cold: fetches pool, block, cursor
    for i in range(20):
        before = store.round_trips
        got.append(ipam.request_address(pid, holder=f"c{i}"))
        assert store.round_trips - before == 1, f"allocation {i}: {store.round_trips - before} round trips"
    # the answers are Docker's: next after the last one handed out
    assert [_bare(a) for a in got] == [f"10.71.0.{i}" for i in range(2, 23)]
    # across a block boundary too (4096 addresses per block): the next block is absent, i.e.
    # known free once read, and the summary of the filled block is only written when one fills
    before = store.round_trips
    ipam.request_address(pid, "10.71.31.200")
    assert store.round_trips - before == 2  # a block never seen: one read, then the commit


def test_a_conflict_costs_the_failed_commit_and_the_retry_only(open_ipam, space):
    a, sa = open_ipam()
    b, sb = open_ipam()
    pid, _, _ = a.request_pool(space, "10.72.0.0/24")
    a.request_address(pid)
    b.request_address(pid)  # both warm now: 10.72.0.1 (a), .2 (b)
    for i in range(10):
        x = _bare(a.request_address(pid, holder=f"a{i}"))
        before = sb.round_trips
        y = _bare(b.request_address(pid, holder=f"b{i}"))
        # a changed the block b allocates from: b's commit fails, its failure branch brings the
        # block and the cursor, and the retry commits -- two requests, no read of its own
        assert sb.round_trips - before == 2
        assert int(ipaddress.ip_address(y)) == int(ipaddress.ip_address(x)) + 1  # a's cursor, not b's stale one
    held = list(a.allocated(pid))
    assert len(held) == 22 and a.get_pool(pid)["used"] == 22
    assert a.verify(pid) == []


def test_release_and_reallocate_honour_the_cursor_across_processes(open_ipam, cluster, space):
    a, sa = open_ipam()
    pid, _, _ = a.request_pool(space, "10.73.0.0/24")
    first = [_bare(a.request_address(pid, holder=f"a{i}")) for i in range(3)]
    assert first == ["10.73.0.1", "10.73.0.2", "10.73.0.3"]
    a.release_address(pid, "10.73.0.2", "a1")
    # another process: continues after the last address handed out, not at the released one
    r = _result(_worker(cluster, pid, "other", 1))
    assert r["kept"] == ["10.73.0.4"]
    # the warm first process: its cached block is stale (the other allocated there), so its
    # commit fails and the failure branch brings the current cursor along
    assert _bare(a.request_address(pid, holder="a3")) == "10.73.0.5"
    a.release_address(pid, "10.73.0.4", "w/other/0")
    assert _result(_worker(cluster, pid, "third", 1))["kept"] == ["10.73.0.6"]
    # wraps at the end, then takes the lowest free after the cursor: the released ones
    n = 0
    while True:
        try:
            last = _bare(a.request_address(pid, holder=f"fill{n}"))
        except PoolExhausted:
            break
        n += 1
        assert n < 300
    assert last == "10.73.0.4" and n == 254 - 4  # .1 .3 .5 .6 held
    assert a.verify(pid) == [] and a.get_pool(pid)["free"] == 0


def test_sigkill_of_an_allocator_hands_nothing_out_twice(open_ipam, cluster, space, tmp_path):
    ipam, store = open_ipam()
    pid, _, _ = ipam.request_pool(space, "10.74.0.0/20")
    held: set[str] = set()  # what this test and the killed allocators were told
    for round_ in range(3):
        before = set(ipam.allocated(pid))
        out = tmp_path / f"answers-{round_}"
        child = _worker(cluster, pid, f"k{round_}", 5000, "--release-every", "5", "--out", str(out))
        deadline = time.monotonic() + WAIT
        # kill it at different points of its loop: after 10, 25, 40 answers
        while out.read_text().count("\n") < 10 + 15 * round_ if out.exists() else True:
            assert child.poll() is None, child.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "the worker made no progress"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=WAIT)
        mine, in_doubt = read_answers(out.read_text())
        mine -= in_doubt
        allocated = set(ipam.allocated(pid))
        assert mine <= allocated, "an address the allocator was told is not marked allocated"
        held |= mine
        # what it got but never reported (killed between commit and write) stays allocated
        # until its holder releases it: nobody else can be handed it
        assert len(allocated - before - mine - in_doubt) <= 1
        assert ipam.verify(pid) == []
        after = {_bare(ipam.request_address(pid, holder=f"after{round_}/{i}")) for i in range(20)}
        assert not after & allocated, "an address handed out twice"
        held |= after
    assert held <= set(ipam.allocated(pid))


def test_a_stale_cache_never_decides_an_error(open_ipam, space):
    """An answer the cache gave that ends in an error (no such pool, pool full) is checked
    against the store before it is believed: the check fails, the cache refreshes, and the
    allocation succeeds."""
    a, sa = open_ipam()
    b, sb = open_ipam()
    pid = f"{space}/10.75.0.0/30"
    with pytest.raises(Exception, match="not found"):
        b.request_address(pid)  # b has now seen the pool absent
    with pytest.raises(Exception, match="not found"):
        b.request_address(pid)  # ...and cached it so: the check confirms it
    assert a.request_pool(space, "10.75.0.0/30")[0] == pid
    assert _bare(b.request_address(pid, holder="b0")) == "10.75.0.1"  # not PoolNotFound
    assert _bare(b.request_address(pid, holder="b1")) == "10.75.0.2"
    with pytest.raises(PoolExhausted):
        b.request_address(pid)
    a.release_address(pid, "10.75.0.1", "b0")  # another process frees one
    assert _bare(b.request_address(pid, holder="b2")) == "10.75.0.1"  # not PoolExhausted
    with pytest.raises(PoolExhausted):
        b.request_address(pid)
    assert a.verify(pid) == [] and a.get_pool(pid)["used"] == 2
