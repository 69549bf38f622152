"""The driver interface, in CNM lifecycle order.

A driver is given the side-effect interfaces (Netlink, Firewall, Sysctl) when
it is built and keeps no state of its own: each call receives the stored
Network/Endpoint, and whatever the driver must remember it writes into
``driver_state`` before returning; the controller persists it.
"""
from __future__ import annotations

from typing import Protocol

from pynet.cnm.model import Endpoint, JoinInfo, Network


class Driver(Protocol):
    name: str

    def validate_network(self, net: Network, others: list[Network]) -> None:
        """Raise InvalidOption/Conflict before anything is created."""

    def create_network(self, net: Network) -> None: ...

    def create_endpoint(self, net: Network, ep: Endpoint) -> None:
        """May fill ``ep.mac`` when the runtime did not choose one."""

    def join(self, net: Network, ep: Endpoint, sandbox_key: str) -> JoinInfo: ...

    def program_external_connectivity(self, net: Network, ep: Endpoint) -> None:
        """``ep.ports`` holds the chosen host ports; the firewall is synced by
        the controller afterwards."""

    def revoke_external_connectivity(self, net: Network, ep: Endpoint) -> None: ...

    def leave(self, net: Network, ep: Endpoint) -> None: ...

    def delete_endpoint(self, net: Network, ep: Endpoint) -> None:
        """Must succeed when the kernel objects are already gone."""

    def delete_network(self, net: Network) -> None:
        """Must succeed when the kernel objects are already gone."""

    def forget_endpoint(self, net: Network, endpoint_id: str) -> list[str]:
        """Remove the kernel objects an interrupted create_endpoint left for
        ``endpoint_id`` although no record of it exists (only those tagged
        for it); returns their names.  Optional: the controller skips a
        driver without it."""

    def restore(self, networks: list[Network], endpoints: list[Endpoint], keep=()) -> None:
        """Make the kernel match the stored state (daemon start); leave the
        objects of the endpoint IDs in ``keep`` (attachments in flight)."""

    def oper_info(self, net: Network, ep: Endpoint) -> dict: ...
