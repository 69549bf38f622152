"""Cluster-wide block IPAM (pynet.cluster.ipam) on a real three-member etcd (loopback, keys under
a per-run namespace): three hosts allocating in parallel get distinct addresses, each from blocks
it claimed, with no block shared while free blocks remain; a host borrows only when none is left;
handles make allocation and release idempotent."""
from __future__ import annotations

import ipaddress
import secrets
import shutil
import threading

import pytest

from pynet import errors
from pynet.cluster import Cluster
from pynet.cluster.ipam import BlockIpam
from pynet.store.etcd import EtcdStore
from tests.support.etcd_cluster import ETCD, EtcdCluster

pytestmark = pytest.mark.skipif(not shutil.which(ETCD) and not __import__("os").path.exists(ETCD),
                                reason="etcd (Debian etcd-server) not installed")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    with EtcdCluster(size=3, base_dir=str(tmp_path_factory.mktemp("etcd")), name="pi") as cluster:
        yield cluster


@pytest.fixture
def hosts(etcd):
    ns = "ipam" + secrets.token_hex(3)
    made = []

    def make(name: str) -> Cluster:
        c = Cluster(lambda: EtcdStore(etcd.endpoints), host=name, address="127.0.0.1", namespace=ns)
        made.append(c)
        return c
    yield make
    if made:
        made[0].store.delete_prefix(made[0].root)
        assert made[0].store.list(made[0].root) == []
    for c in made:
        c.close()


def test_parallel_hosts_get_distinct_addresses_from_their_own_blocks(hosts):
    pool = "10.90.0.0/24"                    # four /26 blocks
    ipams = [BlockIpam(hosts(f"h{i}"), pool, reserved=["10.90.0.1"]) for i in range(3)]
    got: dict = {i: [] for i in range(3)}
    errs: list = []

    def run(i):
        try:
            for n in range(40):
                got[i].append(ipams[i].allocate(f"pod-{i}-{n}"))
        except Exception as e:  # noqa: BLE001
            errs.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errs == []
    every = [ip for i in range(3) for ip in got[i]]
    assert len(every) == len(set(every)) == 120
    assert "10.90.0.0" not in every and "10.90.0.1" not in every and "10.90.0.255" not in every
    blocks = ipams[0].blocks()
    # 40 addresses need one /26 each; the fourth block is claimed by whoever ran out first
    for i in range(3):
        owned = {b for b, h in blocks.items() if h == f"h{i}"}
        assert owned, blocks
        inside = [ip for ip in got[i] if any(ipaddress.ip_address(ip) in ipaddress.ip_network(b) for b in owned)]
        assert len(inside) == 40, (i, blocks, got[i])      # nothing borrowed: free blocks remained
    # idempotent: a retried allocation answers the same address; release twice is a no-op
    assert ipams[0].allocate("pod-0-0") == got[0][0]
    assert ipams[0].release("pod-0-0") == got[0][0]
    assert ipams[0].release("pod-0-0") is None


def test_a_host_borrows_only_when_no_block_is_left(hosts):
    pool = "10.91.0.0/27"                    # two /28 blocks
    a = BlockIpam(hosts("ha"), pool, block_prefix=28)
    b = BlockIpam(hosts("hb"), pool, block_prefix=28)
    first = [a.allocate(f"a{n}") for n in range(15)]          # block 0 (minus the network address)
    assert set(a.blocks().values()) == {"ha"}
    second = [b.allocate(f"b{n}") for n in range(15)]          # b claims block 1
    assert a.blocks() == {"10.91.0.0/28": "ha", "10.91.0.16/28": "hb"}
    assert "10.91.0.31" not in second                          # the pool's broadcast address
    # a is full; no block is unclaimed: it borrows from b's block
    a.release("a0")
    assert a.allocate("a-again") == first[0]                   # its own block first
    b.release("b3")
    borrowed = a.allocate("a-borrow")
    assert borrowed == second[3]
    with pytest.raises(errors.PoolExhausted):
        a.allocate("a-none")
    assert len(set(first[1:] + second + [borrowed, first[0]])) == 30
