"""An unreachable store at the edges: Docker gets 503 ``{"Err": ...}``, CNI gets code 11 -- never a
500/999.  The Docker app is the real one (``create_app``) on a real Controller and IPAM over a
SQLite store whose file another writer keeps locked."""
from __future__ import annotations

import json
import sqlite3

from pynet.cni import spec
from pynet.cnm.controller import Controller
from pynet.config import Config
from pynet.errors import StoreUnavailable
from pynet.ipam import Ipam
from pynet.store.sqlite import SqliteStore

ACCEPT = "application/vnd.docker.plugins.v1.2+json"


def test_docker_gets_503_err_when_the_store_is_locked(tmp_path):
    from pynet.plugin_api.app import create_app

    path = str(tmp_path / "pynet.db")
    store = SqliteStore(path, busy_timeout=0.2)
    ipam = Ipam(store, default_pools=Config().default_pools, host_routes=lambda: [])
    app = create_app(Controller(store, ipam, {}, firewall=None, port_allocator=None))
    app.testing = False  # the real error handlers
    client = app.test_client()
    body = json.dumps({"AddressSpace": "LocalDefault", "Pool": "10.77.0.0/24", "Options": {}, "V6": False})
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        r = client.post("/IpamDriver.RequestPool", data=body, headers={"Accept": ACCEPT})
        assert r.status_code == 503, r.data
        err = json.loads(r.data)["Err"]
        assert "locked" in err and "\n" not in err
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    r = client.post("/IpamDriver.RequestPool", data=body, headers={"Accept": ACCEPT})
    assert r.status_code == 200, r.data  # nothing was left half-done: the same request now works
    store.close()


def test_cni_error_code_for_an_unreachable_store():
    e = StoreUnavailable("etcd unreachable at http://127.0.0.1:1")
    out = json.loads(spec.dumps(spec.error_result(e.cni_code, str(e), "1.0.0")))
    assert out["code"] == 11 and out["msg"].startswith("etcd unreachable")
