"""The v2 key layout of a store: which host it belongs to, and the one-time move of a
store written before keys named their schema and scope.

    local, cluster = open_layout(SqliteStore(...))
    local.get("networks/<id>")   -> pynet/v2/local/<host>/networks/<id>
    cluster.get("allocations/<id>") -> pynet/v2/cluster/allocations/<id>

``pynet/meta`` (``{"layout": "v2", "host": <host>}``) says the layout and names the host whose
local records the store holds: chosen once (from the host name, when the record is made) and
kept, so renaming the machine does not orphan its records.  One read per open.

A store of before (keys ``networks/...``, ``ipam/...``, ``cni/...`` at the top) is moved once,
in one transaction of the store (two processes opening it at once conflict, and the second
then finds it migrated): every key not under ``pynet/`` goes under the local prefix, but
the cluster-wide records (``allocations/``, ``peers/``) under the cluster prefix; values
(JSON and bitmap bytes) unchanged.  A process of before that still runs on the old keys would
not see the moved records: restart the daemon with the upgrade (CNI binaries are short-lived).
"""
from __future__ import annotations

import logging
import socket
from typing import Optional

from pynet.store.keys import LOCAL, ROOT, SCHEMA, cluster_prefix, component, local_prefix
from pynet.store.namespace import Namespaced
from pynet.store.optimistic import run

log = logging.getLogger("pynet.store")

META = f"{ROOT}/meta"
# records shared by every host: the cluster scope
CLUSTER_RECORDS = ("allocations/", "peers/")


def default_host() -> str:
    """This machine's name as a key component (anything else becomes '-')."""
    name = socket.gethostname().split(".")[0] or "host"
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:63]
    return component(name or "host")


def _target(key: str, local: str, cluster: str) -> str:
    return (cluster if key.startswith(CLUSTER_RECORDS) else local) + key


def migrate(raw, host: str) -> int:
    """Move the keys of before under ``host``'s local prefix (and the cluster records under
    the cluster prefix), in one transaction; returns how many moved."""
    local, cluster = local_prefix(host), cluster_prefix()

    def fn(t):
        meta = t.get(META)
        if meta is not None and (meta.value or {}).get("layout") == SCHEMA:
            return 0  # another process migrated it meanwhile
        old = [r for r in t.list("") if not r.key.startswith(ROOT + "/")]
        for r in old:
            t.put(_target(r.key, local, cluster), r.value)
            t.delete(r.key)
        t.put(META, {"layout": SCHEMA, "host": host})
        return len(old)
    moved = run(raw, fn)
    if moved:
        log.info("store: moved %d records of before under %s (and %s)", moved, local, cluster)
    return moved


def open_layout(raw, host: Optional[str] = None) -> tuple:
    """(local, cluster) namespaces of ``raw``, migrated first if it is a store of before.
    ``host``: this host's key component (default: the one the store names, else the
    machine's name)."""
    meta = raw.get(META)
    v = (meta.value if meta is not None else None) or {}
    if v.get("layout") != SCHEMA:
        if host is None:
            host = v.get("host") or default_host()
        migrate(raw, component(host))
    elif host is None:
        host = v.get("host") or default_host()
    local = namespace(raw, local_prefix(host))
    return local, local.sibling(cluster_prefix())


def namespace(raw, prefix: str):
    """``raw`` under ``prefix``: the backend's own namespacing when it has one (SQLite applies
    the prefix in its SQL: the hot path pays no wrapper), else ``Namespaced``."""
    native = getattr(raw, "namespaced", None)
    return native(prefix) if native is not None else Namespaced(raw, prefix)


def host_of(store) -> str:
    """The host component of a local namespace (``pynet/v2/local/<host>/``)."""
    parts = getattr(store, "prefix", "").split("/")
    return parts[3] if len(parts) > 4 and parts[2] == LOCAL else ""


def view(raw):
    """The local records of ``raw`` without migrating anything (a read-only caller: the
    doctor): the v2 local namespace, or ``raw`` itself when it is a store of before."""
    meta = raw.get(META)
    v = (meta.value if meta is not None else None) or {}
    if v.get("layout") == SCHEMA and v.get("host"):
        return namespace(raw, local_prefix(v["host"]))
    return raw
