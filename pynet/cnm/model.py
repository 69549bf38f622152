"""CNM objects as plain data, stored as JSON under ``networks/`` and
``endpoints/``.  Drivers keep no state of their own: what they need
remembered goes into ``driver_state`` and the controller stores it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class IPData:
    """One subnet of a network, as Docker's IPv4Data/IPv6Data or a CNI range."""
    pool: str                       # CIDR, e.g. "10.1.0.0/24"
    gateway: str = ""               # CIDR form, e.g. "10.1.0.1/24"
    address_space: str = ""
    aux_addresses: dict = field(default_factory=dict)
    pool_id: str = ""               # set when pynet's IPAM owns the pool (CNI path)


@dataclass
class PortMapping:
    proto: str                      # "tcp" | "udp" | "sctp"
    container_port: int
    host_port: int = 0              # 0: choose one
    host_port_end: int = 0          # a range to choose from (Docker's HostPortEnd)
    host_ip: str = ""               # "" = every host address


@dataclass
class Network:
    id: str
    driver: str = "bridge"
    name: str = ""
    ipv4: list[IPData] = field(default_factory=list)
    ipv6: list[IPData] = field(default_factory=list)
    enable_ipv6: bool = False
    internal: bool = False
    options: dict = field(default_factory=dict)    # driver options (docker -o / CNI keys)
    labels: dict = field(default_factory=dict)
    created_by: str = "docker"                     # "docker" | "cni" | "cli"
    created_at: float = 0.0                        # orders firewall blocks as Docker does (newest first)
    driver_state: dict = field(default_factory=dict)
    # its runtime deleted it while CNI attachments remained: removed with the last of them
    delete_pending: bool = False

    @property
    def gateway_v4(self) -> str:
        return self.ipv4[0].gateway.split("/")[0] if self.ipv4 and self.ipv4[0].gateway else ""

    @property
    def gateway_v6(self) -> str:
        return self.ipv6[0].gateway.split("/")[0] if self.ipv6 and self.ipv6[0].gateway else ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Network":
        d = dict(d)
        d["ipv4"] = [IPData(**x) for x in d.get("ipv4", [])]
        d["ipv6"] = [IPData(**x) for x in d.get("ipv6", [])]
        return cls(**d)


@dataclass
class Endpoint:
    id: str
    network_id: str
    address: str = ""          # CIDR form
    address_v6: str = ""       # CIDR form
    mac: str = ""
    options: dict = field(default_factory=dict)
    sandbox_key: str = ""      # netns path once joined
    ports: list[PortMapping] = field(default_factory=list)   # resolved (host ports chosen)
    exposed: list[dict] = field(default_factory=list)
    external: bool = False     # ProgramExternalConnectivity done
    container_id: str = ""     # CNI: CNI_CONTAINERID
    ifname: str = ""           # CNI: CNI_IFNAME
    driver_state: dict = field(default_factory=dict)

    @property
    def ip(self) -> str:
        return self.address.split("/")[0] if self.address else ""

    @property
    def ip6(self) -> str:
        return self.address_v6.split("/")[0] if self.address_v6 else ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Endpoint":
        d = dict(d)
        d["ports"] = [PortMapping(**p) for p in d.get("ports", [])]
        return cls(**d)


@dataclass
class StaticRoute:
    destination: str
    next_hop: str = ""
    route_type: int = 0        # libnetwork: 0 = next hop, 1 = connected


@dataclass
class JoinInfo:
    """What a driver hands back on join; each front end renders it."""
    src_name: str                     # the interface to move into the sandbox
    dst_prefix: str = "eth"
    gateway: str = ""
    gateway_v6: str = ""
    static_routes: list[StaticRoute] = field(default_factory=list)
    disable_gateway_service: bool = False
    # endpoint fields the driver wants stored (not rendered to any runtime)
    remember: dict = field(default_factory=dict)


@dataclass
class Sandbox:
    """A network namespace and the endpoints in it (host / none / container
    modes come with the drivers issue)."""
    id: str
    key: str                    # netns path
    mode: str = "netns"         # "netns" | "host" | "none" | "container"
    endpoints: list[str] = field(default_factory=list)
    shares: Optional[str] = None  # container mode: the sandbox whose netns is joined

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Sandbox":
        return cls(**d)
