"""The cluster block IPAM (pynet/ipam/blocks.py).

Unit cases run on the memory store and SQLite (``local`` fixture); the acceptance cases on a real
three-member etcd (the session cluster of tests/store/conftest.py), with several hosts as several
``tests.support.block_worker`` processes (each with its own record cache) and SIGKILL.  Every test
works under a key prefix of its own, deleted at the end even when the test failed.  Round trips
are counted (``EtcdStore.round_trips``), never timed.
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

from pynet.errors import Exhausted, InUse, InvalidParameter, PoolExhausted, PoolNotFound
from pynet.ipam.blocks import BlockIpam, PoolMismatch
from pynet.store.etcd import EtcdStore
from pynet.store.keys import cluster_prefix
from pynet.store.memory import MemoryStore
from pynet.store.sqlite import SqliteStore
from tests.support.block_worker import read_log

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WAIT = 60.0  # s: upper bound of any wait for a worker


@pytest.fixture
def prefix():
    return cluster_prefix("test", "blocks-" + uuid.uuid4().hex[:10])


@pytest.fixture(params=["memory", "sqlite"])
def local(request, tmp_path, prefix):
    store = MemoryStore() if request.param == "memory" else SqliteStore(str(tmp_path / "pynet.db"))
    yield store
    store.close()


def _bare(cidr: str) -> str:
    return cidr.split("/")[0]


def _keys(store, prefix) -> list[str]:
    return [r.key for r in store.list(prefix)]


# --- unit: memory and SQLite ------------------------------------------------------------------------
def test_allocate_skips_reserved_and_is_idempotent_per_handle(local, prefix):
    a = BlockIpam(local, "host-a", prefix=prefix)
    info = a.create_pool("net1", "10.90.0.0/24")
    assert info["block_prefixlen"] == 26 and info["gateway"] == "10.90.0.1"
    assert info["reserved"] == ["10.90.0.0", "10.90.0.1", "10.90.0.255"]
    assert a.allocate("net1", "c1") == "10.90.0.2/24"  # network and gateway never handed out
    assert a.allocate("net1", "c1") == "10.90.0.2/24"  # a retried ADD: the same address
    assert a.allocate("net1", "c2") == "10.90.0.3/24"
    assert a.lookup("net1", "c1") == "10.90.0.2/24" and a.lookup("net1", "nope") is None
    assert a.release("net1", "c1") is True
    assert a.release("net1", "c1") is False  # twice is fine
    assert a.lookup("net1", "c1") is None
    assert a.allocate("net1", "c3") == "10.90.0.2/24"  # lowest free in the block
    assert a.verify("net1") == []
    assert [b["cidr"] for b in a.blocks("net1")] == ["10.90.0.0/26"]
    pool = a.get_pool("net1")
    assert pool["used"] == 2 and pool["free"] == 256 - 3 - 2 and pool["hosts"] == {"host-a": 1}


def test_hosts_own_blocks_then_claim_then_borrow_then_exhausted(local, prefix):
    """A /28 in /30 blocks (4 addresses each; .0, .1 and .15 reserved): the order is the spec."""
    a = BlockIpam(local, "host-a", prefix=prefix)
    b = BlockIpam(local, "host-b", prefix=prefix)
    a.create_pool("p", "10.91.0.0/28", block_prefixlen=30)
    assert _bare(a.allocate("p", "a0")) == "10.91.0.2"  # a claims block 0 (.0 .1 reserved)
    assert _bare(b.allocate("p", "b0")) == "10.91.0.4"  # b claims block 1, its own
    got = []
    with pytest.raises(PoolExhausted) as err:
        for i in range(1, 20):
            got.append(_bare(a.allocate("p", f"a{i}")))
    assert isinstance(err.value, Exhausted) and err.value.cni_code == 11
    # own block first, then the free blocks 2 and 3, and only then b's block
    assert got == ["10.91.0.3", "10.91.0.8", "10.91.0.9", "10.91.0.10", "10.91.0.11",
                   "10.91.0.12", "10.91.0.13", "10.91.0.14", "10.91.0.5", "10.91.0.6", "10.91.0.7"]
    assert {x["cidr"]: x["host"] for x in a.blocks("p")} == {
        "10.91.0.0/30": "host-a", "10.91.0.4/30": "host-b", "10.91.0.8/30": "host-a",
        "10.91.0.12/30": "host-a"}  # borrowing keeps the affinity
    with pytest.raises(PoolExhausted):
        b.allocate("p", "b1")
    assert a.handles("p")["a9"] == {"cidr": "10.91.0.5/28", "block": "10.91.0.4-30", "host": "host-a"}
    # b releases one of the borrowed addresses' neighbours: b gets it back from its own block
    assert b.release("p", "b0")
    assert _bare(b.allocate("p", "b2")) == "10.91.0.4"
    assert a.verify("p") == []


def test_ipv6_pool_default_blocks(local, prefix):
    a = BlockIpam(local, "host-a", prefix=prefix)
    b = BlockIpam(local, "host-b", prefix=prefix)
    info = a.create_pool("v6", "fd00:91::/64")
    assert info["block_prefixlen"] == 122 and info["reserved"] == ["fd00:91::", "fd00:91::1"]
    assert a.allocate("v6", "x") == "fd00:91::2/64"
    assert b.allocate("v6", "y") == "fd00:91::40/64"  # the next /122
    assert [x["cidr"] for x in a.blocks("v6")] == ["fd00:91::/122", "fd00:91::40/122"]
    assert a.get_pool("v6")["blocks"] == 1 << 58
    assert a.release("v6", "y") and a.verify("v6") == []


def test_extra_reserved_addresses_and_no_gateway(local, prefix):
    a = BlockIpam(local, "h", prefix=prefix)
    a.create_pool("r", "10.92.0.0/29", block_prefixlen=29, gateway=False, reserved=["10.92.0.3"])
    got = []
    with pytest.raises(PoolExhausted):
        for i in range(10):
            got.append(_bare(a.allocate("r", f"h{i}")))
    assert got == ["10.92.0.1", "10.92.0.2", "10.92.0.4", "10.92.0.5", "10.92.0.6"]
    assert a.verify("r") == []


def test_create_pool_joins_equal_settings_and_refuses_others(local, prefix):
    a = BlockIpam(local, "host-a", prefix=prefix)
    b = BlockIpam(local, "host-b", prefix=prefix)
    a.create_pool("n", "10.93.0.0/24", block_prefixlen=28)
    assert b.create_pool("n", "10.93.0.0/24", block_prefixlen=28)["cidr"] == "10.93.0.0/24"
    with pytest.raises(PoolMismatch, match="block_prefixlen 28 .asked 27."):
        b.create_pool("n", "10.93.0.0/24", block_prefixlen=27)
    with pytest.raises(PoolMismatch, match="cidr"):
        b.create_pool("n", "10.94.0.0/24", block_prefixlen=28)


@pytest.mark.parametrize("call, match", [
    (lambda i: i.create_pool("a/b", "10.95.0.0/24"), "must not contain '/'"),
    (lambda i: i.create_pool("ok", "10.95.0.0"), "CIDR"),
    (lambda i: i.create_pool("ok", "10.95.0.0/24", block_prefixlen=23), "larger than pool"),
    (lambda i: i.create_pool("ok", "10.95.0.0/24", block_prefixlen=31), "block prefix length"),
    (lambda i: i.create_pool("ok", "10.95.0.0/8", block_prefixlen=8), "block prefix length"),
    (lambda i: i.create_pool("ok", "10.95.0.0/24", block_prefixlen="26"), "integer"),
    (lambda i: i.create_pool("ok", "10.95.0.0/24", gateway="10.96.0.1"), "outside pool"),
    (lambda i: i.create_pool("ok", "10.95.0.0/24", reserved=["fd00::1"]), "outside pool"),
    (lambda i: i.create_pool("ok", "10.95.0.0/24", reserved="10.95.0.7"), "list"),
    (lambda i: i.allocate("ok", ""), "1..255"),
    (lambda i: i.allocate("ok", "a b"), "printable"),
    (lambda i: i.release("..", "h"), "'..'"),
    (lambda i: i.lookup("ok", 7.5), "must be a string"),
])
def test_bad_input_is_refused_and_writes_nothing(local, prefix, call, match):
    ipam = BlockIpam(local, "h", prefix=prefix)
    with pytest.raises(InvalidParameter, match=match):
        call(ipam)
    assert _keys(local, prefix) == []


@pytest.mark.parametrize("kw", [{"host": "a/b"}, {"host": ""}, {"prefix": "ipam/"},
                                {"prefix": "pynet/v2/cluster/x"}, {"retries": -1}])
def test_bad_construction_is_refused(local, kw):
    args = {"host": "h", **kw}
    with pytest.raises(InvalidParameter):
        BlockIpam(local, args.pop("host"), **args)


def test_unknown_pool(local, prefix):
    a = BlockIpam(local, "h", prefix=prefix)
    with pytest.raises(PoolNotFound):
        a.allocate("missing", "x")
    assert a.release("missing", "x") is False
    assert a.delete_pool("missing") is False


def test_empty_blocks_are_kept_until_given_back(local, prefix):
    a = BlockIpam(local, "host-a", prefix=prefix)
    b = BlockIpam(local, "host-b", prefix=prefix)
    a.create_pool("e", "10.97.0.0/28", block_prefixlen=29)  # two blocks of 8
    a.allocate("e", "a0")
    a.release("e", "a0")
    assert [x["host"] for x in a.blocks("e")] == ["host-a"]  # empty but still a's
    assert _bare(b.allocate("e", "b0")) == "10.97.0.8"
    assert b.release_empty_blocks("e") == []  # b's block holds b0
    b.allocate("e", "b-borrower-fill")
    # a's block is empty: given back, b may claim it (b0 stays in b's block)
    assert a.release_empty_blocks("e") == ["10.97.0.0/29"]
    assert [x["cidr"] for x in a.blocks("e")] == ["10.97.0.8/29"]
    assert _bare(a.allocate("e", "a1")) == "10.97.0.2"  # a claims it again
    # a block holding a borrowed allocation is not empty
    a2 = BlockIpam(local, "host-c", prefix=prefix)
    for i in range(20):
        try:
            a2.allocate("e", f"c{i}")
        except PoolExhausted:
            break
    assert a.release("e", "a1")
    assert a.release_empty_blocks("e") == []  # host-c's borrowed addresses are in it
    assert a.verify("e") == []


def test_delete_pool_refuses_while_addresses_are_held(local, prefix):
    a = BlockIpam(local, "h", prefix=prefix)
    a.create_pool("d", "10.98.0.0/24")
    a.allocate("d", "x")
    with pytest.raises(InUse):
        a.delete_pool("d")
    a.release("d", "x")
    assert a.delete_pool("d") is True
    assert _keys(local, prefix) == []
    with pytest.raises(PoolNotFound):
        a.allocate("d", "y")


def test_verify_finds_a_bit_without_handle_and_a_handle_without_bit(local, prefix):
    a = BlockIpam(local, "h", prefix=prefix)
    a.create_pool("v", "10.99.0.0/24")
    a.allocate("v", "x")
    a.allocate("v", "y")
    bkey = prefix + "v/blocks/10.99.0.0-26"
    rec = local.get(bkey)
    local.put(bkey, {**rec.value, "bits": format(int(rec.value["bits"], 16) & ~(1 << 3) | 1 << 9, "x")})
    problems = BlockIpam(local, "h", prefix=prefix).verify("v")
    assert "handle y holds 10.99.0.3, whose bit is free" in problems
    assert "address 10.99.0.9 is allocated but no handle holds it" in problems


# --- acceptance: a real three-member etcd ---------------------------------------------------------------
@pytest.fixture
def etcd(etcd3, prefix):
    """(cluster, ``open()`` -> a new EtcdStore: a new process's view, an empty cache)."""
    made = []

    def open_store():
        s = EtcdStore(etcd3.endpoints, timeout=5.0)
        made.append(s)
        return s

    yield etcd3, open_store
    try:
        cleanup = EtcdStore(etcd3.endpoints, timeout=5.0)
        cleanup.delete_prefix(prefix)
        assert cleanup.list(prefix) == []
        cleanup.close()
    finally:
        for s in made:
            s.close()


def _worker(cluster, prefix, pool, host, count, *extra):
    return subprocess.Popen([sys.executable, "-m", "tests.support.block_worker", cluster.url(), prefix,
                             pool, host, str(count), *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _result(p) -> dict:
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _wait_lines(path, pred, procs, what):
    deadline = time.monotonic() + WAIT
    while not (path.exists() and pred(path.read_text())):
        for p in procs:
            assert p.poll() is None, p.stderr.read()[-2000:]
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _results_after(procs, logs, ready, then) -> list[dict]:
    """Wait until every worker's log satisfies ``ready``, call ``then()``, return the workers'
    results; a worker still running when this fails is killed."""
    try:
        for log in logs:
            _wait_lines(log, ready, procs, "a worker made no progress")
        then()
        return [_result(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_four_hosts_in_parallel_own_blocks_no_duplicate_borrow_last(etcd, prefix, tmp_path):
    cluster, open_store = etcd
    store = open_store()
    ipam = BlockIpam(store, "test", prefix=prefix)
    ipam.create_pool("p", "10.100.0.0/23", block_prefixlen=28)  # 32 blocks, 509 addresses
    go = tmp_path / "go"
    logs = [tmp_path / f"h{i}.log" for i in range(4)]
    procs = [_worker(cluster, prefix, "p", f"h{i}", 0, "--pause-after", "1", "--go", str(go),
                     "--out", str(logs[i])) for i in range(4)]
    # every host has its first address (hence a block of its own) before the race begins
    results = _results_after(procs, logs, lambda text: "paused" in text, lambda: go.write_text(""))
    addrs = [a for r in results for a in r["kept"].values()]
    assert len(addrs) == 512 - 3, "every address once: the pool is used up"
    assert len(set(addrs)) == len(addrs), "an address was handed out twice"
    assert all(r["exhausted"] and r["error"] == "PoolExhausted" for r in results)
    with pytest.raises(PoolExhausted):
        ipam.allocate("p", "one-more")
    blocks = store.list(prefix + "p/blocks/")
    owners = {r.key.rsplit("/", 1)[1]: r.value["host"] for r in blocks}
    assert len(owners) == 32  # each block claimed once, by one host
    assert {f"h{i}" for i in range(4)} <= set(owners.values()), "a host has no block of its own"
    handles = store.list(prefix + "p/handles/")
    assert {r.value["cidr"].split("/")[0] for r in handles} == set(addrs)
    borrowed = [r for r in handles if owners[r.value["block"]] != r.value["host"]]
    # a borrow commits only after a listing that showed every block claimed
    if borrowed:
        assert max(r.create_revision for r in blocks) < min(r.create_revision for r in borrowed)
    assert ipam.verify("p") == []
    pool = ipam.get_pool("p")
    assert pool["used"] == 509 and pool["free"] == 0 and sum(pool["hosts"].values()) == 32


def test_a_warm_allocation_and_release_cost_one_round_trip(etcd, prefix):
    cluster, open_store = etcd
    store = open_store()
    ipam = BlockIpam(store, "host-a", prefix=prefix)
    ipam.create_pool("p", "10.101.0.0/16")
    assert ipam.allocate("p", "warm") == "10.101.0.2/16"  # cold: pool read, listing, claim
    for i in range(20):
        before = store.round_trips
        assert ipam.allocate("p", f"c{i}") == f"10.101.0.{3 + i}/16"
        assert store.round_trips - before == 1, f"allocation {i}: {store.round_trips - before} round trips"
    for i in range(5):
        before = store.round_trips
        assert ipam.release("p", f"c{i}")
        assert store.round_trips - before == 1, f"release {i}: {store.round_trips - before} round trips"
    # a second host in its own block: neither disturbs the other's cache
    other = open_store()
    b = BlockIpam(other, "host-b", prefix=prefix)
    assert b.allocate("p", "b0") == "10.101.0.64/16"
    before, before_b = store.round_trips, other.round_trips
    assert ipam.allocate("p", "c-after") == "10.101.0.3/16"
    assert b.allocate("p", "b1") == "10.101.0.65/16"
    assert store.round_trips - before == 1 and other.round_trips - before_b == 1
    assert ipam.verify("p") == []


def test_a_retry_of_a_handle_another_process_allocated_returns_its_address(etcd, prefix):
    cluster, open_store = etcd
    a = BlockIpam(open_store(), "host-a", prefix=prefix)
    a.create_pool("p", "10.102.0.0/24")
    first = a.allocate("p", "pod-1")
    # a new process of the same host (a CNI binary retrying the ADD): presumes the handle new,
    # its commit fails on it, the failure branch brings it
    again = BlockIpam(open_store(), "host-a", prefix=prefix)
    assert again.allocate("p", "pod-1") == first
    assert BlockIpam(open_store(), "host-b", prefix=prefix).allocate("p", "pod-1") == first
    assert a.verify("p") == [] and len(a.handles("p")) == 1


def test_sigkill_mid_allocation_leaves_the_store_consistent(etcd, prefix, tmp_path):
    cluster, open_store = etcd
    ipam = BlockIpam(open_store(), "checker", prefix=prefix)
    ipam.create_pool("p", "10.103.0.0/20")
    for round_ in range(3):
        out = tmp_path / f"answers-{round_}"
        child = _worker(cluster, prefix, "p", f"k{round_}", 5000, "--release-every", "5", "--out", str(out))
        try:
            # kill it at different points of its loop: after 10, 25, 40 answers
            _wait_lines(out, lambda text: text.count("\n") >= 10 + 15 * round_, [child],
                        "the worker made no progress")
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.communicate(timeout=WAIT)
        told, in_doubt = read_log(out.read_text())
        assert ipam.verify("p") == [], "killed mid-allocation: the store is inconsistent"
        handles = ipam.handles("p")
        for h, addr in told.items():
            if h in in_doubt:
                continue
            assert _bare(handles[h]["cidr"]) == addr  # what it was told is what the store holds
            # the retry of its ADD (a new process, same host) gets the same address
            assert _bare(BlockIpam(open_store(), f"k{round_}", prefix=prefix).allocate("p", h)) == addr
        # the allocation in flight at the kill: committed or not, its retry is consistent
        n = max(int(h.rsplit("-", 1)[1]) for h in told) + 1
        pending = f"k{round_}-{n}"
        stored = handles.get(pending)
        retried = ipam.allocate("p", pending)
        assert stored is None or stored["cidr"] == retried
        assert ipam.release("p", pending) is True and ipam.release("p", pending) is False
        assert ipam.verify("p") == []
    allocated = list(ipam.allocated("p"))
    assert len(allocated) == len(set(allocated))


def test_a_fresh_process_of_a_host_reuses_its_blocks(etcd, prefix):
    """A CNI binary (a new process, an empty cache) allocates in the blocks its host holds."""
    cluster, open_store = etcd
    a = BlockIpam(open_store(), "host-a", prefix=prefix)
    a.create_pool("p", "10.104.0.0/24")
    assert a.allocate("p", "a0") == "10.104.0.2/24"  # a: block .0/26 (.0 and .1 reserved)
    assert BlockIpam(open_store(), "host-b", prefix=prefix).allocate("p", "b0") == "10.104.0.64/24"
    store = open_store()
    fresh = BlockIpam(store, "host-a", prefix=prefix)
    assert fresh.allocate("p", "a1") == "10.104.0.3/24"
    # the pool and its blocks in one snapshot (2 requests), the block (1), the commit (1)
    assert store.round_trips == 4
    assert [(x["cidr"], x["host"]) for x in a.blocks("p")] == [("10.104.0.0/26", "host-a"),
                                                               ("10.104.0.64/26", "host-b")]


def test_threads_of_one_daemon_share_its_blocks(etcd, prefix):
    import threading

    cluster, open_store = etcd
    ipam = BlockIpam(open_store(), "host-a", prefix=prefix)
    ipam.create_pool("p", "10.105.0.0/24", block_prefixlen=28)
    got: dict[str, str] = {}
    errors = []

    def run(n):
        try:
            for i in range(25):
                got[f"t{n}-{i}"] = ipam.allocate("p", f"t{n}-{i}")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(WAIT)
    assert not errors and len(got) == 100
    assert len(set(got.values())) == 100, "an address was handed out twice"
    assert {x["host"] for x in ipam.blocks("p")} == {"host-a"}
    assert ipam.verify("p") == []


def test_an_explicit_address_anywhere_in_the_pool(local, prefix):
    from pynet.errors import AddressInUse, InvalidAddress

    a = BlockIpam(local, "host-a", prefix=prefix)
    b = BlockIpam(local, "host-b", prefix=prefix)
    a.create_pool("x", "10.106.0.0/24")
    assert a.allocate("x", "c0") == "10.106.0.2/24"  # a holds .0/26
    # in a block nobody holds: b claims it
    assert b.allocate("x", "static", "10.106.0.200") == "10.106.0.200/24"
    assert b.allocate("x", "static", "10.106.0.200/24") == "10.106.0.200/24"  # a retry
    assert {x["cidr"]: x["host"] for x in a.blocks("x")}["10.106.0.192/26"] == "host-b"
    # b's own block now (only the pool's network address is reserved, not each block's)
    assert _bare(b.allocate("x", "b-next")) == "10.106.0.192"
    # in another host's block: taken there (as a borrow would)
    assert a.allocate("x", "static2", "10.106.0.201") == "10.106.0.201/24"
    with pytest.raises(AddressInUse):
        a.allocate("x", "other", "10.106.0.200")
    with pytest.raises(AddressInUse):
        b.allocate("x", "static", "10.106.0.202")  # the handle holds .200
    for bad in ("10.106.0.0", "10.106.0.1", "10.106.0.255", "10.107.0.5", "10.106.0.5/16", "fd00::1",
                "nonsense"):
        with pytest.raises(InvalidAddress):
            a.allocate("x", "bad", bad)
    assert a.lookup("x", "bad") is None
    assert a.release("x", "static") and _bare(a.allocate("x", "again", "10.106.0.200")) == "10.106.0.200"
    assert a.verify("x") == []


def test_an_etcd_member_killed_under_three_hosts(disposable_etcd, prefix, tmp_path):
    """One member of three SIGKILLed while three hosts allocate and release: what failed on the
    way is transient, its retry with the same handle is safe, and nothing is handed out twice."""
    cluster = disposable_etcd(3)
    store = EtcdStore(cluster.endpoints, timeout=5.0)
    try:
        ipam = BlockIpam(store, "checker", prefix=prefix)
        ipam.create_pool("p", "10.107.0.0/20")
        logs = [tmp_path / f"h{i}.log" for i in range(3)]
        procs = [_worker(cluster, prefix, "p", f"h{i}", 200, "--release-every", "4", "--retry-transient",
                         "200", "--out", str(logs[i])) for i in range(3)]
        # every host well under way: member 0 (the first each asks) has their connections
        results = _results_after(procs, logs, lambda text: text.count("\n") >= 30, lambda: cluster.kill(0))
        kept = {h: a for r in results for h, a in r["kept"].items()}
        assert len(kept) == 3 * 150  # 200 each, every 4th released again
        assert len(set(kept.values())) == len(kept), "an address was handed out twice"
        assert {h: _bare(v["cidr"]) for h, v in ipam.handles("p").items()} == kept
        assert ipam.verify("p") == []
    finally:
        store.close()


def test_four_host_processes_on_one_sqlite_file(tmp_path, prefix):
    """The same verbs on the embedded store: four processes (each its own connection and cache)."""
    path = str(tmp_path / "pynet.db")
    store = SqliteStore(path)
    try:
        ipam = BlockIpam(store, "test", prefix=prefix)
        ipam.create_pool("p", "10.108.0.0/24", block_prefixlen=28)
        start = str(time.time() + 2.0)
        procs = [subprocess.Popen([sys.executable, "-m", "tests.support.block_worker", path, prefix, "p",
                                   f"h{i}", "0", "--start-at", start], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(4)]
        results = [_result(p) for p in procs]
        addrs = [a for r in results for a in r["kept"].values()]
        assert len(addrs) == len(set(addrs)) == 256 - 3
        assert all(r["error"] == "PoolExhausted" for r in results)
        assert ipam.verify("p") == [] and ipam.get_pool("p")["free"] == 0
    finally:
        store.close()
