"""Network drivers, and the one table that names them.

Each module is one driver class implementing :class:`pynet.cnm.driver.Driver`
(most subclass :class:`pynet.cnm.driver.DriverBase` for the optional hooks),
built with the side-effect interfaces (Netlink, Sysctl, ...) it needs.

Adding a driver is ``pynet/drivers/<name>.py`` and one line in
:data:`REGISTRY`.  Nothing else in pynet names a driver: the front ends and the
core reach a driver's behaviour -- its conflist keys, what CNI CHECK verifies and
GC removes, its firewall rules, its example conflist, its scope -- only through
the driver objects of the controller's registry (``controller.driver(name)``),
and the CNI plugin binary of a driver is ``pynet-<name>``.

The table holds import paths, not classes: a driver module is imported when
the driver is first used (:class:`Drivers` builds lazily), so a CNI ADD on a
bridge network never imports another driver's module.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Iterable, Optional

# name -> "module:Class".  One line per driver.
REGISTRY: dict[str, str] = {
    "bridge": "pynet.drivers.bridge:BridgeDriver",
    "macvlan": "pynet.drivers.macvlan:MacvlanDriver",
    "overlay": "pynet.drivers.overlay:OverlayDriver",
}

CNI_PREFIX = "pynet-"


def names() -> list[str]:
    return list(REGISTRY)


def cni_plugin_name(driver: str) -> str:
    """The CNI plugin binary (conflist ``type``) of a driver."""
    return CNI_PREFIX + driver


def driver_class(name: str):
    """The class registered as ``name`` (its module imported now).  KeyError
    for a name not in the table."""
    module, _, cls = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def contributes_firewall(name: str) -> bool:
    """Whether networks of driver ``name`` get forwarding rules of their own
    (the driver overrides ``firewall_network``); False for an unknown name."""
    from pynet.cnm.driver import DriverBase

    try:
        cls = driver_class(name)
    except (KeyError, ImportError, AttributeError):
        return False
    return getattr(cls, "firewall_network", None) not in (None, DriverBase.firewall_network)


class Drivers(Mapping):
    """Driver name -> driver, each built on first use with the side-effect
    interfaces given here.  A plain Mapping to the controller."""

    def __init__(self, build, names: Iterable[str]):
        self._build = build
        self._names = list(names)
        self._built: dict = {}

    def __getitem__(self, name: str):
        if name not in self._names:
            raise KeyError(name)
        drv = self._built.get(name)
        if drv is None:
            drv = self._built[name] = self._build(name)
        return drv

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def built(self) -> dict:
        """The drivers built so far (no import of the others)."""
        return dict(self._built)


def build_drivers(netlink, sysctl, firewall=None, instance: str = "pynet",
                  names: Optional[Iterable[str]] = None, cluster=None) -> Drivers:
    """The registered drivers (or those in ``names``), built lazily.  Every
    driver class takes ``(netlink, sysctl, instance=...)``; one whose
    constructor also names ``firewall`` gets the firewall interface, one that
    names ``cluster`` this host's cluster handle (``pynet.cluster.Cluster``,
    None when the host is in no cluster)."""
    import inspect

    chosen = list(REGISTRY) if names is None else [n for n in names]
    for n in chosen:
        if n not in REGISTRY:
            raise KeyError(f"unknown driver {n!r} (registered: {', '.join(REGISTRY)})")

    def build(name: str):
        cls = driver_class(name)
        kw = {"instance": instance}
        if "firewall" in inspect.signature(cls).parameters:
            kw["firewall"] = firewall
        if "cluster" in inspect.signature(cls).parameters:
            kw["cluster"] = cluster
        return cls(netlink, sysctl, **kw)

    return Drivers(build, chosen)
