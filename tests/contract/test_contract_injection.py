"""Injection attempts through the Docker front end (issue 9, defects 4, 5 and
8): refused at the door with a 4xx, one ``{"Err"}`` line, and the store, the
(fake) kernel and the firewall exactly as they were."""
from __future__ import annotations

import pytest

from tests.support.contract import snapshot
from tests.contract.test_contract_errors import EP, NET, create_net, endpoint_body, good_net

ZONE = "::%lo\nCOMMIT\n*filter\n-I INPUT 1 -j ACCEPT"
ZONE6 = "fd00:1::5%lo\nCOMMIT\n*filter\n-I INPUT 1 -j ACCEPT"

BRIDGE = "com.docker.network.bridge.name"
BINDING = "com.docker.network.bridge.host_binding_ipv4"
HOST_IPV4 = "com.docker.network.host_ipv4"


def generic(**opts):
    return good_net(Options={"com.docker.network.generic": opts})


NETWORK_OPTIONS = [
    # defect 5: iptables wildcards, a leading '-', NUL and newline in the bridge name
    ("bridge +", {BRIDGE: "+"}, "wildcard"),
    ("bridge eth+", {BRIDGE: "eth+"}, "wildcard"),
    ("bridge -j", {BRIDGE: "-j"}, "'-'"),
    ("bridge NUL", {BRIDGE: "br\0x"}, "control characters"),
    ("bridge newline", {BRIDGE: "br0\n-j ACCEPT"}, "control characters"),
    ("bridge quote", {BRIDGE: 'br"0'}, "bridge name"),
    ("bridge too long", {BRIDGE: "b" * 16}, "at most 15"),
    # defect 4: zone text in the host binding and the SNAT address
    ("host_binding_ipv4 zone", {BINDING: ZONE}, "control characters"),
    ("host_binding_ipv4 bare zone", {BINDING: "::%lo"}, "zone"),
    ("host_binding_ipv4 zone x", {BINDING: "::%x"}, "zone"),
    ("host_binding_ipv4 spaces", {BINDING: " 127.0.0.1"}, "whitespace"),
    ("host_ipv4 zone", {HOST_IPV4: "::%lo"}, "zone"),
    ("host_ipv4 is v6", {HOST_IPV4: "::1"}, "IPv4"),
    ("host_ipv4 injection", {HOST_IPV4: "10.0.0.1 -j ACCEPT"}, "host_ipv4"),
    ("macvlan parent +", {"pynet.driver": "macvlan", "parent": "eth+"}, "wildcard"),
    ("macvlan parent -j", {"pynet.driver": "macvlan", "parent": "-j"}, "'-'"),
    ("option key newline", {"x\ny": "1"}, "option name"),
    ("option value escape", {"com.docker.network.driver.mtu": "1400\x1b"}, "control characters"),
]


@pytest.mark.parametrize("case", NETWORK_OPTIONS, ids=[c[0] for c in NETWORK_OPTIONS])
def test_network_options_refused_at_the_door(plugin, store, driver, firewall, case):
    _, opts, fragment = case
    before = (snapshot(store), set(driver.links), list(firewall.published))
    status, answer = plugin.call("NetworkDriver.CreateNetwork", generic(**opts))
    assert status == 400 and fragment in answer["Err"], answer
    assert (snapshot(store), set(driver.links), list(firewall.published)) == before
    assert driver.calls == []  # the driver never saw it


IPDATA = [
    ("pool zone", [{"Pool": "fd00:1::%lo/64", "Gateway": ""}], "zone"),
    ("gateway zone", [{"Pool": "fd00:1::/64", "Gateway": "fd00:1::1%lo/64"}], "zone"),
    ("aux zone", [{"Pool": "fd00:1::/64", "Gateway": "",
                   "AuxAddresses": {"h": "fd00:1::9%lo\nCOMMIT"}}], "zone"),
]


@pytest.mark.parametrize("case", IPDATA, ids=[c[0] for c in IPDATA])
def test_zone_in_network_addresses_refused(plugin, store, case):
    _, v6data, fragment = case
    before = snapshot(store)
    body = good_net(IPv6Data=v6data, Options={"com.docker.network.enable_ipv6": True,
                                              "com.docker.network.generic": {}})
    status, answer = plugin.call("NetworkDriver.CreateNetwork", body)
    assert status == 400 and fragment in answer["Err"], answer
    assert snapshot(store) == before


@pytest.fixture
def dual_stack(plugin):
    body = good_net(NetworkID=NET, IPv6Data=[{"AddressSpace": "LocalDefault", "Pool": "fd00:1::/64",
                                              "Gateway": "fd00:1::1/64"}],
                    Options={"com.docker.network.enable_ipv6": True, "com.docker.network.generic": {}})
    assert plugin.call("NetworkDriver.CreateNetwork", body) == (200, {})
    return plugin


def portmap(host_ip):
    return {"com.docker.network.portmap": [
        {"Proto": 6, "IP": "", "Port": 80, "HostIP": host_ip, "HostPort": 18080, "HostPortEnd": 18080}],
        "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}]}


@pytest.mark.parametrize("address_v6", [ZONE6 + "/64", "fd00:1::5%lo/64", "fd00:1::5%x/64",
                                        " fd00:1::5/64"])
def test_endpoint_ipv6_zone_refused(dual_stack, store, driver, address_v6):
    before = (snapshot(store), set(driver.links))
    body = endpoint_body(address="10.20.0.2/24")
    body["NetworkID"] = NET
    body["Interface"]["AddressIPv6"] = address_v6
    status, answer = dual_stack.call("NetworkDriver.CreateEndpoint", body)
    assert status == 400 and "AddressIPv6" in answer["Err"], answer
    assert (snapshot(store), set(driver.links)) == before


@pytest.mark.parametrize("host_ip", [ZONE, "::%lo", "::%x", "0.0.0.0 ", "127.0.0.1\n"])
def test_port_map_host_ip_zone_refused(dual_stack, store, firewall, host_ip):
    # in CreateEndpoint (validated there, programmed later) ...
    before = snapshot(store)
    body = endpoint_body(address="10.20.0.2/24", options=portmap(host_ip))
    status, answer = dual_stack.call("NetworkDriver.CreateEndpoint", body)
    assert status == 400 and "HostIP" in answer["Err"], answer
    assert snapshot(store) == before
    # ... and in ProgramExternalConnectivity, which carries the map again
    assert dual_stack.call("NetworkDriver.CreateEndpoint",
                           endpoint_body(address="10.20.0.2/24"))[0] == 200
    before = (snapshot(store), list(firewall.published))
    status, answer = dual_stack.call("NetworkDriver.ProgramExternalConnectivity",
                                     {"NetworkID": NET, "EndpointID": EP, "Options": portmap(host_ip)})
    assert status == 400 and "HostIP" in answer["Err"], answer
    assert (snapshot(store), list(firewall.published)) == before


BAD_IDS = ["a" * 32 + "/" + "a" * 31, "a" * 64 + "/x", "A" * 64, "a" * 63, "a" * 64 + "\n",
           "../" + "a" * 61, "x" * 64]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_docker_ids_are_64_hex(plugin, store, bad):
    """Defect 8: an ID with '/' aliased store keys (``endpoints/<nid>/<eid>``)."""
    before = snapshot(store)
    status, answer = plugin.call("NetworkDriver.CreateNetwork", good_net(NetworkID=bad))
    assert status == 400 and "NetworkID" in answer["Err"], answer
    assert snapshot(store) == before
    assert create_net(plugin) == (200, {})
    before = snapshot(store)
    for method, body in [
        ("NetworkDriver.CreateEndpoint", endpoint_body(eid=bad)),
        ("NetworkDriver.CreateEndpoint", endpoint_body(nid=bad)),
        ("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": bad, "SandboxKey": "/x"}),
        ("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": bad}),
        ("NetworkDriver.DeleteNetwork", {"NetworkID": bad}),
    ]:
        status, answer = plugin.call(method, body)
        assert status == 400 and "ID" in answer["Err"], (method, answer)
    assert snapshot(store) == before


def test_slash_in_endpoint_id_cannot_shadow_another_network(plugin, store):
    """What aliasing looked like: network A's endpoint ``<B>/x`` sat under the
    key prefix of network ``A/<B>``.  Both halves are refused now."""
    a = "a" * 64
    assert create_net(plugin, nid=a) == (200, {})
    status, answer = plugin.call("NetworkDriver.CreateEndpoint",
                                 endpoint_body(nid=a, eid="b" * 64 + "/x"))
    assert status == 400
    assert [r.key for r in store.list("endpoints/")] == []


def test_ipam_addresses_with_zone_refused(plugin, store):
    status, pool = plugin.call("IpamDriver.RequestPool", {
        "AddressSpace": "LocalDefault", "Pool": "fd00:7::/64", "SubPool": "", "Options": {}, "V6": True})
    assert status == 200
    before = snapshot(store)
    for method, body in [
        ("IpamDriver.RequestPool", {"AddressSpace": "LocalDefault", "Pool": "fd00:8::%lo/64", "V6": True}),
        ("IpamDriver.RequestPool", {"AddressSpace": "LocalDefault", "Pool": "fd00:8::/64",
                                    "SubPool": "fd00:8::%lo/80", "V6": True}),
        ("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "fd00:7::5%lo\nCOMMIT"}),
        ("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": " fd00:7::5"}),
        ("IpamDriver.RequestPool", {"AddressSpace": "Local\0Default", "Pool": "10.50.0.0/24"}),
        ("IpamDriver.RequestPool", {"AddressSpace": "LocalDefault", "Pool": "10.50.0.0/24",
                                    "Options": {"a": "b\nc"}}),
    ]:
        status, answer = plugin.call(method, body)
        assert 400 <= status < 500, (method, body, answer)
    assert snapshot(store) == before


def test_join_sandbox_key_with_nul_refused(plugin, store):
    assert create_net(plugin) == (200, {})
    assert plugin.call("NetworkDriver.CreateEndpoint", endpoint_body())[0] == 200
    before = snapshot(store)
    status, answer = plugin.call("NetworkDriver.Join",
                                 {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/var/run/x\0y"})
    assert status == 400 and "SandboxKey" in answer["Err"]
    assert snapshot(store) == before


def test_ordinary_values_still_pass(plugin, controller):
    """The door is not a wall: Docker's own values go through."""
    body = good_net(IPv6Data=[{"AddressSpace": "LocalDefault", "Pool": "fd00:2::/64",
                               "Gateway": "fd00:2::1/64"}],
                    Options={"com.docker.network.enable_ipv6": True,
                             "com.docker.network.generic": {BRIDGE: "br-val0", BINDING: "127.0.0.1",
                                                            HOST_IPV4: "127.0.0.1",
                                                            "com.docker.network.driver.mtu": "1400"}})
    assert plugin.call("NetworkDriver.CreateNetwork", body) == (200, {})
    nid = body["NetworkID"]
    ep = endpoint_body(nid=nid, address="10.20.0.2/24", options=portmap("127.0.0.1"))
    ep["Interface"]["AddressIPv6"] = "fd00:2::2/64"
    assert plugin.call("NetworkDriver.CreateEndpoint", ep)[0] == 200
    assert plugin.call("NetworkDriver.ProgramExternalConnectivity",
                       {"NetworkID": nid, "EndpointID": EP, "Options": portmap("::")}) == (200, {})
    assert controller.endpoint(nid, EP).address_v6 == "fd00:2::2/64"


# ------------------------------------------------- the real bridge driver, fake netlink
def test_bridge_driver_refuses_wildcard_and_zone_options_too():
    """Second line: a network created without the Docker door (CLI, CNI, a
    stored record) is parsed by the driver with the same validators."""
    from tests.contract.test_contract_ports_and_bridge import _bridge_stack
    from pynet import errors
    from pynet.cnm.model import IPData

    store, nl, c, _ = _bridge_stack()
    for opts in ({BRIDGE: "+"}, {BRIDGE: "eth+"}, {BRIDGE: "-j"}, {BRIDGE: "b\0"},
                 {BINDING: ZONE}, {BINDING: "::%x"}, {HOST_IPV4: "::%lo"}):
        with pytest.raises(errors.InvalidOption):
            c.create_network("c" * 64, [IPData(pool="10.60.0.0/24", gateway="10.60.0.1/24")], [],
                             driver="bridge", options=opts)
    assert c.networks() == [] and [n for n in nl.kernel.ns(None).links if n != "lo"] == []


def test_foreign_docker_bridge_names_are_renderable_only(monkeypatch):
    """The daemon isolates pynet's networks from dockerd's custom-named bridges;
    a Docker bridge named ``-j`` or ``eth+`` must not become a rule token."""
    from pynet.plugin_api import docker_state

    nets = [{"Driver": "bridge", "Options": {BRIDGE: n}}
            for n in ("mybr0", "-j", "eth+", "br\u00e9", "ok.1", "a" * 16)]
    monkeypatch.setattr(docker_state, "_get", lambda *a, **k: nets)
    assert docker_state.docker_custom_bridges() == ["mybr0", "ok.1"]
