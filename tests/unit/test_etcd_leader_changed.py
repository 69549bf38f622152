"""etcd's "leader changed" (a linearizable read interrupted by an election: nothing was
applied) is resent a bounded number of times; any other unavailability is not (a write that
timed out may have applied, so only the caller's whole transaction may be retried)."""
import pytest

from pynet.errors import StoreUnavailable
from pynet.store import etcd


def _store(monkeypatch, answers):
    s = etcd.EtcdStore(["127.0.0.1:1"])
    calls = []

    def once(path, body):
        calls.append(path)
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    monkeypatch.setattr(s, "_call_once", once)
    monkeypatch.setattr(etcd.time, "sleep", lambda _s: None)
    return s, calls


def test_leader_changed_is_resent_until_answered(monkeypatch):
    lc = StoreUnavailable("etcd at http://m1: etcdserver: leader changed")
    s, calls = _store(monkeypatch, [lc, lc, {"header": {"revision": "7"}}])
    assert s._call("/kv/range", {}) == {"header": {"revision": "7"}}
    assert len(calls) == 3


def test_leader_changed_gives_up_after_a_bound(monkeypatch):
    n = len(etcd._LEADER_CHANGED_BACKOFF) + 1
    s, calls = _store(monkeypatch, [StoreUnavailable("etcdserver: leader changed")] * (n + 5))
    with pytest.raises(StoreUnavailable, match="leader changed"):
        s._call("/kv/range", {})
    assert len(calls) == n


def test_other_unavailability_is_not_resent(monkeypatch):
    s, calls = _store(monkeypatch, [StoreUnavailable("etcd at http://m1: ReadTimeout"), {}])
    with pytest.raises(StoreUnavailable, match="ReadTimeout"):
        s._call("/kv/txn", {})
    assert len(calls) == 1
