"""The overlay's cluster-wide addresses: OverlayDriver.pick_address on the block IPAM
(pynet.ipam.blocks) through each host's Cluster, on a real three-member etcd (loopback, keys under
a per-run cluster namespace).  Three hosts picking in parallel get distinct addresses, each from
blocks it claimed, with no block shared while free blocks remain; a host borrows only when none is
left; the gateway, network and broadcast addresses are never handed out; the handle makes a pick
and its release idempotent; the pool lives under the cluster root and goes with the network.
The block IPAM's own cases (SIGKILL, round trips, four processes) are tests/store/test_ipam_blocks.py."""
from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import threading

import pytest

from pynet import errors
from pynet.cluster import Cluster
from pynet.cnm.model import IPData, Network
from pynet.drivers.overlay import OverlayDriver, pool_name
from pynet.netlink.fake import FakeKernel, FakeNetlink
from pynet.store.etcd import EtcdStore
from pynet.sysctl import FakeSysctl
from tests.support.etcd_cluster import ETCD, EtcdCluster

pytestmark = pytest.mark.skipif(not shutil.which(ETCD) and not os.path.exists(ETCD),
                                reason="etcd (Debian etcd-server) not installed")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    with EtcdCluster(size=3, base_dir=str(tmp_path_factory.mktemp("etcd")), name="pi") as cluster:
        yield cluster


@pytest.fixture
def hosts(etcd):
    ns = "ipam" + secrets.token_hex(3)
    made = []

    def make(name: str) -> OverlayDriver:
        c = Cluster(lambda: EtcdStore(etcd.endpoints), host=name, address="127.0.0.1", namespace=ns)
        made.append(c)
        return OverlayDriver(FakeNetlink(FakeKernel()), FakeSysctl(), "t", cluster=c)
    yield make
    if made:
        made[0].store.delete_prefix(made[0].root)
        assert made[0].store.list(made[0].root) == []
    for c in made:
        c.close()


def _net(subnet: str, gateway: str) -> Network:
    plen = subnet.split("/")[1]
    return Network(id="c" * 64, driver="overlay", name="ov",
                   ipv4=[IPData(pool=subnet, gateway=f"{gateway}/{plen}")])


def test_parallel_hosts_get_distinct_addresses_from_their_own_blocks(hosts):
    net = _net("10.90.0.0/24", "10.90.0.1")                   # four /26 blocks
    drivers = [hosts(f"h{i}") for i in range(3)]
    got: dict = {i: [] for i in range(3)}
    errs: list = []

    def run(i):
        try:
            for n in range(40):
                got[i].append(drivers[i].pick_address(net, f"ep-{i}-{n}", 4))
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
    assert not {"10.90.0.0", "10.90.0.1", "10.90.0.255"} & set(every)
    ipam = drivers[0]._blocks()
    pool = pool_name("10.90.0.0/24")
    # the pool is under the cluster root (the run's namespace), not the default prefix
    assert ipam.prefix == drivers[0].cluster.prefix("ipam")
    blocks = {b["cidr"]: b["host"] for b in ipam.blocks(pool)}
    # 40 addresses need one /26 each; the fourth block is claimed by whoever ran out first
    for i in range(3):
        owned = {b for b, h in blocks.items() if h == f"h{i}"}
        assert owned, blocks
        inside = [ip for ip in got[i] if any(ipaddress.ip_address(ip) in ipaddress.ip_network(b) for b in owned)]
        assert len(inside) == 40, (i, blocks, got[i])      # nothing borrowed: free blocks remained
    assert ipam.verify(pool) == []
    # idempotent: a retried pick answers the same address; a release twice is a no-op
    assert drivers[0].pick_address(net, "ep-0-0", 4) == got[0][0]
    drivers[0].unpick_address(net, "ep-0-0")
    drivers[0].unpick_address(net, "ep-0-0")
    assert ipam.lookup(pool, "ov:ep-0-0") is None          # handles: <cluster network>:<endpoint>
    assert ipam.verify(pool) == []


def test_a_host_borrows_only_when_no_block_is_left_and_the_pool_goes_with_the_network(hosts):
    net = _net("10.91.0.0/25", "10.91.0.1")                   # two /26 blocks, 125 addresses
    a, b = hosts("ha"), hosts("hb")
    first = [a.pick_address(net, f"a{n}", 4) for n in range(62)]   # block 0 minus .0 and .1
    second = [b.pick_address(net, f"b{n}", 4) for n in range(63)]  # b claims block 1 (.127 reserved)
    pool = pool_name("10.91.0.0/25")
    assert {x["cidr"]: x["host"] for x in a._blocks().blocks(pool)} == {
        "10.91.0.0/26": "ha", "10.91.0.64/26": "hb"}
    assert "10.91.0.127" not in second
    # a is full and no block is unclaimed: it takes its own freed address first, then borrows
    a.unpick_address(net, "a0")
    assert a.pick_address(net, "a-again", 4) == first[0]
    b.unpick_address(net, "b3")
    assert a.pick_address(net, "a-borrow", 4) == second[3]
    with pytest.raises(errors.PoolExhausted):
        a.pick_address(net, "a-none", 4)
    # an explicit address another host's endpoint holds is refused; a free one is reserved
    with pytest.raises(errors.AddressInUse):
        b.pick_address(net, "b-want", 4, want=first[5])
    b.unpick_address(net, "b10")
    assert b.pick_address(net, "b-want", 4, want=second[10]) == second[10]
    assert a._blocks().verify(pool) == []
    # the last member gone: the cluster network and its pool go in one commit
    c = a.cluster
    c.store.put(c.key("networks", "ov"), {"name": "ov", "vni": 4096, "subnets": ["10.91.0.0/25"]})
    assert a._free_if_unused("ov") is True
    assert c.store.list(c.prefix("ipam")) == []
    # and a pick after that makes the pool again (this process forgot its blocks)
    assert a.pick_address(net, "fresh", 4) == "10.91.0.2"
