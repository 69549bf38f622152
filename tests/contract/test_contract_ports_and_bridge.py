"""Dynamic host ports (``docker-portmap-dynamic.jsonl``: ``-p 80``,
``-p 8000-8002:81``, ``-P --expose 90``) and the replay with the real bridge
driver on the fake netlink."""
from __future__ import annotations

import pytest

from tests.support.contract import Plugin, load_jsonl, make_ipam, snapshot
from tests.contract.test_contract_replay import Replayer, rounds

from pynet.cnm.controller import Controller, ephemeral_port_range


def test_dynamic_host_ports_are_chosen(plugin, controller, firewall):
    recs = load_jsonl("docker-portmap-dynamic.jsonl")
    nid = recs[0]["request"]["NetworkID"]
    assert plugin.call("NetworkDriver.CreateNetwork", {
        "NetworkID": nid, "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.242.0.0/24",
                                        "Gateway": "10.242.0.1/24"}],
        "IPv6Data": [], "Options": {"com.docker.network.generic": {}}}) == (200, {})
    for rec in recs:
        status, answer = plugin.call(rec["method"], rec["request"])
        assert status == 200, (rec["scenario"], rec["method"], answer)
    lo, hi = ephemeral_port_range()
    eps = {e.id: e for e in controller.endpoints(nid)}
    first = eps[recs[0]["request"]["EndpointID"]]
    second = eps[recs[3]["request"]["EndpointID"]]
    got1 = {(p.proto, p.container_port): p.host_port for p in first.ports}
    assert got1[("tcp", 81)] == 8000                  # first free of 8000-8002
    assert lo <= got1[("tcp", 80)] <= hi              # 0 -> ephemeral range
    got2 = {(p.proto, p.container_port): p.host_port for p in second.ports}
    assert lo <= got2[("tcp", 90)] <= hi
    assert got2[("tcp", 90)] != got1[("tcp", 80)]     # a held port is skipped
    assert first.exposed == [{"proto": "tcp", "port": 81}, {"proto": "tcp", "port": 80}]
    assert sorted(firewall.published) == sorted(
        [("tcp", 8000, 81), ("tcp", got1[("tcp", 80)], 80), ("tcp", got2[("tcp", 90)], 90)])


def test_explicit_port_held_by_another_endpoint_is_409(plugin, controller, store):
    recs = load_jsonl("docker-portmap-dynamic.jsonl")
    nid = recs[0]["request"]["NetworkID"]
    plugin.call("NetworkDriver.CreateNetwork", {
        "NetworkID": nid, "IPv4Data": [{"Pool": "10.242.0.0/24", "Gateway": "10.242.0.1/24"}],
        "Options": {}})
    pm = [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 18099, "HostPortEnd": 18099}]
    for eid, addr in (("a" * 64, "10.242.0.2/24"), ("b" * 64, "10.242.0.3/24")):
        body = {"NetworkID": nid, "EndpointID": eid,
                "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""},
                "Options": {"com.docker.network.portmap": pm}}
        assert plugin.call("NetworkDriver.CreateEndpoint", body)[0] == 200
    req = {"NetworkID": nid, "Options": {"com.docker.network.portmap": pm}}
    assert plugin.call("NetworkDriver.ProgramExternalConnectivity",
                       {**req, "EndpointID": "a" * 64}) == (200, {})
    before = snapshot(store)
    status, answer = plugin.call("NetworkDriver.ProgramExternalConnectivity",
                                 {**req, "EndpointID": "b" * 64})
    assert status == 409 and "18099" in answer["Err"]
    assert snapshot(store) == before
    # after Revoke the port is free again
    assert plugin.call("NetworkDriver.RevokeExternalConnectivity",
                       {"NetworkID": nid, "EndpointID": "a" * 64}) == (200, {})
    assert plugin.call("NetworkDriver.ProgramExternalConnectivity",
                       {**req, "EndpointID": "b" * 64}) == (200, {})


# ---------------------------------------------------------------- bridge
def _bridge_stack():
    pytest.importorskip("pynet.drivers.bridge")
    from pynet.drivers.bridge import BridgeDriver
    from pynet.netlink.fake import FakeNetlink
    from pynet.plugin_api.app import create_app
    from pynet.store.memory import MemoryStore
    from pynet.sysctl import FakeSysctl

    store = MemoryStore()
    nl = FakeNetlink()
    drv = BridgeDriver(nl, FakeSysctl(), instance="contract")
    c = Controller(store, make_ipam(store), {"bridge": drv})
    return store, nl, c, Plugin(create_app(c).test_client())


@pytest.mark.parametrize("round_name", ["r1-no-gateway-in-join", "r2-gateway-in-join"])
def test_replay_with_bridge_driver_on_fake_netlink(round_name):
    store, nl, c, plugin = _bridge_stack()
    recs = rounds()[round_name]

    class BridgeReplayer(Replayer):
        def check_NetworkDriver_Join(self, probe_req, req, answer, probe, where):
            assert set(answer["InterfaceName"]) == {"SrcName", "DstPrefix"}
            assert 0 < len(answer["InterfaceName"]["SrcName"].encode()) <= 15
            net_req = self.networks[req["NetworkID"]]
            if not net_req["Options"].get("com.docker.network.internal"):
                assert answer["Gateway"] == net_req["IPv4Data"][0]["Gateway"].split("/")[0], where
            for r in answer["StaticRoutes"]:
                assert set(r) == {"Destination", "RouteType", "NextHop"}

        def check_NetworkDriver_ProgramExternalConnectivity(self, *a):
            pass

    firewall = type("NoFirewall", (), {"published": []})()
    r = BridgeReplayer(plugin, c, firewall)
    if not any(x["method"] == "IpamDriver.GetDefaultAddressSpaces" for x in recs):
        plugin.call("IpamDriver.GetDefaultAddressSpaces")
    for rec in recs:
        r.send(rec)
    assert c.networks() == [] and c.endpoints() == [] and c.ipam.list_pools() == []
    # every link pynet made is gone again
    leftovers = [name for name in nl.kernel.ns(None).links if name != "lo"]
    assert leftovers == []
