"""Bad input through the Docker front end: the right status, one-line
``{"Err": ...}``, and the store exactly as it was."""
from __future__ import annotations

import base64
import logging

import pytest

from tests.support.contract import snapshot

NET = "1" * 64
NET2 = "2" * 64
EP = "e" * 64


def create_net(plugin, nid=NET, pool="10.10.0.0/24", gw="10.10.0.1/24", generic=None, **opts):
    body = {"NetworkID": nid,
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": pool, "Gateway": gw}],
            "IPv6Data": [],
            "Options": {"com.docker.network.enable_ipv6": False,
                        "com.docker.network.generic": generic or {}, **opts}}
    return plugin.call("NetworkDriver.CreateNetwork", body)


def endpoint_body(nid=NET, eid=EP, address="10.10.0.2/24", mac="", options=None):
    return {"NetworkID": nid, "EndpointID": eid,
            "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": mac},
            "Options": options if options is not None else
            {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []}}


@pytest.fixture
def with_network(plugin):
    assert create_net(plugin) == (200, {})
    return plugin


def good_net(**over):
    body = {"NetworkID": NET2, "IPv4Data": [{"AddressSpace": "LocalDefault",
                                            "Pool": "10.20.0.0/24", "Gateway": "10.20.0.1/24"}],
            "IPv6Data": [], "Options": {"com.docker.network.generic": {}}}
    body.update(over)
    return body


BAD = [
    # (id, method, body or raw bytes, status, fragment of Err)
    ("malformed json", "NetworkDriver.CreateNetwork", b'{"NetworkID": ', 400, "malformed JSON"),
    ("not utf-8", "NetworkDriver.CreateNetwork", b"\xff\xfe{", 400, "malformed JSON"),
    ("body is an array", "NetworkDriver.CreateNetwork", b"[1, 2]", 400, "JSON object"),
    ("NetworkID number", "NetworkDriver.CreateNetwork", good_net(NetworkID=5), 400, "NetworkID"),
    ("NetworkID missing", "NetworkDriver.CreateNetwork", good_net(NetworkID=""), 400, "NetworkID"),
    ("IPv4Data string", "NetworkDriver.CreateNetwork", good_net(IPv4Data="10.0.0.0/8"), 400, "IPv4Data"),
    ("IPv4Data item string", "NetworkDriver.CreateNetwork", good_net(IPv4Data=["x"]), 400, "IPv4Data[0]"),
    ("Pool missing", "NetworkDriver.CreateNetwork",
     good_net(IPv4Data=[{"Gateway": "10.20.0.1/24"}]), 400, "Pool"),
    ("Options array", "NetworkDriver.CreateNetwork", good_net(Options=[]), 400, "Options"),
    ("generic option nested", "NetworkDriver.CreateNetwork",
     good_net(Options={"com.docker.network.generic": {"x": {"y": 1}}}), 400, "scalar"),
    ("enable_ipv6 number", "NetworkDriver.CreateNetwork",
     good_net(Options={"com.docker.network.enable_ipv6": 3}), 400, "enable_ipv6"),
    ("invalid CIDR", "NetworkDriver.CreateNetwork",
     good_net(IPv4Data=[{"Pool": "10.20.0.0/33", "Gateway": ""}]), 400, "10.20.0.0/33"),
    ("not CIDR", "NetworkDriver.CreateNetwork",
     good_net(IPv4Data=[{"Pool": "banana", "Gateway": ""}]), 400, "banana"),
    ("v6 pool in IPv4Data", "NetworkDriver.CreateNetwork",
     good_net(IPv4Data=[{"Pool": "fd00::/64", "Gateway": ""}]), 400, "IPv4"),
    ("gateway outside subnet", "NetworkDriver.CreateNetwork",
     good_net(IPv4Data=[{"Pool": "10.20.0.0/24", "Gateway": "10.21.0.1/24"}]), 400, "outside"),
    ("aux outside subnet", "NetworkDriver.CreateNetwork",
     good_net(IPv4Data=[{"Pool": "10.20.0.0/24", "Gateway": "10.20.0.1/24",
                         "AuxAddresses": {"h": "10.99.0.5/24"}}]), 400, "outside"),
    ("overlapping subnet", "NetworkDriver.CreateNetwork",
     good_net(IPv4Data=[{"Pool": "10.10.0.128/25", "Gateway": "10.10.0.129/25"}]), 409, "overlaps"),
    ("same network twice", "NetworkDriver.CreateNetwork",
     good_net(NetworkID=NET), 409, "exists"),
    ("bad MTU", "NetworkDriver.CreateNetwork",
     good_net(Options={"com.docker.network.generic": {"com.docker.network.driver.mtu": "x"}}),
     400, "MTU"),
    ("unknown driver", "NetworkDriver.CreateNetwork",
     good_net(Options={"com.docker.network.generic": {"pynet.driver": "nope"}}), 400, "unknown driver"),
    ("endpoint on unknown network", "NetworkDriver.CreateEndpoint",
     endpoint_body(nid="9" * 64), 404, "not found"),
    ("endpoint without EndpointID", "NetworkDriver.CreateEndpoint",
     endpoint_body(eid=""), 400, "EndpointID"),
    ("endpoint address outside subnet", "NetworkDriver.CreateEndpoint",
     endpoint_body(address="10.99.0.2/24"), 400, "outside"),
    ("endpoint address not CIDR", "NetworkDriver.CreateEndpoint",
     endpoint_body(address="10.10.0.2"), 400, "10.10.0.2"),
    ("endpoint Interface array", "NetworkDriver.CreateEndpoint",
     {**endpoint_body(), "Interface": []}, 400, "Interface"),
    ("bad MAC", "NetworkDriver.CreateEndpoint", endpoint_body(mac="zz:42:0a"), 400, "MAC"),
    ("bad MAC option", "NetworkDriver.CreateEndpoint",
     endpoint_body(options={"com.docker.network.endpoint.macaddress": "!!"}), 400, "macaddress"),
    ("short MAC option", "NetworkDriver.CreateEndpoint",
     endpoint_body(options={"com.docker.network.endpoint.macaddress":
                            base64.b64encode(b"\x02\x42").decode()}), 400, "6-byte"),
    ("unknown proto", "NetworkDriver.CreateEndpoint",
     endpoint_body(options={"com.docker.network.portmap": [
         {"Proto": 99, "IP": "", "Port": 80, "HostIP": "", "HostPort": 0, "HostPortEnd": 0}]}),
     400, "Proto 99"),
    ("port as string", "NetworkDriver.CreateEndpoint",
     endpoint_body(options={"com.docker.network.portmap": [
         {"Proto": 6, "IP": "", "Port": "80", "HostIP": "", "HostPort": 0}]}), 400, "Port"),
    ("port out of range", "NetworkDriver.CreateEndpoint",
     endpoint_body(options={"com.docker.network.portmap": [
         {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 70000}]}), 400, "range"),
    ("join unknown endpoint", "NetworkDriver.Join",
     {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/x", "Options": {}}, 404, "not found"),
    ("join unknown network", "NetworkDriver.Join",
     {"NetworkID": "9" * 64, "EndpointID": EP, "SandboxKey": "/x"}, 404, "not found"),
    ("oper info unknown endpoint", "NetworkDriver.EndpointOperInfo",
     {"NetworkID": NET, "EndpointID": EP}, 404, "not found"),
    ("program unknown endpoint", "NetworkDriver.ProgramExternalConnectivity",
     {"NetworkID": NET, "EndpointID": EP, "Options": {}}, 404, "not found"),
    ("request pool invalid CIDR", "IpamDriver.RequestPool",
     {"AddressSpace": "LocalDefault", "Pool": "10.1.0.0/99", "SubPool": "", "Options": {}, "V6": False},
     400, "10.1.0.0/99"),
    ("request pool V6 string", "IpamDriver.RequestPool",
     {"AddressSpace": "LocalDefault", "Pool": "", "SubPool": "", "Options": {}, "V6": "maybe"},
     400, "V6"),
    ("request pool subpool outside", "IpamDriver.RequestPool",
     {"AddressSpace": "LocalDefault", "Pool": "10.30.0.0/24", "SubPool": "10.31.0.0/26",
      "Options": {}, "V6": False}, 400, "10.31.0.0/26"),
    ("request pool options non-string", "IpamDriver.RequestPool",
     {"AddressSpace": "LocalDefault", "Pool": "", "Options": {"a": 1}}, 400, "Options.a"),
    ("request address unknown pool", "IpamDriver.RequestAddress",
     {"PoolID": "LocalDefault/10.77.0.0/24", "Address": "", "Options": None}, 404, "not found"),
    ("request address no PoolID", "IpamDriver.RequestAddress",
     {"Address": "", "Options": None}, 400, "PoolID"),
    ("release address no address", "IpamDriver.ReleaseAddress",
     {"PoolID": "LocalDefault/10.77.0.0/24"}, 400, "Address"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input(with_network, store, case):
    _, method, body, status, fragment = case
    before = snapshot(store)
    if isinstance(body, bytes):
        got, answer = with_network.call(method, raw=body)
    else:
        got, answer = with_network.call(method, body)
    assert (got, fragment.lower() in answer["Err"].lower()) == (status, True), answer
    assert snapshot(store) == before


def test_overlapping_ipam_pool_is_409_and_changes_nothing(plugin, store):
    req = {"AddressSpace": "LocalDefault", "Pool": "10.40.0.0/24", "SubPool": "",
           "Options": {}, "V6": False}
    assert plugin.call("IpamDriver.RequestPool", req)[0] == 200
    before = snapshot(store)
    status, answer = plugin.call("IpamDriver.RequestPool", {**req, "Pool": "10.40.0.0/16"})
    assert status == 409 and "overlaps" in answer["Err"]
    assert snapshot(store) == before


def test_address_in_use_is_409(plugin, store):
    status, pool = plugin.call("IpamDriver.RequestPool", {
        "AddressSpace": "LocalDefault", "Pool": "10.41.0.0/24", "SubPool": "", "Options": {}, "V6": False})
    req = {"PoolID": pool["PoolID"], "Address": "10.41.0.9", "Options": None}
    assert plugin.call("IpamDriver.RequestAddress", req) == (200, {"Address": "10.41.0.9/24", "Data": {}})
    before = snapshot(store)
    status, answer = plugin.call("IpamDriver.RequestAddress", req)
    assert status == 409 and "10.41.0.9" in answer["Err"]
    assert snapshot(store) == before


def test_empty_and_null_bodies(plugin):
    assert plugin.call("Plugin.Activate", raw=b"") == (
        200, {"Implements": ["NetworkDriver", "IpamDriver"]})
    assert plugin.call("NetworkDriver.GetCapabilities", raw=b"null")[0] == 200
    assert plugin.call("IpamDriver.GetCapabilities", raw=b"  \n")[0] == 200
    assert plugin.call("IpamDriver.GetDefaultAddressSpaces") == (
        200, {"LocalDefaultAddressSpace": "LocalDefault", "GlobalDefaultAddressSpace": "GlobalDefault"})


def test_unknown_things_are_already_deleted(plugin, store):
    before = snapshot(store)
    for method, body in [
        ("NetworkDriver.DeleteNetwork", {"NetworkID": NET}),
        ("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP}),
        ("NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": EP}),
        ("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NET, "EndpointID": EP}),
        ("IpamDriver.ReleasePool", {"PoolID": "LocalDefault/10.9.0.0/24"}),
        ("IpamDriver.ReleaseAddress", {"PoolID": "LocalDefault/10.9.0.0/24", "Address": "10.9.0.3"}),
    ]:
        assert plugin.call(method, body) == (200, {}), method
    assert snapshot(store) == before


def test_swarm_and_discovery_calls_are_no_ops(plugin):
    assert plugin.call("NetworkDriver.DiscoverNew", {"DiscoveryType": 1, "DiscoveryData": {}}) == (200, {})
    assert plugin.call("NetworkDriver.DiscoverDelete", {"DiscoveryType": 1}) == (200, {})
    assert plugin.call("NetworkDriver.AllocateNetwork", {"NetworkID": NET}) == (200, {"Options": {}})
    assert plugin.call("NetworkDriver.FreeNetwork", {"NetworkID": NET}) == (200, {})


def test_unknown_method_and_wrong_verb(plugin):
    status, answer = plugin.call("NetworkDriver.Teleport", {})
    assert status == 404 and "Teleport" in answer["Err"]
    resp = plugin.client.get("/Plugin.Activate")
    assert resp.status_code == 405
    assert resp.headers["Content-Type"] == "application/vnd.docker.plugins.v1+json"
    assert "Err" in resp.get_json(force=True)


def test_unexpected_exception_is_500_and_logged(with_network, driver, store, caplog):
    driver.fail_next["CreateEndpoint"] = RuntimeError("boom\nsecond line")
    before = snapshot(store)
    with caplog.at_level(logging.ERROR, logger="pynet.plugin_api"):
        status, answer = with_network.call("NetworkDriver.CreateEndpoint", endpoint_body())
    assert status == 500
    assert answer["Err"] == "internal error: RuntimeError: boom second line"
    assert any(r.exc_info for r in caplog.records), "traceback logged"
    assert snapshot(store) == before


def test_create_endpoint_answers_only_what_docker_left_empty(with_network, store):
    status, answer = with_network.call("NetworkDriver.CreateEndpoint", endpoint_body())
    assert status == 200 and list(answer) == ["Interface"]
    assert list(answer["Interface"]) == ["MacAddress"]
    # Docker chose the MAC (Interface and option both carry it): answer {}
    mac_opt = base64.b64encode(bytes.fromhex("02420a0a0003")).decode()
    body = endpoint_body(eid="f" * 64, address="10.10.0.3/24", mac="02:42:0a:0a:00:03",
                         options={"com.docker.network.endpoint.macaddress": mac_opt})
    assert with_network.call("NetworkDriver.CreateEndpoint", body) == (200, {})
    # only the base64 option: the MAC is Docker's, the driver keeps it
    body = endpoint_body(eid="d" * 64, address="10.10.0.4/24",
                         options={"com.docker.network.endpoint.macaddress":
                                  base64.b64encode(bytes.fromhex("02420a0a0004")).decode()})
    status, answer = with_network.call("NetworkDriver.CreateEndpoint", body)
    assert answer == {"Interface": {"MacAddress": "02:42:0a:0a:00:04"}}


def test_internal_and_ipv6_options_reach_the_network(plugin, controller):
    body = good_net(IPv6Data=[{"AddressSpace": "LocalDefault", "Pool": "fd00:1::/64",
                               "Gateway": "fd00:1::1/64"}],
                    Options={"com.docker.network.enable_ipv6": True,
                             "com.docker.network.internal": True,
                             "com.docker.network.generic": {"pynet.driver": "bridge",
                                                            "com.docker.network.driver.mtu": "1400"}})
    assert plugin.call("NetworkDriver.CreateNetwork", body) == (200, {})
    net = controller.network(NET2)
    assert net.internal and net.enable_ipv6 and net.driver == "bridge"
    assert net.options == {"com.docker.network.driver.mtu": "1400"}
    assert net.ipv6[0].pool == "fd00:1::/64" and net.gateway_v6 == "fd00:1::1"
