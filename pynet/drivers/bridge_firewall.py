"""The drivers' firewall: stored CNM objects -> the firewall's specs (each
driver contributes its networks' and endpoints' rules; the bridge driver's
are Docker's bridge layout, the macvlan driver has none).

The controller calls ``sync(networks, endpoints, changed=ids)`` after every
change (only those owners' rules are touched) and ``sync(networks, endpoints)``
on restore() and the periodic re-check (the whole desired rule set from the
store, compared with the kernel's tables).  Networks are rendered newest first, the order in which
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
from pynet.firewall import Firewall

log = logging.getLogger("pynet.drivers.bridge_firewall")

FOREIGN_BRIDGES = ("docker0", "br-+", "pn-+")
FOREIGN_KEY = "firewall/foreign-bridges"  # dockerd's custom-named bridges, learned by the daemon


class BridgeFirewall:
    """The firewall of the drivers' networks.  The name stays from when it knew
    only bridges; now each driver contributes its own rules
    (``firewall_network``/``firewall_endpoint``/``firewall_affects``, see
    :mod:`pynet.cnm.driver`) and this adapter only orders, collects and
    degrades per owner.  The controller hands it its drivers
    (:meth:`use_drivers`); without them (a firewall built alone) the
    registered drivers contribute from the records.  A driver object without
    the hooks (before API v2) under ``driver_name`` gets the bridge's rules."""

    def __init__(self, firewall: Firewall, driver_name: str = "bridge",
                 isolate_from=FOREIGN_BRIDGES, store=None, drivers=None):
        self.firewall = firewall
        self.driver_name = driver_name
        self.store = store
        self.drivers = drivers
        self._registry = None
        self._isolate_base = tuple(isolate_from) if isolate_from is not None else None
        if isolate_from is not None:
            firewall.isolate_from = tuple(isolate_from)
        self._last_applied = None  # the rendering the kernel got last
        self.problems: dict[str, str] = {}  # owners skipped by the last sync -> why

    def use_drivers(self, drivers) -> None:
        """The controller's driver registry (name -> driver)."""
        self.drivers = drivers

    def _driver(self, name: str):
        """The driver contributing the rules of networks of ``name``, or None."""
        drivers = self.drivers
        if drivers is None:
            # a firewall built alone (``pynet firewall show``): the registered
            # drivers' rules, from the records only -- no kernel interface needed
            if self._registry is None:
                from pynet.drivers import build_drivers
                self._registry = build_drivers(None, None, instance="pynet")
            drivers = self._registry
        try:
            drv = drivers.get(name)
        except Exception:  # noqa: BLE001 -- a driver that cannot be built has no rules here
            drv = None
        if drv is not None and hasattr(drv, "firewall_network"):
            return drv
        if name == self.driver_name:
            # a firewall built alone, or a driver object of before API v2 under
            # the bridge's name: the bridge driver's records, its rules
            from pynet.drivers import bridge
            return bridge
        return None

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
        """Whether ``ep`` has rules of its own (its driver says: published
        ports, anti-spoofing...).  Everything else about an endpoint is covered
        by its network's rules."""
        drv = self._driver(net.driver)
        affects = getattr(drv, "firewall_affects", None)
        return bool(affects(net, ep)) if affects is not None else False

    def specs(self, networks: list[Network], endpoints: list[Endpoint], problems: dict | None = None):
        """The firewall's specs of the stored networks and endpoints, as their
        drivers contribute them.  A record that cannot even be read as a spec
        is skipped and recorded in ``problems`` (raised without it)."""
        ordered = sorted(networks, key=lambda n: (n.created_at, n.id), reverse=True)
        net_specs, mine = [], {}
        for n in ordered:
            drv = self._driver(n.driver)
            contribute = getattr(drv, "firewall_network", None)
            if contribute is None:
                continue
            try:
                spec = contribute(n)
            except Exception as e:  # noqa: BLE001 -- a damaged record costs its own rules only
                if problems is None:
                    raise
                problems[n.id] = f"network {n.id}: unreadable record: {e!r}"
                continue
            if spec is not None:
                net_specs.append(spec)
                mine[n.id] = (n, drv)
        ep_specs = []
        for e in endpoints:
            if e.network_id not in mine:
                continue
            n, drv = mine[e.network_id]
            contribute = getattr(drv, "firewall_endpoint", None)
            if contribute is None:
                continue
            try:
                spec = contribute(n, e)
            except Exception as err:  # noqa: BLE001
                if problems is None:
                    raise
                problems[e.id] = f"endpoint {e.id}: unreadable record: {err!r}"
                continue
            if spec is not None:
                ep_specs.append(spec)
        return net_specs, ep_specs

    def _report(self, problems: dict[str, str]) -> None:
        """Log each refused owner once (not on every re-check), and its recovery."""
        for owner, why in sorted(problems.items()):
            if self.problems.get(owner) != why:
                log.error("firewall: skipped %s (its rules are not applied; everything else is)", why)
        for owner in sorted(set(self.problems) - set(problems)):
            log.info("firewall: %s renders again", owner)
        self.problems = dict(problems)

    def sync(self, networks: list[Network], endpoints: list[Endpoint], force: bool = False,
             changed=None) -> None:
        """Apply the desired rules.  ``changed``: the ids of the networks and
        endpoints whose rules the caller added, changed or removed; only their
        rules are touched (Firewall.apply's per-change path: no reading or
        rendering of everything else).  None (daemon start) or ``force`` (the
        periodic re-check, which is what notices someone else changing the
        tables): the full reconcile; without ``force`` an unchanged rendering
        is not applied again.  Owners the renderer refuses are skipped and
        reported (:attr:`problems`)."""
        self._load_foreign()
        problems: dict[str, str] = {}
        nets, eps = self.specs(networks, endpoints, problems)
        if changed is not None and not force:
            self._last_applied = None  # this process no longer knows the whole rendering
            found: dict[str, str] = {}
            changed = set(changed)
            try:
                self.firewall.apply(nets, eps, problems=found, changed=changed)
            finally:
                # the change screened its own owners only: the others keep what they had
                ids = {n.id for n in networks} | {e.id for e in endpoints}
                kept = {o: why for o, why in self.problems.items() if o not in changed and o in ids}
                self._report({**kept, **problems, **found})
            return
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
