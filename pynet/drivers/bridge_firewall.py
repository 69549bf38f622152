"""The bridge driver's firewall: stored CNM objects -> the firewall's specs.

The controller calls ``sync(networks, endpoints)`` after every change and on
restore(); the whole desired rule set is derived from the store each time (the
firewall then changes only what differs), so there is no second copy of the
state to drift.  Networks are rendered newest first, the order in which
Docker's own blocks end up in FORWARD.

Beside dockerd, Docker's isolation chains know only Docker's networks and
pynet's only pynet's, so the adapter also isolates pynet's networks from the
bridges named as Docker names its own (``docker0``, ``br-<id>``) and as pynet
names those of other pynet instances (``pn-<id>``), in both directions
(``FOREIGN_BRIDGES``; see ``render_family(isolate_from=...)``).  A bridge
given a custom name (``com.docker.network.bridge.name``) by someone else is
not covered.

The firewall degrades per owner, not globally: a stored record the renderer
refuses (a bad address, two programmed endpoints on one host port...) costs
its own rules only.  ``sync`` skips it, applies everything else, logs it once
and keeps it in :attr:`BridgeFirewall.problems` (owner id -> one line) for the
daemon's status; ``pynet firewall diff`` shows it too.  Otherwise one such
record would make every later sync fail, ``restore()`` at daemon start
included (issue 9, defect 6).
"""
from __future__ import annotations

import logging

from pynet.cnm.model import Endpoint, Network
from pynet.firewall import EndpointSpec, Firewall, NetworkSpec, PortMapping

log = logging.getLogger("pynet.drivers.bridge_firewall")

HOST_IPV4_OPTION = "com.docker.network.host_ipv4"
FOREIGN_BRIDGES = ("docker0", "br-+", "pn-+")
FOREIGN_KEY = "firewall/foreign-bridges"  # dockerd's custom-named bridges, learned by the daemon


def _flag(value, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


class BridgeFirewall:
    def __init__(self, firewall: Firewall, driver_name: str = "bridge",
                 isolate_from=FOREIGN_BRIDGES, store=None):
        self.firewall = firewall
        self.driver_name = driver_name
        self.store = store
        self._isolate_base = tuple(isolate_from) if isolate_from is not None else None
        if isolate_from is not None:
            firewall.isolate_from = tuple(isolate_from)
        self._last_applied = None  # the rendering the kernel got last
        self.problems: dict[str, str] = {}  # owners skipped by the last sync -> why

    def set_foreign_bridges(self, names) -> None:
        """Also isolate from these bridges (dockerd's custom-named ones).  Kept
        in the store, so CNI processes and the CLI render the same rules."""
        names = sorted(set(names))
        if self.store is not None:
            rec = self.store.get(FOREIGN_KEY)
            if not names:
                if rec is not None:
                    self.store.delete(FOREIGN_KEY)
            elif rec is None or rec.value != names:
                self.store.put(FOREIGN_KEY, names)
        self._use_foreign(names)

    def _use_foreign(self, names) -> None:
        if self._isolate_base is None:
            return
        self.firewall.isolate_from = self._isolate_base + tuple(
            n for n in names if n not in self._isolate_base)

    def _load_foreign(self) -> None:
        if self.store is not None:
            rec = self.store.get(FOREIGN_KEY)
            self._use_foreign(rec.value if rec else [])

    def affects(self, net: Network, ep: Endpoint) -> bool:
        """Whether ``ep`` has rules of its own: published ports, or the
        anti-spoofing rules of a spoof_check network.  Everything else about
        an endpoint is covered by its network's rules."""
        if net.driver != self.driver_name:
            return False
        return bool(ep.external and ep.ports) or _flag(net.driver_state.get("spoof_check"), False)

    def specs(self, networks: list[Network], endpoints: list[Endpoint], problems: dict | None = None):
        """The firewall's specs of the stored networks and endpoints of this driver.  A
        record that cannot even be read as a spec is skipped and recorded in
        ``problems`` (raised without it)."""
        mine = [n for n in networks if n.driver == self.driver_name and n.driver_state.get("bridge")]
        mine.sort(key=lambda n: (n.created_at, n.id), reverse=True)
        net_specs, binding = [], {}
        for n in mine:
            try:
                st = n.driver_state
                net_specs.append(NetworkSpec(
                    id=n.id, bridge=st["bridge"],
                    subnets_v4=[d.pool for d in n.ipv4], subnets_v6=[d.pool for d in n.ipv6],
                    icc=_flag(st.get("enable_icc"), True), internal=n.internal,
                    masquerade=_flag(st.get("enable_ip_masquerade"), True),
                    host_ipv4=n.options.get(HOST_IPV4_OPTION) or None,
                    spoof_check=_flag(st.get("spoof_check"), False)))
                binding[n.id] = st.get("host_binding_ipv4") or ""
            except Exception as e:  # noqa: BLE001 -- a damaged record costs its own rules only
                if problems is None:
                    raise
                problems[n.id] = f"network {n.id}: unreadable record: {e!r}"
        ep_specs = []
        for e in endpoints:
            if e.network_id not in binding:
                continue
            try:
                ports = [PortMapping(proto=p.proto, host_ip=p.host_ip or binding[e.network_id],
                                     host_port=p.host_port, container_port=p.container_port)
                         for p in (e.ports if e.external else [])]
                ep_specs.append(EndpointSpec(
                    id=e.id, network_id=e.network_id, ipv4=e.ip or None, ipv6=e.ip6 or None,
                    mac=e.mac or None, ports=ports, host_veth=e.driver_state.get("host_veth")))
            except Exception as err:  # noqa: BLE001
                if problems is None:
                    raise
                problems[e.id] = f"endpoint {e.id}: unreadable record: {err!r}"
        return net_specs, ep_specs

    def _report(self, problems: dict[str, str]) -> None:
        """Log each refused owner once (not on every re-check), and its recovery."""
        for owner, why in sorted(problems.items()):
            if self.problems.get(owner) != why:
                log.error("firewall: skipped %s (its rules are not applied; everything else is)", why)
        for owner in sorted(set(self.problems) - set(problems)):
            log.info("firewall: %s renders again", owner)
        self.problems = dict(problems)

    def sync(self, networks: list[Network], endpoints: list[Endpoint], force: bool = False) -> None:
        """Apply the desired rules.  Most changes (an endpoint without ports
        joining, a container leaving) leave the rule set as it was: rendering
        is cheap and reading the kernel's tables is not, so an unchanged
        rendering is not applied again unless ``force`` (the periodic re-check,
        which is what notices someone else changing the tables).  Owners the
        renderer refuses are skipped and reported (:attr:`problems`)."""
        self._load_foreign()
        problems: dict[str, str] = {}
        nets, eps = self.specs(networks, endpoints, problems)
        rendered = self.firewall.render(nets, eps, problems=problems)
        self._report(problems)
        if not force and rendered == self._last_applied:
            return
        self._last_applied = None  # unknown until apply() succeeds
        self.firewall.apply(nets, eps, problems={})  # the same owners skipped again
        self._last_applied = rendered

    def show(self, networks, endpoints, problems: dict | None = None) -> dict[str, str]:
        """The desired restore text per family; refused owners skipped (and recorded in
        ``problems`` if given)."""
        self._load_foreign()
        problems = {} if problems is None else problems
        return self.firewall.render(*self.specs(networks, endpoints, problems), problems=problems)

    def diff(self, networks, endpoints, problems: dict | None = None) -> str:
        """Desired vs the kernel; refused owners are part of the answer (a ``#
        skipped`` line each), since the kernel then lacks what the store says."""
        self._load_foreign()
        problems = {} if problems is None else problems
        text = self.firewall.diff(*self.specs(networks, endpoints, problems), problems=problems)
        head = "".join(f"# skipped {why}\n" for _, why in sorted(problems.items()))
        return head + text

    def remove_all(self) -> None:
        self.firewall.remove_all()
