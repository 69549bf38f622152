"""A tiny driver that no pynet module knows: what a third-party driver is.

``toy``: a veth pair per endpoint, no bridge (the host end stays up, alone);
one conflist key of its own (``toyLabel`` -> option ``toy.label``, compared
with an existing network).  Registered by the tests that use it with one line
(``pynet.drivers.REGISTRY["toy"] = "tests.support.toy_driver:ToyDriver"``),
exactly as a driver in ``pynet/drivers/`` would be.
"""
from __future__ import annotations

import hashlib

from pynet import errors
from pynet.cnm.driver import CniNetConf, DriverBase, Remember
from pynet.cnm.model import Endpoint, JoinInfo, Network

OPT_LABEL = "toy.label"


def _names(endpoint_id: str) -> tuple[str, str]:
    h = hashlib.sha256(endpoint_id.encode()).hexdigest()[:11]
    return "ty" + h, "tc" + h


class ToyDriver(DriverBase):
    name = "toy"
    scope = "local"

    def __init__(self, netlink, sysctl=None, instance: str = "pynet"):
        self.nl = netlink
        self.instance = instance
        self.calls: list[str] = []

    def validate_network(self, net: Network, others) -> None:
        if str(net.options.get(OPT_LABEL, "")).startswith("-"):
            raise errors.InvalidOption(f"invalid {OPT_LABEL} {net.options[OPT_LABEL]!r}")

    def create_network(self, net: Network) -> dict:
        self.calls.append("create_network")
        return {"label": str(net.options.get(OPT_LABEL, ""))}

    def create_endpoint(self, net: Network, ep: Endpoint) -> None:
        host, cont = _names(ep.id)
        self.nl.add_veth(host, cont, mac=None, peer_mac=ep.mac or None,
                         alias=f"pynet:{self.instance}:{ep.id}")
        self.nl.set_up(host)
        ep.driver_state = {"host": host, "container": cont}

    def join(self, net: Network, ep: Endpoint, sandbox_key: str) -> JoinInfo:
        return JoinInfo(src_name=_names(ep.id)[1], gateway=net.gateway_v4, disable_gateway_service=True)

    def delete_endpoint(self, net: Network, ep: Endpoint) -> None:
        self.nl.delete_link(_names(ep.id)[0], missing_ok=True)

    def delete_network(self, net: Network) -> None:
        self.calls.append("delete_network")

    def restore(self, networks, endpoints, keep=()) -> Remember:
        return Remember()

    def oper_info(self, net: Network, ep: Endpoint) -> dict:
        return {"host": _names(ep.id)[0]}

    # ---- its conflist key
    @classmethod
    def cni_netconf(cls, conf: dict) -> CniNetConf:
        label = conf.get("toyLabel")
        if label is not None and not isinstance(label, str):
            raise errors.InvalidOption(f"toyLabel must be a string, got {label!r}")
        return CniNetConf(options={OPT_LABEL: label} if label else {}, is_gateway=True,
                          settings={"label": label or ""})

    @classmethod
    def cni_compare(cls, settings: dict, net: Network) -> list[str]:
        have = (net.driver_state or {}).get("label", "")
        if settings.get("label") and settings["label"] != have:
            return [f"toyLabel {have or 'none'} (conflist: {settings['label']})"]
        return []

    def host_interfaces(self, net: Network, ep: Endpoint) -> list[str]:
        return [_names(ep.id)[0]]
