"""Settings shared by every entry point.  Defaults can be overridden by
environment (PYNET_*) and by command-line flags, so tests run their own
instance beside one started by ./scripts/run."""
from __future__ import annotations

import os
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
    # Default pools for RequestPool without a subnet: (base, prefix length of each pool).
    # Docker's own defaults, so users meet the subnets they know.
    default_pools: list = field(default_factory=lambda: [
        ("172.17.0.0/16", 16), ("172.18.0.0/16", 16), ("172.19.0.0/16", 16),
        ("172.20.0.0/14", 16), ("172.24.0.0/14", 16), ("172.28.0.0/14", 16),
        ("192.168.0.0/16", 20),
    ])

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
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**_checked(kw))


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
    for key, what in (("state_dir", "state directory"), ("socket_path", "socket path")):
        if key in out:
            value = out[key]
            if isinstance(value, str) and value.isprintable() and not value.startswith("/"):
                value = os.path.abspath(value)
            out[key] = validate.abs_path(value, what)
    return out


FIREWALL_BACKENDS = ("iptables", "nftables")


def firewall_backend(value, what: str = "firewall backend") -> str:
    """``iptables`` or ``nftables``; anything else one readable line."""
    from pynet.errors import InvalidParameter

    if value not in FIREWALL_BACKENDS:
        raise InvalidParameter(f"invalid {what} {value!r}: want one of {', '.join(FIREWALL_BACKENDS)}")
    return value
