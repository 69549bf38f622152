"""Settings shared by every entry point.  Defaults can be overridden by
environment (PYNET_*) and by command-line flags, so tests run their own
instance beside one started by ./scripts/run."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field


@dataclass
class Config:
    plugin_name: str = "pynet"
    state_dir: str = "/var/lib/pynet"
    socket_path: str = ""  # default derived from plugin_name
    chain_prefix: str = "PYNET"
    # the firewall backend: "iptables" (Docker's layout, coexists with the host's dockerd)
    # or "nftables" (pynet's own nft tables; see pynet.firewall.nft)
    firewall_backend: str = "iptables"
    # the iptables backend ("nft", "legacy", "legacy-restore"); "" = detect (PYNET_IPTABLES_BACKEND,
    # else what `iptables --version` says).  Set by a CNI conflist's pynet.iptablesBackend, whose
    # plugins run with the runtime's clean environment
    iptables_backend: str = ""
    # Default pools for RequestPool without a subnet: (base, prefix length of each pool).
    # Docker's own defaults, so users meet the subnets they know.
    default_pools: list = field(default_factory=lambda: [
        ("172.17.0.0/16", 16), ("172.18.0.0/16", 16), ("172.19.0.0/16", 16),
        ("172.20.0.0/14", 16), ("172.24.0.0/14", 16), ("172.28.0.0/14", 16),
        ("192.168.0.0/16", 20),
    ])
    # ---- the cluster (overlay networks across hosts, pynet.cluster) --------
    # etcd://host:port[,host:port...][/namespace]; "" = one host, no overlay
    cluster_store: str = ""
    # this host's VTEP (underlay) address; "" = the address of the interface
    # holding the default route
    advertise_address: str = ""
    # this host's identity in the cluster; "" = the one kept in the state dir
    host_id: str = ""
    cluster_lease_ttl: int = 15      # s; the daemon renews every TTL/3
    vni_range: str = "4096-16777215"  # VNIs the overlay allocates from (Docker's start)
    vxlan_port: int = 4789

    def __post_init__(self):
        if not self.socket_path:
            self.socket_path = f"/run/docker/plugins/{self.plugin_name}.sock"

    @classmethod
    def from_env(cls, **overrides) -> "Config":
        kw = {}
        env = os.environ
        if env.get("PYNET_PLUGIN_NAME"):
            kw["plugin_name"] = env["PYNET_PLUGIN_NAME"]
        if env.get("PYNET_STATE_DIR"):
            kw["state_dir"] = env["PYNET_STATE_DIR"]
        if env.get("PYNET_SOCKET"):
            kw["socket_path"] = env["PYNET_SOCKET"]
        if env.get("PYNET_CHAIN_PREFIX"):
            kw["chain_prefix"] = env["PYNET_CHAIN_PREFIX"]
        if env.get("PYNET_FIREWALL_BACKEND"):
            kw["firewall_backend"] = env["PYNET_FIREWALL_BACKEND"]
        for var, key in CLUSTER_ENV.items():
            if env.get(var):
                kw[key] = env[var]
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**_checked(kw))


CLUSTER_ENV = {"PYNET_CLUSTER_STORE": "cluster_store", "PYNET_ADVERTISE_ADDRESS": "advertise_address",
               "PYNET_HOST_ID": "host_id", "PYNET_CLUSTER_TTL": "cluster_lease_ttl",
               "PYNET_VNI_RANGE": "vni_range", "PYNET_VXLAN_PORT": "vxlan_port"}
HOST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CLUSTER_STORE_RE = re.compile(r"etcd://[A-Za-z0-9.\-\[\]:]+(,[A-Za-z0-9.\-\[\]:]+)*(/[A-Za-z0-9._-]{1,64})?/?")


def parse_vni_range(value: str) -> tuple[int, int]:
    """``4096-16777215`` -> (4096, 16777215); VNIs are 24 bits, 0 is reserved."""
    lo, sep, hi = str(value).strip().partition("-")
    try:
        lo_i, hi_i = int(lo), int(hi if sep else lo)
    except ValueError:
        raise ValueError(f"invalid VNI range {value!r}: expected FIRST-LAST") from None
    if not 1 <= lo_i <= hi_i <= 0xFFFFFF:
        raise ValueError(f"invalid VNI range {value!r}: VNIs are 1..16777215, first <= last")
    return lo_i, hi_i


def _checked_cluster(out: dict) -> None:
    """The cluster settings, one readable line each (InvalidParameter)."""
    from pynet import errors, validate

    url = out.get("cluster_store")
    if url:
        if not isinstance(url, str) or not CLUSTER_STORE_RE.fullmatch(url):
            raise errors.InvalidParameter(
                f"invalid cluster store {validate.shown(url)}: expected etcd://HOST:PORT[,HOST:PORT...][/NAMESPACE]")
    if out.get("advertise_address"):
        out["advertise_address"] = str(validate.ip_address(out["advertise_address"], "advertise address"))
    if out.get("host_id"):
        # a store key component and a log word: no '/', no space
        if not isinstance(out["host_id"], str) or not HOST_ID_RE.fullmatch(out["host_id"]):
            raise errors.InvalidParameter(f"invalid host ID {validate.shown(out['host_id'])}: "
                                          f"1..64 letters, digits, '.', '_' or '-'")
    for key, lo, hi in (("cluster_lease_ttl", 2, 3600), ("vxlan_port", 1, 65535)):
        if key in out:
            try:
                v = int(out[key])
            except (TypeError, ValueError):
                raise errors.InvalidParameter(f"invalid {key.replace('_', ' ')} {out[key]!r}: not a number") from None
            if not lo <= v <= hi:
                raise errors.InvalidParameter(f"invalid {key.replace('_', ' ')} {v}: must be {lo}..{hi}")
            out[key] = v
    if "vni_range" in out:
        try:
            parse_vni_range(out["vni_range"])
        except ValueError as e:
            raise errors.InvalidParameter(str(e)) from None


def _checked(kw: dict) -> dict:
    """Flags and PYNET_* values at the door, with the rules the CNI conflist's
    ``pynet`` section obeys: the instance name goes into link aliases, socket
    names and IPAM holders, the chain prefix into every rule, the paths into
    os calls (relative ones are made absolute, as a person means them)."""
    from pynet import validate

    out = dict(kw)
    if "plugin_name" in out:
        out["plugin_name"] = validate.instance_name(out["plugin_name"], "plugin name")
    if "chain_prefix" in out:
        out["chain_prefix"] = validate.chain_prefix(out["chain_prefix"])
    if "firewall_backend" in out:
        out["firewall_backend"] = firewall_backend(out["firewall_backend"])
    if out.get("iptables_backend"):
        out["iptables_backend"] = iptables_backend(out["iptables_backend"])
    for key, what in (("state_dir", "state directory"), ("socket_path", "socket path")):
        if key in out:
            value = out[key]
            if isinstance(value, str) and value.isprintable() and not value.startswith("/"):
                value = os.path.abspath(value)
            out[key] = validate.abs_path(value, what)
    _checked_cluster(out)
    return out


FIREWALL_BACKENDS = ("iptables", "nftables")
IPTABLES_BACKENDS = ("nft", "legacy", "legacy-restore")  # pynet.firewall.backend.BACKENDS


def iptables_backend(value, what: str = "iptables backend") -> str:
    """``nft``, ``legacy`` or ``legacy-restore``; anything else one readable line."""
    from pynet.errors import InvalidParameter

    if value not in IPTABLES_BACKENDS:
        raise InvalidParameter(f"invalid {what} {value!r}: want one of {', '.join(IPTABLES_BACKENDS)}")
    return value


def firewall_backend(value, what: str = "firewall backend") -> str:
    """``iptables`` or ``nftables``; anything else one readable line."""
    from pynet.errors import InvalidParameter

    if value not in FIREWALL_BACKENDS:
        raise InvalidParameter(f"invalid {what} {value!r}: want one of {', '.join(FIREWALL_BACKENDS)}")
    return value
