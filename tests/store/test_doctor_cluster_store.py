"""``pynet doctor``'s cluster_store check against a real one-member etcd (Debian's etcd-server):
answers -> ok; a port nothing listens on -> fail, in bounded time (the store's timeouts)."""
from __future__ import annotations

from pynet import doctor
from pynet.config import Config
from tests.support.etcd_cluster import closed_port


def _check(url: str) -> doctor.Check:
    d = doctor.Doctor(Config(), cluster_store=url)
    return d.check_cluster_store()


def test_cluster_store_reachable_and_unreachable(etcd1):
    c = _check("etcd://" + ",".join(e.replace("http://", "") for e in etcd1.endpoints))
    assert c.status == doctor.OK, c
    c = _check(f"etcd://127.0.0.1:{closed_port()}")
    assert c.status == doctor.FAIL and "unreachable" in c.message, c
    c = _check("http://127.0.0.1:2379")
    assert c.status == doctor.FAIL and "etcd://" in c.message, c
