"""Small stateful fakes of the driver and firewall interfaces, shared by the
contract tests and the controller/CLI unit tests.

``FakeDriver`` models the kernel as a set of link names: creating something
that exists fails like the kernel (EEXIST), deleting something missing
succeeds (the driver contract).  Failures are injected the way the reference
capture injected them: the network option ``probe.fail=<Verb>`` makes that
verb fail for the network (``CreateNetwork``, ``CreateEndpoint``, ``Join``,
``DeleteNetwork``; ``ProgramExternalConnectivity`` fails in FakeFirewall,
since the controller programs ports through the firewall).
"""
from __future__ import annotations

from pynet import errors
from pynet.cnm.model import Endpoint, JoinInfo, Network, StaticRoute

FAIL_OPTION = "probe.fail"


class FakeDriver:
    name = "bridge"

    def __init__(self, name: str = "bridge", gateway_in_join: bool = True):
        self.name = name
        self.gateway_in_join = gateway_in_join
        self.links: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.fail_next: dict[str, Exception] = {}

    # --- helpers ---
    @staticmethod
    def bridge_name(net: Network) -> str:
        return "br-" + net.id[:12]

    @staticmethod
    def veth_name(ep: Endpoint) -> str:
        return "veth" + ep.id[:7]

    def _maybe_fail(self, verb: str, net: Network) -> None:
        self.calls.append((verb, net.id))
        if verb in self.fail_next:
            raise self.fail_next.pop(verb)
        if net.options.get(FAIL_OPTION) == verb:
            raise errors.KernelError(f"fake: injected failure in {verb}")

    # --- Driver interface ---
    def validate_network(self, net: Network, others: list[Network]) -> None:
        mtu = net.options.get("com.docker.network.driver.mtu")
        if mtu is not None:
            try:
                if not 68 <= int(mtu) <= 65535:
                    raise ValueError
            except (TypeError, ValueError):
                raise errors.InvalidOption(f"invalid MTU {mtu!r}") from None

    def create_network(self, net: Network) -> None:
        self._maybe_fail("CreateNetwork", net)
        br = self.bridge_name(net)
        if br in self.links:
            raise errors.KernelError(f"link {br} exists")
        self.links.add(br)
        net.driver_state["bridge"] = br

    def delete_network(self, net: Network) -> None:
        self._maybe_fail("DeleteNetwork", net)
        self.links.discard(self.bridge_name(net))

    def create_endpoint(self, net: Network, ep: Endpoint) -> None:
        self._maybe_fail("CreateEndpoint", net)
        veth = self.veth_name(ep)
        if veth in self.links:
            raise errors.KernelError(f"link {veth} exists")
        self.links.add(veth)
        if not ep.mac:
            ip = ep.ip or "0.0.0.0"
            if ":" in ip:
                ip = "0.0.0.0"
            ep.mac = "02:42:" + ":".join(f"{int(o):02x}" for o in ip.split("."))
        ep.driver_state["veth"] = veth

    def delete_endpoint(self, net: Network, ep: Endpoint) -> None:
        self.calls.append(("DeleteEndpoint", ep.id))
        self.links.discard(self.veth_name(ep))

    def join(self, net: Network, ep: Endpoint, sandbox_key: str) -> JoinInfo:
        self._maybe_fail("Join", net)
        routes = []
        if net.options.get("probe.route"):
            routes.append(StaticRoute(destination=net.options["probe.route"], route_type=1))
        gw_disabled = net.options.get("probe.gw") == "disable" or net.internal
        return JoinInfo(src_name=self.veth_name(ep) + "c", dst_prefix="eth",
                        gateway="" if gw_disabled or not self.gateway_in_join else net.gateway_v4,
                        gateway_v6="" if gw_disabled or not self.gateway_in_join else net.gateway_v6,
                        static_routes=routes, disable_gateway_service=gw_disabled)

    def leave(self, net: Network, ep: Endpoint) -> None:
        self.calls.append(("Leave", ep.id))

    def program_external_connectivity(self, net, ep) -> None:
        self.calls.append(("ProgramExternalConnectivity", ep.id))

    def revoke_external_connectivity(self, net, ep) -> None:
        self.calls.append(("RevokeExternalConnectivity", ep.id))

    def restore(self, networks, endpoints, keep=()) -> None:
        for n in networks:
            self.links.add(self.bridge_name(n))
        for e in endpoints:
            self.links.add(self.veth_name(e))

    def oper_info(self, net: Network, ep: Endpoint) -> dict:
        return {"bridge": self.bridge_name(net), "veth": self.veth_name(ep)}


class FakeFirewall:
    """Records each sync; fails when an endpoint with published ports sits on
    a network carrying ``probe.fail=ProgramExternalConnectivity``."""

    def __init__(self):
        self.synced: list[tuple[int, int]] = []
        self.published: list[tuple[str, int, int]] = []

    def sync(self, networks, endpoints, force: bool = False, changed=None) -> None:
        fail_nets = {n.id for n in networks
                     if n.options.get(FAIL_OPTION) == "ProgramExternalConnectivity"}
        for e in endpoints:
            if e.external and e.network_id in fail_nets:
                raise errors.KernelError("fake: injected failure in ProgramExternalConnectivity")
        self.synced.append((len(networks), len(endpoints)))
        self.published = [(p.proto, p.host_port, p.container_port)
                          for e in endpoints if e.external for p in e.ports]


def create_endpoint(drv, net, ep):
    """A driver's endpoint made as the controller makes it (driver API v2):
    ``plan_endpoint``, then ``create_endpoint``, the fields each hands back set
    on ``ep`` (drivers no longer change the record they are given).  Returns ``ep``."""
    for step in (drv.plan_endpoint, drv.create_endpoint):
        for name, value in (step(net, ep) or {}).items():
            setattr(ep, name, value)
    return ep
