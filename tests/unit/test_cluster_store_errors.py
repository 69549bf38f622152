"""The cluster store's transient failures name it (Docker's ``Err``, a CNI error's msg), and a
daemon's shutdown keeps its lease while its host has endpoints (peers keep reaching them)."""
from __future__ import annotations

import pytest

from pynet import errors
from pynet.cluster import Cluster, ClusterStore
from pynet.cluster.agent import Agent
from pynet.store.memory import MemoryStore

URL = "etcd://198.18.77.11:2379,198.18.77.12:2379"


class Unreachable(MemoryStore):
    puts = 0

    def put(self, *a, **kw):
        self.puts += 1
        raise errors.StoreUnavailable("etcd at http://198.18.77.11:2379: timed out")


class Electing(MemoryStore):
    """The first put meets an election (no answer), the resend the new leader."""
    puts = 0

    def put(self, *a, **kw):
        self.puts += 1
        if self.puts == 1:
            raise errors.StoreUnavailable("etcd at http://198.18.77.12:2379: ReadTimeout: timed out")
        return super().put(*a, **kw)


def test_a_call_meeting_an_election_is_resent_once(monkeypatch):
    monkeypatch.setattr(ClusterStore, "RIDE_THROUGH", 0.0)
    inner = Electing()
    ClusterStore(inner, URL).put("k", {"v": 1})
    assert inner.puts == 2 and inner.get("k").value == {"v": 1}


def test_an_unavailable_cluster_store_is_named_and_stays_transient(monkeypatch):
    monkeypatch.setattr(ClusterStore, "RIDE_THROUGH", 0.0)
    s = ClusterStore(Unreachable(), URL)
    with pytest.raises(errors.StoreUnavailable) as e:
        s.put("k", {"v": 1})
    assert str(e.value).startswith(f"cluster store {URL} unavailable: etcd at")
    assert e.value.http_status == 503 and e.value.cni_code == 11
    assert s._store.puts == 2                # resent once, then it stands
    # other errors and values pass through unchanged
    assert s.get("missing") is None


def test_the_cluster_wraps_its_store_only_when_it_has_a_url():
    store = MemoryStore()
    assert isinstance(Cluster(lambda: store, host="h1", url=URL).store, ClusterStore)
    assert Cluster(lambda: store, host="h1").store is store


@pytest.mark.parametrize("mine,revoked", [(True, False), (False, True)])
def test_shutdown_revokes_the_lease_only_without_local_endpoints(mine, revoked):
    store = MemoryStore()
    c = Cluster(lambda: store, host="h1", address="127.0.0.1", namespace="t")
    c.join()
    a = Agent(c, lambda view, dirty: None)
    a.synced = True
    a.view = {c.key("endpoints", "n1", "e1"): {"host": "h1" if mine else "h2", "mac": "02:42:0a:00:00:02"}}
    lease = c.lease
    a.shutdown()
    assert (store.get(c.key("hosts", "h1")) is None) == revoked, lease


def test_the_daemons_reconciliation_asks_the_dockerd_named_by_docker_host(monkeypatch):
    """A daemon serving a private dockerd (DOCKER_HOST=unix://...) must not reconcile with the
    machine's engine, which holds none of its networks: it would forget them on every restart."""
    from pynet.plugin_api import docker_state

    asked = []

    def get(path, sock, timeout):
        asked.append(sock)
        return []
    monkeypatch.setattr(docker_state, "_get", get)
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/h2/docker.sock")
    assert docker_state.docker_holdings("pynet") == {"networks": {}, "pools": []}
    assert docker_state.docker_custom_bridges() == []
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")     # not a socket dockerd serves here
    docker_state.docker_holdings("pynet")
    monkeypatch.delenv("DOCKER_HOST")
    docker_state.docker_holdings("pynet")
    assert asked == ["/run/h2/docker.sock", "/run/h2/docker.sock", docker_state.DOCKER_SOCKET,
                     docker_state.DOCKER_SOCKET]


def test_a_daemon_stopped_before_its_first_listing_keeps_its_lease():
    """SIGTERM right after start (a service manager's quick restart): the agent has no view yet,
    so it cannot tell that its host has endpoints; it must not revoke (peers would drop them)."""
    store = MemoryStore()
    c = Cluster(lambda: store, host="h1", address="127.0.0.1", namespace="t")
    c.join()
    Agent(c, lambda view, dirty: None).shutdown()
    assert store.get(c.key("hosts", "h1")) is not None
