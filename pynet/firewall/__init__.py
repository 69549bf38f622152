"""pynet firewall: Docker 20.10's bridge iptables layout (plus Docker 28's explicit drop of
unpublished ports) as data, applied atomically.

See :mod:`pynet.firewall.firewall` for the coexistence-with-dockerd choice,
:mod:`pynet.firewall.render` for the layout and :mod:`pynet.firewall.backend`
for backend detection.
"""
from .backend import IptcBackend, LegacyRestoreBackend, NftBackend, detect
from .firewall import Firewall
from .model import IPV4, IPV6, EndpointSpec, NetworkSpec, PortMapping, Rule, Ruleset
from .ports import allocate_host_port, ephemeral_range
from .reconcile import parse_save

__all__ = [
    "Firewall", "NetworkSpec", "PortMapping", "EndpointSpec", "Rule", "Ruleset",
    "allocate_host_port", "ephemeral_range", "parse_save", "detect",
    "NftBackend", "IptcBackend", "LegacyRestoreBackend", "IPV4", "IPV6",
]
