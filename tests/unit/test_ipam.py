"""IPAM behaviour against both stores: pools, addresses, defaults, errors."""
from __future__ import annotations

import ipaddress

import pytest

from pynet.errors import (AddressInUse, InvalidAddress, InvalidParameter, InvalidSubnet,
                          NoDefaultPool, PoolExhausted, PoolNotFound, PoolOverlap)
from pynet.ipam import GATEWAY_TYPE, Ipam
from pynet.store.memory import MemoryStore
from pynet.store.sqlite import SqliteStore

GW = {"RequestAddressType": GATEWAY_TYPE}
LOCAL = "LocalDefault"


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    if request.param == "memory":
        s = MemoryStore()
    else:
        s = SqliteStore(str(tmp_path / "pynet.db"))
    yield s
    s.close()


@pytest.fixture
def ipam(store):
    return Ipam(store, host_routes=lambda: [])


def snapshot(store):
    return [(r.key, r.value, r.version) for r in store.list("")]


# --- pools -------------------------------------------------------------------------
def test_address_spaces(ipam):
    assert ipam.address_spaces() == {"LocalDefaultAddressSpace": "LocalDefault",
                                     "GlobalDefaultAddressSpace": "GlobalDefault"}


def test_v4_pool_gateway_then_serial_addresses(ipam):
    pid, cidr, data = ipam.request_pool(LOCAL, "10.1.0.0/24")
    assert (pid, cidr, data) == ("LocalDefault/10.1.0.0/24", "10.1.0.0/24", {})
    assert ipam.request_address(pid, "", GW) == "10.1.0.1/24"
    assert ipam.request_address(pid) == "10.1.0.2/24"
    assert ipam.request_address(pid, options={"com.docker.network.endpoint.macaddress": "x"}) == "10.1.0.3/24"


def test_pool_host_bits_are_masked_like_docker(ipam):
    pid, cidr, _ = ipam.request_pool(LOCAL, "10.1.0.7/24")
    assert (pid, cidr) == ("LocalDefault/10.1.0.0/24", "10.1.0.0/24")


@pytest.mark.parametrize("cidr,first,second", [
    ("fd00:beef::/64", "fd00:beef::1/64", "fd00:beef::2/64"),
    ("fd00:1::/48", "fd00:1::1/48", "fd00:1::2/48"),
    ("fd00:2::100/120", "fd00:2::101/120", "fd00:2::102/120"),
])
def test_v6_pools(ipam, cidr, first, second):
    pid, got, _ = ipam.request_pool(LOCAL, cidr, v6=True)
    assert got == cidr and pid == f"LocalDefault/{cidr}"
    assert ipam.request_address(pid, "", GW) == first
    assert ipam.request_address(pid) == second
    assert ipam.get_pool(pid)["v6"] is True


def test_v6_subnet_router_anycast_never_handed_out(ipam):
    pid, _, _ = ipam.request_pool(LOCAL, "fd00:3::/126", v6=True)
    got = [ipam.request_address(pid) for _ in range(3)]
    assert got == ["fd00:3::1/126", "fd00:3::2/126", "fd00:3::3/126"]  # last one is fine in v6
    with pytest.raises(PoolExhausted):
        ipam.request_address(pid)
    with pytest.raises(InvalidAddress, match="anycast"):
        ipam.request_address(pid, "fd00:3::")


def test_v6_64_dynamic_allocation_many(ipam):
    pid, _, _ = ipam.request_pool(LOCAL, "fd00:64::/64", v6=True)
    got = [ipam.request_address(pid) for _ in range(300)]
    assert got[0] == "fd00:64::1/64" and got[-1] == "fd00:64::12c/64"
    assert len(set(got)) == 300
    assert ipam.request_address(pid, "fd00:64::ffff:ffff:ffff:ffff") == "fd00:64::ffff:ffff:ffff:ffff/64"
    assert ipam.get_pool(pid)["size"] == 2 ** 64 - 1
    assert ipam.verify(pid) == []


def test_same_cidr_in_two_address_spaces(ipam):
    a, _, _ = ipam.request_pool("LocalDefault", "10.5.0.0/24")
    b, _, _ = ipam.request_pool("GlobalDefault", "10.5.0.0/24")
    assert a != b
    assert ipam.request_address(a) == ipam.request_address(b) == "10.5.0.1/24"
    ipam.release_address(a, "10.5.0.1")
    assert list(ipam.allocated(a)) == [] and list(ipam.allocated(b)) == ["10.5.0.1"]


@pytest.mark.parametrize("second", ["10.6.0.0/24", "10.6.0.128/25", "10.0.0.0/8"])
def test_overlap_refused_within_address_space(ipam, store, second):
    ipam.request_pool(LOCAL, "10.6.0.0/24")
    before = snapshot(store)
    with pytest.raises(PoolOverlap):
        ipam.request_pool(LOCAL, second)
    assert snapshot(store) == before


def test_released_pool_can_be_requested_again(ipam, store):
    pid, _, _ = ipam.request_pool(LOCAL, "10.7.0.0/24")
    ipam.request_address(pid)
    ipam.release_pool(pid)
    assert store.list("ipam/") == []
    pid2, _, _ = ipam.request_pool(LOCAL, "10.7.0.0/24")
    assert pid2 == pid and ipam.request_address(pid) == "10.7.0.1/24"


def test_release_pool_unknown_is_silent(ipam, store):
    ipam.release_pool("LocalDefault/10.99.0.0/24")
    ipam.release_pool("garbage")
    assert store.list("") == []


def test_pool_options_kept(ipam):
    pid, _, _ = ipam.request_pool(LOCAL, "10.8.0.0/24", options={"pool.kind": "blue"})
    assert ipam.get_pool(pid)["options"] == {"pool.kind": "blue"}


# --- sub-pools ------------------------------------------------------------------------
def test_sub_pool_dynamic_only_from_range_explicit_anywhere(ipam):
    pid, cidr, _ = ipam.request_pool(LOCAL, "10.251.0.0/24", "10.251.0.64/26")
    assert pid == "LocalDefault/10.251.0.0/24/10.251.0.64/26" and cidr == "10.251.0.0/24"
    # what dockerd sends for --gateway 10.251.0.1 --aux-address x=10.251.0.9 --ip-range
    assert ipam.request_address(pid, "10.251.0.1", GW) == "10.251.0.1/24"
    assert ipam.request_address(pid, "10.251.0.9") == "10.251.0.9/24"
    got = [ipam.request_address(pid) for _ in range(64)]
    assert {ipaddress.ip_interface(a).ip for a in got} == set(ipaddress.ip_network("10.251.0.64/26"))
    with pytest.raises(PoolExhausted, match="sub-pool 10.251.0.64/26"):
        ipam.request_address(pid)
    assert ipam.request_address(pid, "10.251.0.200") == "10.251.0.200/24"
    info = ipam.get_pool(pid)
    assert (info["size"], info["dynamic_size"], info["used"]) == (254, 64, 67)


def test_gateway_without_address_comes_from_sub_pool_like_docker(ipam):
    # libnetwork's default IPAM has no special case for the gateway: it takes
    # the first free address of --ip-range when one is given
    pid, _, _ = ipam.request_pool(LOCAL, "10.252.0.0/24", "10.252.0.128/25")
    assert ipam.request_address(pid, "", GW) == "10.252.0.128/24"
    assert ipam.request_address(pid) == "10.252.0.129/24"


def test_sub_pool_at_pool_start_skips_network_address(ipam):
    pid, _, _ = ipam.request_pool(LOCAL, "10.253.0.0/24", "10.253.0.0/25")
    assert ipam.request_address(pid, "", GW) == "10.253.0.1/24"


@pytest.mark.parametrize("pool,sub,err", [
    ("10.1.0.0/24", "10.2.0.0/26", InvalidSubnet),
    ("10.1.0.0/24", "10.0.0.0/16", InvalidSubnet),       # bigger than the pool
    ("10.1.0.0/24", "fd00::/64", InvalidSubnet),
    ("10.1.0.0/24", "10.1.0.0/33", InvalidSubnet),
    ("", "10.1.0.0/26", InvalidParameter),
])
def test_bad_sub_pool(ipam, store, pool, sub, err):
    with pytest.raises(err):
        ipam.request_pool(LOCAL, pool, sub)
    assert store.list("") == []


# --- explicit / aux addresses ---------------------------------------------------------------
def test_explicit_address_errors(ipam):
    pid, _, _ = ipam.request_pool(LOCAL, "10.9.0.0/24")
    assert ipam.request_address(pid, "10.9.0.77") == "10.9.0.77/24"
    assert ipam.request_address(pid, "10.9.0.78/24") == "10.9.0.78/24"
    with pytest.raises(AddressInUse):
        ipam.request_address(pid, "10.9.0.77")
    with pytest.raises(InvalidAddress, match="outside"):
        ipam.request_address(pid, "10.9.1.1")
    with pytest.raises(InvalidAddress, match="outside"):
        ipam.request_address(pid, "fd00::1")
    with pytest.raises(InvalidAddress, match="network"):
        ipam.request_address(pid, "10.9.0.0")
    with pytest.raises(InvalidAddress, match="broadcast"):
        ipam.request_address(pid, "10.9.0.255")
    with pytest.raises(InvalidAddress, match="prefix length"):
        ipam.request_address(pid, "10.9.0.79/16")
    # explicit allocations do not move the serial cursor
    assert ipam.request_address(pid) == "10.9.0.1/24"


@pytest.mark.parametrize("cidr,expect", [
    ("10.10.0.0/31", ["10.10.0.0/31", "10.10.0.1/31"]),
    ("10.10.1.5/32", ["10.10.1.5/32"]),
    ("10.10.2.0/30", ["10.10.2.1/30", "10.10.2.2/30"]),
    ("10.10.3.0/29", [f"10.10.3.{i}/29" for i in range(1, 7)]),
])
def test_exhaustion(ipam, cidr, expect):
    pid, _, _ = ipam.request_pool(LOCAL, cidr)
    assert [ipam.request_address(pid) for _ in expect] == expect
    with pytest.raises(PoolExhausted, match=pid.replace(".", r"\.")):
        ipam.request_address(pid)
    with pytest.raises(PoolExhausted):
        ipam.request_address(pid, "", GW)
    info = ipam.get_pool(pid)
    assert info["used"] == info["size"] == len(expect) and info["free"] == 0


# --- serial allocation and release ------------------------------------------------------------
def test_serial_allocation_does_not_reuse_at_once_and_wraps(ipam):
    pid, _, _ = ipam.request_pool(LOCAL, "10.11.0.0/29")
    a = [ipam.request_address(pid) for _ in range(3)]           # .1 .2 .3
    ipam.release_address(pid, "10.11.0.2")
    assert ipam.request_address(pid) == "10.11.0.4/29"
    ipam.release_address(pid, "10.11.0.1/29")                   # CIDR form works too
    assert ipam.request_address(pid) == "10.11.0.5/29"
    assert ipam.request_address(pid) == "10.11.0.6/29"
    # end of the pool: wraps to the lowest free
    assert ipam.request_address(pid) == "10.11.0.1/29"
    assert ipam.request_address(pid) == "10.11.0.2/29"
    with pytest.raises(PoolExhausted):
        ipam.request_address(pid)
    assert a[0] == "10.11.0.1/29"


def test_release_unknown_is_silent(ipam, store):
    pid, _, _ = ipam.request_pool(LOCAL, "10.12.0.0/24")
    ipam.request_address(pid)
    before = snapshot(store)
    ipam.release_address("LocalDefault/10.99.0.0/24", "10.99.0.1")
    ipam.release_address(pid, "10.12.0.50")         # never allocated
    ipam.release_address(pid, "10.13.0.1")          # outside
    ipam.release_address(pid, "10.12.0.0")          # network address
    ipam.release_address(pid, "fd00::1")            # other family
    assert snapshot(store) == before
    ipam.release_address(pid, "10.12.0.1")
    ipam.release_address(pid, "10.12.0.1")          # twice
    assert ipam.get_pool(pid)["used"] == 0
    assert store.list("ipam/bits/") == []            # an empty bitmap leaves no blocks


def test_list_get_allocated(ipam):
    pid, _, _ = ipam.request_pool(LOCAL, "10.14.0.0/24", "10.14.0.128/25")
    ipam.request_address(pid, "10.14.0.1", GW)
    ipam.request_address(pid)
    (info,) = ipam.list_pools()
    assert info == ipam.get_pool(pid)
    assert {k: info[k] for k in ("id", "address_space", "pool", "sub_pool", "v6", "size", "used", "free")} == {
        "id": pid, "address_space": LOCAL, "pool": "10.14.0.0/24", "sub_pool": "10.14.0.128/25",
        "v6": False, "size": 254, "used": 2, "free": 252}
    assert list(ipam.allocated(pid)) == ["10.14.0.1", "10.14.0.128"]
    with pytest.raises(PoolNotFound):
        ipam.get_pool("LocalDefault/10.99.0.0/24")
    with pytest.raises(PoolNotFound):
        ipam.allocated("nope")
    with pytest.raises(PoolNotFound):
        ipam.request_address("LocalDefault/10.99.0.0/24")


def test_reconcile(ipam):
    pid, _, _ = ipam.request_pool(LOCAL, "10.15.0.0/24")
    got = [ipam.request_address(pid).split("/")[0] for _ in range(5)]
    released = ipam.reconcile(pid, {got[0], got[2] + "/24"})
    assert sorted(released) == sorted([got[1], got[3], got[4]])
    assert list(ipam.allocated(pid)) == [got[0], got[2]]
    assert ipam.get_pool(pid)["used"] == 2
    assert ipam.reconcile(pid, set(got)) == []
    assert ipam.reconcile("LocalDefault/10.99.0.0/24", set()) == []
    assert ipam.verify(pid) == []


# --- default pools ----------------------------------------------------------------------------------
DEFAULTS = [("172.17.0.0/16", 16), ("172.18.0.0/16", 16), ("172.19.0.0/16", 16),
            ("192.168.0.0/16", 20)]


def test_default_pools_skip_routes_and_held_pools(store):
    ipam = Ipam(store, default_pools=DEFAULTS, host_routes=lambda: ["172.17.0.0/16", "10.0.0.0/8"])
    a, pa, _ = ipam.request_pool(LOCAL)
    b, pb, _ = ipam.request_pool(LOCAL)
    assert (a, pa) == ("LocalDefault/172.18.0.0/16", "172.18.0.0/16")
    assert pb == "172.19.0.0/16"
    ipam.request_pool(LOCAL, "192.168.0.0/24")                  # an explicit pool is an obstacle too
    assert ipam.request_pool(LOCAL)[1] == "192.168.16.0/20"
    ipam.release_pool(a)
    assert ipam.request_pool(LOCAL)[1] == "172.18.0.0/16"
    # another address space does not compete
    assert ipam.request_pool("GlobalDefault")[1] == "172.18.0.0/16"


def test_default_pools_route_inside_a_base(store):
    routes = ["0.0.0.0/0", "192.168.0.0/24", "192.168.35.0/24"]  # the default route blocks nothing
    ipam = Ipam(store, default_pools=[("192.168.0.0/16", 20)], host_routes=lambda: routes)
    assert [ipam.request_pool(LOCAL)[1] for _ in range(3)] == [
        "192.168.16.0/20", "192.168.48.0/20", "192.168.64.0/20"]


def test_default_pools_exhausted(store):
    ipam = Ipam(store, default_pools=[("10.200.0.0/23", 24)], host_routes=lambda: [])
    ipam.request_pool(LOCAL)
    ipam.request_pool(LOCAL)
    before = snapshot(store)
    with pytest.raises(NoDefaultPool):
        ipam.request_pool(LOCAL)
    assert snapshot(store) == before


def test_v6_without_pool(store):
    with pytest.raises(NoDefaultPool, match="IPv6"):
        Ipam(store, host_routes=lambda: []).request_pool(LOCAL, v6=True)
    ipam = Ipam(store, default_pools=[("fd42::/48", 64)], host_routes=lambda: ["fd42::/64"])
    assert ipam.request_pool(LOCAL, v6=True)[1] == "fd42:0:0:1::/64"


def test_default_host_routes_reader_runs():
    from pynet.ipam import read_host_routes

    for r in read_host_routes():
        net = ipaddress.ip_network(r)
        assert net.prefixlen > 0


def test_odd_host_routes_are_ignored(store):
    ipam = Ipam(store, default_pools=DEFAULTS, host_routes=lambda: ["bogus", "172.17.0.0/16"])
    assert ipam.request_pool(LOCAL)[1] == "172.18.0.0/16"


# --- invalid input leaves the store exactly as it was ----------------------------------------
BAD_CALLS = [
    ("request_pool", (LOCAL, "10.0.0.0/33"), InvalidSubnet),
    ("request_pool", (LOCAL, "10.0.0.300/24"), InvalidSubnet),
    ("request_pool", (LOCAL, "10.0.0.0"), InvalidSubnet),
    ("request_pool", (LOCAL, "banana"), InvalidSubnet),
    ("request_pool", (LOCAL, 42), InvalidSubnet),
    ("request_pool", (LOCAL, ["10.0.0.0/24"]), InvalidSubnet),
    ("request_pool", (LOCAL, "10.20.0.0/24", "10.21.0.0/26"), InvalidSubnet),
    ("request_pool", ("", "10.22.0.0/24"), InvalidParameter),
    ("request_pool", (None, "10.22.0.0/24"), InvalidParameter),
    ("request_pool", ("a/b", "10.22.0.0/24"), InvalidParameter),
    ("request_pool", (LOCAL, "10.22.0.0/24", "", "notadict"), InvalidParameter),
    ("request_pool", (LOCAL, "10.22.0.0/24", "", None, "yes"), InvalidParameter),
    ("request_address", ("POOL", "10.30.1.1"), InvalidAddress),
    ("request_address", ("POOL", "10.30.0.256"), InvalidAddress),
    ("request_address", ("POOL", "nonsense"), InvalidAddress),
    ("request_address", ("POOL", 12345), InvalidAddress),
    ("request_address", ("POOL", "10.30.0.1"), AddressInUse),
    ("request_address", ("POOL", "", ["x"]), InvalidParameter),
    ("request_address", (None,), InvalidParameter),
    ("request_address", ("LocalDefault/10.31.0.0/24",), PoolNotFound),
    ("release_address", ("POOL", "nonsense"), InvalidAddress),
    ("release_address", ("POOL", None), InvalidAddress),
    ("release_pool", (123,), InvalidParameter),
    ("reconcile", ("POOL", {"not-an-ip"}), InvalidAddress),
]


@pytest.mark.parametrize("verb,args,err", BAD_CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_CALLS)])
def test_invalid_input_leaves_store_unchanged(ipam, store, verb, args, err):
    pid, _, _ = ipam.request_pool(LOCAL, "10.30.0.0/24")
    ipam.request_address(pid, "10.30.0.1")
    args = tuple(pid if a == "POOL" else a for a in args)
    before = snapshot(store)
    with pytest.raises(err):
        getattr(ipam, verb)(*args)
    assert snapshot(store) == before
    assert ipam.verify(pid) == []


def test_exhausted_request_leaves_store_unchanged(ipam, store):
    pid, _, _ = ipam.request_pool(LOCAL, "10.40.0.0/30")
    ipam.request_address(pid)
    ipam.request_address(pid)
    before = snapshot(store)
    with pytest.raises(PoolExhausted):
        ipam.request_address(pid)
    assert snapshot(store) == before


def test_state_is_shared_between_instances(store):
    # the CNI binaries and the daemon each build their own Ipam on one store
    a = Ipam(store, host_routes=lambda: [])
    b = Ipam(store, host_routes=lambda: [])
    pid, _, _ = a.request_pool(LOCAL, "10.41.0.0/24")
    assert a.request_address(pid) == "10.41.0.1/24"
    assert b.request_address(pid) == "10.41.0.2/24"
    with pytest.raises(PoolOverlap):
        b.request_pool(LOCAL, "10.41.0.0/24")


# --- Store v2: no hot key, txn passed down, the write-lock fallback ------------------------
def _pool_record(store, pid):
    return store.get("ipam/pools/" + pid.replace("%", "%25").replace("/", "%2F"))


def test_allocations_never_rewrite_the_pool_record(store, ipam):
    pid, _, _ = ipam.request_pool(LOCAL, "10.40.0.0/24")
    before = _pool_record(store, pid)
    got = [ipam.request_address(pid, holder=f"h{i}") for i in range(5)]
    ipam.request_address(pid, options=GW)
    ipam.release_address(pid, got[1], "h1")
    assert _pool_record(store, pid) == before  # same value, same version: no hot key
    info = ipam.get_pool(pid)
    assert (info["used"], info["free"]) == (5, 254 - 5)  # counted from the bitmap
    # the cursor is still Docker's: next after the last handed out, released one not reused
    assert ipam.request_address(pid) == "10.40.0.7/24"


def test_a_pool_of_before_v2_continues_from_its_stored_cursor(store):
    """Pools written by the v1 IPAM carry cursor/used in the record and no cursor key."""
    key = "ipam/pools/LocalDefault%2F10.41.0.0%2F24"
    store.put(key, {"id": "LocalDefault/10.41.0.0/24", "address_space": LOCAL, "pool": "10.41.0.0/24",
                    "sub_pool": "", "v6": False, "options": {}, "cursor": 9, "used": 0, "managed": False})
    ipam = Ipam(store, host_routes=lambda: [])
    pid = "LocalDefault/10.41.0.0/24"
    assert ipam.request_address(pid) == "10.41.0.9/24"
    assert ipam.request_address(pid) == "10.41.0.10/24"  # from the cursor key now
    assert ipam.get_pool(pid)["used"] == 2


def test_a_caller_passes_its_txn_down(store, ipam):
    pid, _, _ = ipam.request_pool(LOCAL, "10.42.0.0/24")

    def attach(t):  # one commit for the caller's record and the allocation
        a = ipam.request_address(pid, holder="ep1", txn=t)
        t.put("endpoints/ep1", {"address": a})
        return a

    a = store.txn(attach)
    assert store.get("endpoints/ep1").value == {"address": a} and a in {f"{x}/24" for x in ipam.allocated(pid)}

    def refused(t):
        ipam.request_address(pid, holder="ep2", txn=t)
        raise ValueError("the caller's own check fails: nothing is written")

    with pytest.raises(ValueError):
        store.txn(refused)
    assert list(ipam.allocated(pid)) == [a.split("/")[0]] and ipam.holders(pid)["addresses"] == {
        a.split("/")[0]: ["ep1"]}


def test_under_the_write_lock_a_rolled_back_allocation_never_reaches_the_cache(store, ipam):
    """The contention fallback (``optimistic.run``: the verb under the store's write lock)."""
    from pynet.store.optimistic import LockedTxn

    pid, _, _ = ipam.request_pool(LOCAL, "10.43.0.0/24")
    assert ipam.request_address(pid) == "10.43.0.1/24"  # warm: pool, block, cursor cached
    with pytest.raises(ZeroDivisionError):
        with store.transaction() as t:
            assert ipam.request_address(pid, holder="x", txn=LockedTxn(t, store)) == "10.43.0.2/24"
            1 / 0
    assert list(ipam.allocated(pid)) == ["10.43.0.1"] and ipam.holders(pid)["addresses"] == {}
    # the rolled-back writes never reached the record cache: the next answer is from the store
    assert ipam.request_address(pid) == "10.43.0.2/24"
    assert ipam.verify(pid) == []
