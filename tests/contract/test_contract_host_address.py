"""Docker path: a published port's host address is checked when the mapping is programmed
(issue 9, defect 8 part, and the ``::%x`` of defect 4).

dockerd's requests through the Flask app, with the real Controller, BridgeDriver (fake
netlink), BridgeFirewall and Firewall over a stateful fake iptables backend.  The daemon has
restored (its first sync done) before Docker programs anything, as in real life.  A refused
mapping answers 400 ``{"Err"}`` with one readable line and changes nothing: store and rules
as before.
"""
from __future__ import annotations

import re

import pytest

from tests.support.contract import Plugin, make_ipam, snapshot
from tests.support.fake_iptables import FakeTables

from pynet.cnm.controller import Controller
from pynet.drivers import bridge
from pynet.drivers.bridge import BridgeDriver
from pynet.drivers.bridge_firewall import BridgeFirewall
from pynet.firewall import Firewall
from pynet.netlink.fake import FakeNetlink
from pynet.plugin_api.app import create_app
from pynet.store.memory import MemoryStore
from pynet.sysctl import FakeSysctl

NID, EID = "d" * 64, "e" * 64
LOCAL = {"127.0.0.1", "::1", "10.99.0.1"}
FOREIGN = "198.51.100.77"  # TEST-NET-2: no host has it (and nothing is sent to it)


@pytest.fixture(autouse=True)
def local_addresses(monkeypatch):
    monkeypatch.setattr(bridge, "host_address_is_local", lambda ip: ip in LOCAL, raising=False)


@pytest.fixture
def stack():
    store, tables = MemoryStore(), FakeTables()
    fw = BridgeFirewall(Firewall("PT", backend=tables, sysctl=lambda p, v: None), store=store)
    c = Controller(store, make_ipam(store), {"bridge": BridgeDriver(FakeNetlink(), FakeSysctl(), "contract")},
                   firewall=fw)
    c.restore()  # the daemon's start
    return store, tables, Plugin(create_app(c).test_client())


def portmap(host_ip, port=18090):
    return {"com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": 80, "HostIP": host_ip,
                                            "HostPort": port, "HostPortEnd": port}]}


def setup_endpoint(plugin, options=None):
    assert plugin.call("NetworkDriver.CreateNetwork", {
        "NetworkID": NID, "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.242.0.0/24",
                                        "Gateway": "10.242.0.1/24"}],
        "IPv6Data": [], "Options": {"com.docker.network.generic": options or {}}}) == (200, {})
    body = {"NetworkID": NID, "EndpointID": EID,
            "Interface": {"Address": "10.242.0.2/24", "AddressIPv6": "", "MacAddress": ""}, "Options": {}}
    assert plugin.call("NetworkDriver.CreateEndpoint", body)[0] == 200
    assert plugin.call("NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID,
                                              "SandboxKey": "/var/run/docker/netns/x", "Options": {}})[0] == 200


def rules(tables):
    return "\n".join(tables.rules("ipv4") + tables.rules("ipv6"))


@pytest.mark.parametrize("host_ip", [FOREIGN, "::%x", "::%lo\nCOMMIT\n*filter\n-I INPUT 1 -j ACCEPT"])
def test_program_with_a_foreign_host_address_is_400_and_changes_nothing(stack, host_ip):
    store, tables, plugin = stack
    setup_endpoint(plugin)
    before, before_rules = snapshot(store), rules(tables)
    status, answer = plugin.call("NetworkDriver.ProgramExternalConnectivity",
                                 {"NetworkID": NID, "EndpointID": EID, "Options": portmap(host_ip)})
    # (refused here by the driver, or already by the front end's address check: either names it)
    assert status == 400 and re.search(r"host ?(ip|address)", answer["Err"], re.I), answer
    assert snapshot(store) == before
    assert rules(tables) == before_rules and "18090" not in before_rules


def test_program_with_a_foreign_host_binding_is_400(stack):
    store, tables, plugin = stack
    setup_endpoint(plugin, {"com.docker.network.bridge.host_binding_ipv4": FOREIGN})
    before = snapshot(store)
    status, answer = plugin.call("NetworkDriver.ProgramExternalConnectivity",
                                 {"NetworkID": NID, "EndpointID": EID, "Options": portmap("")})
    assert status == 400 and "not an address of this host" in answer["Err"], answer
    assert snapshot(store) == before and "18090" not in rules(tables)


def test_program_with_a_local_host_address_is_published(stack):
    store, tables, plugin = stack
    setup_endpoint(plugin)
    assert plugin.call("NetworkDriver.ProgramExternalConnectivity",
                       {"NetworkID": NID, "EndpointID": EID, "Options": portmap("10.99.0.1")}) == (200, {})
    assert "-d 10.99.0.1/32 -p tcp -m tcp --dport 18090" in rules(tables)
