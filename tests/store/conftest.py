"""Store conformance fixtures: one ``store`` fixture over four backends.

``memory``, ``sqlite`` (a file in the test's tmp dir), ``etcd1`` (a one-member etcd) and
``etcd3`` (a three-member cluster): the etcd members are real ``etcd`` processes started once per
session on free loopback ports, data dirs in a temp dir, killed and removed at session end even
on failure (tests/support/etcd_cluster.py).  Tests that kill members use clusters of their own
(``disposable_etcd``) so the shared ones stay whole.  Every test works under its own key prefix
(``ns``), so tests sharing a cluster never see each other's keys.
"""
from __future__ import annotations

import shutil
import tempfile
import uuid

import pytest

from pynet.store.keys import cluster_prefix
from pynet.store.memory import MemoryStore
from pynet.store.sqlite import SqliteStore
from tests.support.etcd_cluster import EtcdCluster

# sqlite-ns: the SQLite store under a native key prefix (SqliteStore.namespaced, what the
# daemon and the CNI binaries open: pynet.store.layout), keys relative to it
BACKENDS = ["memory", "sqlite", "sqlite-ns", "etcd1", "etcd3"]


@pytest.fixture(scope="session")
def etcd_dir():
    d = tempfile.mkdtemp(prefix="pynet-etcd-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def etcd1(etcd_dir):
    with EtcdCluster(1, etcd_dir, name="one") as c:
        yield c


@pytest.fixture(scope="session")
def etcd3(etcd_dir):
    with EtcdCluster(3, etcd_dir, name="three") as c:
        yield c


@pytest.fixture
def disposable_etcd(etcd_dir):
    """``disposable_etcd(size)``: a cluster for this test only (it may kill members)."""
    made = []

    def make(size: int) -> EtcdCluster:
        c = EtcdCluster(size, etcd_dir, name=f"d{uuid.uuid4().hex[:6]}")
        made.append(c)
        c.__enter__()
        return c

    yield make
    for c in made:
        c.stop()


def make_store(backend: str, request, tmp_path):
    from pynet.store.etcd import EtcdStore  # not at module level: only etcd cases pay for httpx

    if backend == "memory":
        return MemoryStore()
    if backend == "sqlite":
        return SqliteStore(str(tmp_path / "pynet.db"))
    if backend == "sqlite-ns":
        raw = SqliteStore(str(tmp_path / "pynet.db"))
        raw.put("outside", 1)  # a key beside the namespace: never seen through it
        return raw.namespaced(cluster_prefix())
    cluster = request.getfixturevalue(backend)
    return EtcdStore(cluster.endpoints, timeout=3.0)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def store(backend, request, tmp_path):
    s = make_store(backend, request, tmp_path)
    yield s
    s.close()


@pytest.fixture
def ns() -> str:
    return cluster_prefix("test", uuid.uuid4().hex[:12])


@pytest.fixture(scope="session")
def etcd_alone(etcd_dir):
    """A one-member etcd for tests that list the whole store (the controller's unit tests
    re-run on etcd): nobody else writes to it, and ``whole_etcd_store`` empties it around
    each test."""
    with EtcdCluster(1, etcd_dir, name="alone") as c:
        yield c


@pytest.fixture
def whole_etcd_store(etcd_alone):
    from pynet.store.etcd import EtcdStore

    s = EtcdStore(etcd_alone.endpoints, timeout=5.0)
    s.delete_prefix("")
    yield s
    s.delete_prefix("")
    s.close()
