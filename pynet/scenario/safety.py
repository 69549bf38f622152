"""The runner's safety rules, checked before every send (in the runner and
again inside the probe agent that sends):

* the sending namespace is one the runner created, never the machine's root
  namespace;
* an explicit interface is one the runner created in that namespace;
* the destination address belongs to the topology (underlay subnet, the
  scenario's networks and the addresses pynet handed out) and is never in
  192.0.2.0/24.
"""
from __future__ import annotations

import ipaddress
from typing import Iterable, Optional

from pynet import errors

FORBIDDEN = [ipaddress.ip_network("192.0.2.0/24")]


class SafetyError(errors.InvalidParameter):
    """A send the runner refuses."""


class Guard:
    def __init__(self, nets: Iterable[str] = (), ifaces: Optional[dict[str, Iterable[str]]] = None):
        self.nets = [ipaddress.ip_network(n, strict=False) for n in nets]
        self.ifaces: dict[str, set[str]] = {ns: set(v) for ns, v in (ifaces or {}).items()}

    def add_net(self, cidr: str) -> None:
        n = ipaddress.ip_network(cidr, strict=False)
        if n not in self.nets:
            self.nets.append(n)

    def add_iface(self, ns: str, ifname: str) -> None:
        self.ifaces.setdefault(ns, set()).add(ifname)

    def check_address(self, dst: str) -> None:
        try:
            a = ipaddress.ip_address(dst)
        except ValueError:
            raise SafetyError(f"refused: {dst!r} is not an IP address") from None
        for bad in FORBIDDEN:
            if a in bad:
                raise SafetyError(f"refused: {a} is in {bad}, which is never used")
        if a.is_multicast or a == ipaddress.ip_address("255.255.255.255"):
            raise SafetyError(f"refused: {a} is not a unicast address")
        if not any(a.version == n.version and a in n for n in self.nets):
            raise SafetyError(
                f"refused: {a} is outside the topology ({', '.join(map(str, self.nets)) or 'empty'})")

    def check_iface(self, ns: str, ifname: str) -> None:
        if ns not in self.ifaces:
            raise SafetyError(f"refused: namespace {ns!r} was not created by this run")
        if ifname not in self.ifaces[ns]:
            raise SafetyError(f"refused: interface {ifname!r} in {ns} was not created by this run "
                              f"(known: {', '.join(sorted(self.ifaces[ns]))})")

    def check_send(self, ns: str, dst: str, ifname: Optional[str] = None) -> None:
        if ns not in self.ifaces:
            raise SafetyError(f"refused: namespace {ns!r} was not created by this run")
        self.check_address(dst)
        if ifname is not None:
            self.check_iface(ns, ifname)

    def to_dict(self) -> dict:
        return {"nets": [str(n) for n in self.nets],
                "ifaces": {k: sorted(v) for k, v in self.ifaces.items()}}
