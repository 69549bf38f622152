"""Keys that name their schema version and scope (pynet.store.layout, pynet.store.namespace).

The state dir's store holds this host's records under ``pynet/v2/local/<host>/`` and the
cluster-wide ones under ``pynet/v2/cluster/``; a state dir written before (keys at the top) is
moved there once, on first open, and then works as before."""
from __future__ import annotations

import socket

import pytest

from pynet import root
from pynet.cnm.controller import Controller
from pynet.cnm.model import IPData
from pynet.ipam import Ipam
from pynet.store import layout
from pynet.store.memory import MemoryStore
from pynet.store.namespace import Namespaced
from pynet.store.sqlite import SqliteStore
from tests.support.fakes import FakeDriver

N1, N2, E1 = "a" * 64, "b" * 64, "1" * 64


def controller(store):
    return Controller(store, Ipam(store, host_routes=lambda: []), {"bridge": FakeDriver()})


def test_a_state_dir_of_before_is_moved_once_and_keeps_working(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "node-1.example")
    raw = SqliteStore.in_state_dir(str(tmp_path))
    old = controller(raw)  # a pynet of before: keys at the top of the store
    pid, _, _ = old.request_pool("LocalDefault", "10.77.0.0/24")
    net = old.create_network(N1, [IPData(pool="10.77.0.0/24", gateway="10.77.0.1/24", pool_id=pid)],
                             name="n1", created_by="cni")
    a1 = old.request_address(pid, holder="x")
    old.create_endpoint(N1, E1, address=a1)
    raw.put(f"allocations/{N2}", {"driver": "overlay", "allocated": {"vni": "4097"}})
    before = {r.key: r.value for r in raw.list("")}
    assert all(not k.startswith("pynet/") for k in before)

    local = root.open_state_dir(str(tmp_path))
    assert local.prefix == "pynet/v2/local/node-1/"
    keys = [r.key for r in raw.list("")]
    assert all(k.startswith(("pynet/v2/local/node-1/", "pynet/v2/cluster/", "pynet/meta")) for k in keys), keys
    assert raw.get(f"pynet/v2/cluster/allocations/{N2}").value["allocated"] == {"vni": "4097"}
    # every record moved, value for value (JSON and bitmap bytes alike)
    moved = {r.key: r.value for r in local.list("")}
    assert moved == {k: v for k, v in before.items() if not k.startswith("allocations/")}

    new = controller(local)
    assert [n.id for n in new.networks()] == [net.id] and new.endpoint(N1, E1).address == a1
    assert new.ipam.verify(pid) == []
    assert new.request_address(pid, holder="y") not in (a1, "10.77.0.1/24")  # the bitmap came along
    assert new.cluster_store.get(f"allocations/{N2}") is not None

    # once: a second open moves nothing, and a renamed machine keeps its records
    monkeypatch.setattr(socket, "gethostname", lambda: "renamed")
    assert layout.migrate(raw, "node-1") == 0
    again = root.open_state_dir(str(tmp_path))
    assert again.prefix == local.prefix and [n.id for n in controller(again).networks()] == [N1]


def test_a_new_state_dir_is_v2_from_the_start(tmp_path):
    local = root.open_state_dir(str(tmp_path))
    controller(local).create_network(N1, [IPData(pool="10.78.0.0/24")], name="n1")
    raw = SqliteStore.in_state_dir(str(tmp_path))
    assert raw.get("pynet/meta").value == {"layout": "v2", "host": layout.host_of(local)}
    assert raw.get(f"{local.prefix}networks/{N1}") is not None and raw.get(f"networks/{N1}") is None


def test_two_hosts_on_one_backend_never_collide():
    raw = MemoryStore()
    a, _ = layout.open_layout(raw, host="host-a")
    b, cluster = layout.open_layout(raw, host="host-b")
    for s, subnet in ((a, "10.79.0.0/24"), (b, "10.79.0.0/24")):  # same IDs, same subnet
        c = controller(s)
        pid, _, _ = c.request_pool("LocalDefault", subnet)
        c.create_network(N1, [IPData(pool=subnet, pool_id=pid)], name="n1")
        assert c.request_address(pid, holder="x") == "10.79.0.1/24"
    assert [r.key for r in a.list("networks/")] == [r.key for r in b.list("networks/")] == [f"networks/{N1}"]
    assert {r.key.split("/")[3] for r in raw.list("pynet/v2/local/")} == {"host-a", "host-b"}
    assert controller(a).cluster_store.prefix == cluster.prefix == "pynet/v2/cluster/"


def test_a_namespace_hands_back_relative_keys_everywhere():
    raw = MemoryStore()
    ns = Namespaced(raw, "pynet/v2/local/h/")
    w = ns.watch("peers/", raw.revision() + 1)
    ns.txn(lambda t: (t.create("peers/x", {"a": 1}), t.put("other", 1)))
    assert ns.get("peers/x").key == "peers/x" and [r.key for r in ns.list("")] == ["other", "peers/x"]
    assert ns.txn(lambda t: [r.key for r in t.list("peers/")]) == ["peers/x"]
    ev = w.get(timeout=5)
    assert (ev.type, ev.key, ev.value) == ("put", "peers/x", {"a": 1})
    w.close()
    assert raw.get("pynet/v2/local/h/peers/x").value == {"a": 1}
    with pytest.raises(ValueError):
        Namespaced(raw, "no-slash")


def test_the_doctor_reads_either_layout_without_migrating(tmp_path):
    raw = SqliteStore.in_state_dir(str(tmp_path))
    controller(raw).create_network(N1, [IPData(pool="10.80.0.0/24")], name="old")
    assert layout.view(raw) is raw and [n.name for n in controller(layout.view(raw)).networks()] == ["old"]
    assert raw.get("pynet/meta") is None  # nothing written
    root.open_state_dir(str(tmp_path))
    assert [n.name for n in controller(layout.view(raw)).networks()] == ["old"]


def test_sqlite_namespaces_are_native_and_never_collide(tmp_path):
    """On SQLite the layout's namespaces are the store's own (the prefix applied in its SQL,
    no ``Namespaced`` wrapper on the hot path): the same isolation and relative keys."""
    raw = SqliteStore(str(tmp_path / "pynet.db"))
    a, cluster = layout.open_layout(raw, host="host-a")
    b, _ = layout.open_layout(raw, host="host-b")
    assert not isinstance(a, Namespaced) and not isinstance(cluster, Namespaced)
    assert (a.prefix, cluster.prefix, layout.host_of(a)) == ("pynet/v2/local/host-a/", "pynet/v2/cluster/", "host-a")
    for s, subnet in ((a, "10.79.0.0/24"), (b, "10.79.0.0/24")):
        c = controller(s)
        pid, _, _ = c.request_pool("LocalDefault", subnet)
        c.create_network(N1, [IPData(pool=subnet, pool_id=pid)], name="n1")
        assert c.request_address(pid, holder="x") == "10.79.0.1/24"
        assert c.cluster_store.prefix == "pynet/v2/cluster/"
    assert [r.key for r in a.list("networks/")] == [r.key for r in b.list("networks/")] == [f"networks/{N1}"]
    assert {r.key.split("/")[3] for r in raw.list("pynet/v2/local/")} == {"host-a", "host-b"}
    # every way in and out names relative keys: v1 calls, a v1 transaction, txn, watch
    w = cluster.watch("peers/", raw.revision() + 1)
    with a.transaction() as t:
        t.put("v1/x", 1)
        assert t.get("v1/x").key == "v1/x"
    a.txn(lambda t: (t.create("v2/x", {"a": 1}), t.delete_prefix("v1/")))
    cluster.txn(lambda t: t.create("peers/p", {"b": 2}))
    assert a.get("v2/x").key == "v2/x" and a.get("v1/x") is None and b.get("v2/x") is None
    assert raw.get("pynet/v2/local/host-a/v2/x").value == {"a": 1}
    ev = w.get(timeout=5)
    assert (ev.type, ev.key, ev.value) == ("put", "peers/p", {"b": 2})
    w.close()
    a.delete_prefix("")  # the namespace's own keys only
    assert a.list("") == [] and b.get(f"networks/{N1}") is not None and cluster.get("peers/p") is not None
    # one thread, one connection: a txn of one namespace inside another's is refused
    with pytest.raises(RuntimeError):
        a.txn(lambda t: (t.get("v2/x"), cluster.txn(lambda u: u.get("peers/p"))))
