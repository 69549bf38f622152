"""The driver interface (API v2), in CNM lifecycle order.

A driver is given the side-effect interfaces (Netlink, Sysctl, Firewall) when
it is built and keeps no state of its own: each call receives the stored
Network/Endpoint.  What a driver must remember it hands back, and the
controller persists it:

- ``create_network`` returns the network's ``driver_state`` (or None);
- ``create_endpoint``, ``join`` and ``program_external_connectivity`` may still
  fill ``ep.mac``/``ep.driver_state`` of the endpoint they are given: the
  controller stores that endpoint right after the call;
- ``restore`` returns a :class:`Remember` -- the records it changed (a veth pair
  recreated under a new name, a MAC chosen) -- and the controller stores them.
  Before v2 restore changed the records in place and nothing saved them.

Scope (``scope``): ``"local"`` -- everything a network has lives on one host --
or ``"global"``: the network also has cluster-wide resources (a VNI, a pool
shared by hosts), allocated once per network by ``allocate_network`` and
released by ``free_network``, apart from the per-host instantiation
``create_network``/``delete_network`` (the bridge, the VXLAN device).  Docker
calls the first pair ``AllocateNetwork``/``FreeNetwork``; pynet keeps telling
dockerd ``local`` (see the README's driver section) and carries the cluster
scope inside.

Peer events: a global driver learns from the store's watch that another host's
endpoint appeared or vanished (``peer_added``/``peer_removed``); the
controller routes each event to the driver of its network
(``Controller.route_peer_event``).

Everything the front ends used to know about a driver is a hook here, with a
default in :class:`DriverBase`: what a CNI conflist key means
(``cni_netconf``/``cni_compare``), what CNI CHECK verifies on the host side
(``check_endpoint``), what GC removes (``orphan_links``), the firewall rules
(``firewall_network``/``firewall_endpoint``/``firewall_affects``), the example
conflist of ``pynet cni install`` (``cni_example``), the conflist a scenario
derives from a Docker network's options (``cni_from_options``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

from pynet.cnm.model import Endpoint, JoinInfo, Network

LOCAL = "local"
GLOBAL = "global"


@dataclass
class Remember:
    """Record changes a driver hands back for the controller to store:
    ``networks``: network id -> {field: value}; ``endpoints``: (network id,
    endpoint id) -> {field: value}.  Fields are those of Network/Endpoint
    (``driver_state``, ``mac``...)."""
    networks: dict = field(default_factory=dict)
    endpoints: dict = field(default_factory=dict)

    def network(self, net: Network, **fields) -> None:
        self.networks.setdefault(net.id, {}).update(fields)

    def endpoint(self, ep: Endpoint, **fields) -> None:
        self.endpoints.setdefault((ep.network_id, ep.id), {}).update(fields)

    def __bool__(self) -> bool:
        return bool(self.networks or self.endpoints)


@dataclass
class CniNetConf:
    """What a driver reads from its CNI plugin entry (``cni_netconf``):
    the network's driver options, whether the network has a gateway address
    and a default route via it in the container, and the settings the driver
    compares with an existing network (``cni_compare``)."""
    options: dict = field(default_factory=dict)
    is_gateway: bool = False
    is_default_gateway: bool = False
    settings: dict = field(default_factory=dict)


@dataclass
class PeerEvent:
    """Another host's endpoint appeared (``added``) or vanished, in
    ``network_id``; ``value`` is the stored record (None when vanished)."""
    network_id: str
    key: str
    added: bool
    value: object = None
    revision: int = 0


class Driver(Protocol):
    name: str
    scope: str

    def validate_network(self, net: Network, others: list[Network]) -> None:
        """Raise InvalidOption/Conflict before anything is created."""

    def allocate_network(self, net: Network) -> Optional[dict]:
        """Cluster-wide resources of a global network (once per network);
        returns what to remember (stored with the network) or None."""

    def free_network(self, net: Network) -> None: ...

    def create_network(self, net: Network) -> Optional[dict]:
        """The per-host instantiation; returns the network's driver_state."""

    # Drivers return what must be remembered (endpoint fields: ``mac``,
    # ``driver_state``...) instead of changing the records they are handed;
    # the controller stores it.
    def plan_endpoint(self, net: Network, ep: Endpoint) -> Optional[dict]:
        """The endpoint's fields known before anything is made -- the names
        of its links (derived from its ID), its MAC when the runtime chose
        none -- with no kernel change.  The controller records them BEFORE
        ``create_endpoint``, so a process killed while the links are made
        leaves a record that names them: DEL, GC and restore() remove them by
        name, tagged or not (the alias is set in a second netlink request)."""

    def create_endpoint(self, net: Network, ep: Endpoint) -> Optional[dict]:
        """Make the endpoint's links (``ep`` carries the planned fields);
        returns more fields to remember, or None."""

    def join(self, net: Network, ep: Endpoint, sandbox_key: str) -> JoinInfo:
        """``JoinInfo.remember``: endpoint fields to store (e.g. the names of
        a pair recreated because it had vanished)."""

    def program_external_connectivity(self, net: Network, ep: Endpoint) -> Optional[dict]:
        """``ep.ports`` holds the chosen host ports; the firewall is synced by
        the controller afterwards.  Returns endpoint fields to remember, or None."""

    def revoke_external_connectivity(self, net: Network, ep: Endpoint) -> None: ...

    def leave(self, net: Network, ep: Endpoint) -> None: ...

    def delete_endpoint(self, net: Network, ep: Endpoint) -> None:
        """Must succeed when the kernel objects are already gone."""

    def delete_network(self, net: Network) -> None:
        """Must succeed when the kernel objects are already gone."""

    def forget_endpoint(self, net: Network, endpoint_id: str) -> list[str]:
        """Remove the kernel objects an interrupted create_endpoint left for
        ``endpoint_id`` although no record of it exists (only those tagged
        for it); returns their names."""

    def restore(self, networks: list[Network], endpoints: list[Endpoint], keep=()) -> Optional[Remember]:
        """Make the kernel match the stored state (daemon start); leave the
        objects of the endpoint IDs in ``keep`` (attachments in flight).
        Returns the record changes to store (not made in place)."""

    def oper_info(self, net: Network, ep: Endpoint) -> dict: ...

    def peer_added(self, net: Network, event: PeerEvent) -> None: ...

    def peer_removed(self, net: Network, event: PeerEvent) -> None: ...


class DriverBase:
    """Defaults of the optional hooks: a local driver with no firewall rules,
    no conflist keys of its own, nothing for CHECK/GC beyond the core's."""
    name = ""
    scope = LOCAL

    # ---- cluster scope
    def allocate_network(self, net: Network) -> Optional[dict]:
        return None

    def free_network(self, net: Network) -> None:
        return None

    def peer_added(self, net: Network, event: PeerEvent) -> None:
        return None

    def peer_removed(self, net: Network, event: PeerEvent) -> None:
        return None

    # ---- lifecycle defaults
    def validate_network(self, net: Network, others: list[Network]) -> None:
        return None

    def plan_endpoint(self, net: Network, ep: Endpoint) -> Optional[dict]:
        return None

    def program_external_connectivity(self, net: Network, ep: Endpoint) -> None:
        return None

    def revoke_external_connectivity(self, net: Network, ep: Endpoint) -> None:
        return None

    def leave(self, net: Network, ep: Endpoint) -> None:
        return None

    def forget_endpoint(self, net: Network, endpoint_id: str) -> list[str]:
        return []

    def restore(self, networks, endpoints, keep=()) -> Optional[Remember]:
        return None

    def oper_info(self, net: Network, ep: Endpoint) -> dict:
        return {}

    def gateways(self, net: Network) -> tuple[str, str]:
        """The gateways a join hands the sandbox (what CHECK expects as its
        default routes): none on an internal network."""
        if net.internal:
            return "", ""
        return net.gateway_v4, net.gateway_v6

    # ---- firewall: what this driver's networks and endpoints contribute
    def firewall_network(self, net: Network):
        """A ``pynet.firewall.NetworkSpec`` of the network, or None (no rules)."""
        return None

    def firewall_endpoint(self, net: Network, ep: Endpoint):
        """A ``pynet.firewall.EndpointSpec`` of the endpoint, or None."""
        return None

    def firewall_affects(self, net: Network, ep: Endpoint) -> bool:
        """Whether the endpoint has rules of its own (a sync is needed when it
        changes)."""
        return False

    # ---- CNI
    @classmethod
    def cni_netconf(cls, conf: dict) -> CniNetConf:
        """This driver's keys of a CNI plugin entry -> CniNetConf; raises
        InvalidOption (code 7) naming the key."""
        return CniNetConf()

    @classmethod
    def cni_compare(cls, settings: dict, net: Network) -> list[str]:
        """How an existing network differs from ``settings`` (cni_netconf's)."""
        return []

    @classmethod
    def cni_example(cls) -> Optional[dict]:
        """The example conflist ``pynet cni install`` writes for this driver:
        {"name": network name, "plugin": the plugin entry without ``type``},
        or None."""
        return None

    @classmethod
    def cni_from_options(cls, options: dict) -> dict:
        """Conflist keys that describe a network with these driver options
        (a scenario attaching CNI pods to a Docker-made network)."""
        return {}

    @classmethod
    def cni_defaults(cls) -> dict:
        """Conflist keys a scenario sets for this driver's CNI networks."""
        return {}

    def host_interfaces(self, net: Network, ep: Endpoint) -> list[str]:
        """Host-side interfaces a CNI result lists before the container's."""
        return []

    def check_endpoint(self, net: Network, ep: Endpoint, host_netlink) -> list[str]:
        """CNI CHECK: what is wrong with the endpoint's host side (one line each)."""
        return []

    def cni_status(self, net: Optional[Network]) -> None:
        """CNI STATUS: raise (a typed error) while the driver cannot serve an ADD; ``net``:
        the conflist's network, None before its first ADD.  Local drivers: always ready."""
        return None

    def orphan_links(self, net: Network, links, known: set) -> list:
        """CNI GC: of ``links`` (this instance's tagged links, as
        ``(link, object id)``), those of this network no record explains
        (``known``: IDs of every stored network, endpoint and attachment in
        flight) -- GC deletes them."""
        return []

    @classmethod
    def check_published_address(cls, host_ip: str) -> bool:
        """Whether a published port's host address is usable on this host."""
        return True
