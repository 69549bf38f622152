"""v2 store keys: ``pynet/v2/<scope>/...`` so one host's records and the cluster's cannot collide.

    local_key("host-a", "networks", net_id)   -> "pynet/v2/local/host-a/networks/<net_id>"
    cluster_key("vni", "4097")                -> "pynet/v2/cluster/vni/4097"
    cluster_prefix("endpoints", net_id)       -> "pynet/v2/cluster/endpoints/<net_id>/"

The schema version is in the key so a v3 layout can live beside v2 during an upgrade.  Every
component is checked at the door (``InvalidParameter``: Docker 400, CNI code 7): a component with
``/`` would let a name reach into another record's subtree (``networks/../ipam``), an unprintable
one would make keys ambiguous in logs and in etcdctl.
"""
from __future__ import annotations

from pynet.errors import InvalidParameter

ROOT = "pynet"
SCHEMA = "v2"
LOCAL = "local"
CLUSTER = "cluster"
MAX_COMPONENT = 255


def component(value: object) -> str:
    """``value`` as one key component, or ``InvalidParameter``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidParameter(f"store key component must be a string, not {type(value).__name__}")
    if not value or len(value) > MAX_COMPONENT:
        raise InvalidParameter(f"store key component must be 1..{MAX_COMPONENT} characters: {value!r}")
    if "/" in value or value in (".", ".."):
        raise InvalidParameter(f"store key component must not contain '/' or be '.'/'..': {value!r}")
    if not value.isprintable() or any(c.isspace() for c in value):
        raise InvalidParameter(f"store key component must be printable without spaces: {value!r}")
    return value


def _join(head: list[str], parts: tuple) -> str:
    return "/".join(head + [component(p) for p in parts])


def local_key(host: str, *parts) -> str:
    """A record that belongs to one host (its own networks, sandboxes, IPAM of local pools)."""
    if not parts:
        raise InvalidParameter("a store key needs at least one component after the scope")
    return _join([ROOT, SCHEMA, LOCAL, component(host)], parts)


def cluster_key(*parts) -> str:
    """A record shared by every host (global networks, VNIs, cluster pools, endpoints)."""
    if not parts:
        raise InvalidParameter("a store key needs at least one component after the scope")
    return _join([ROOT, SCHEMA, CLUSTER], parts)


def local_prefix(host: str, *parts) -> str:
    """The prefix of ``local_key(host, *parts, <anything>)``: ends with '/'."""
    return _join([ROOT, SCHEMA, LOCAL, component(host)], parts) + "/"


def cluster_prefix(*parts) -> str:
    return _join([ROOT, SCHEMA, CLUSTER], parts) + "/"


V2_PREFIX = f"{ROOT}/{SCHEMA}/"


def check_watch_prefix(prefix: str) -> str:
    """Watches take v2 prefixes only, on every backend: the SQLite store logs changes of v2 keys
    only (v1 keys are not watched, and their writers -- today's hot IPAM path -- must not pay
    for a change log), and a caller should not find that out by receiving nothing."""
    if not isinstance(prefix, str) or not prefix.startswith(V2_PREFIX):
        raise InvalidParameter(f"watch prefix must start with {V2_PREFIX!r}: {prefix!r}")
    return prefix


def parse_key(key: str) -> tuple[str, "str | None", list[str]]:
    """``(scope, host or None, parts)`` of a v2 key, or ``InvalidParameter``."""
    items = key.split("/")
    if len(items) < 4 or items[0] != ROOT or items[1] != SCHEMA or items[2] not in (LOCAL, CLUSTER):
        raise InvalidParameter(f"not a {ROOT}/{SCHEMA} store key: {key!r}")
    for item in items[3:]:
        component(item)
    if items[2] == LOCAL:
        if len(items) < 5:
            raise InvalidParameter(f"local store key without a record under the host: {key!r}")
        return LOCAL, items[3], items[4:]
    return CLUSTER, None, items[3:]
