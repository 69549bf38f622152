"""The Docker door, the fuzzer's findings (issue 9; tests/fuzz/docker_target.py
in strict mode): values no dockerd sends were stored -- control characters
and zone text in an ``AddressSpace``, a ``SandboxKey`` that is no path.  Each
is refused with a 400 ``{"Err"}`` line and the store is unchanged."""
from __future__ import annotations

import pytest

from tests.support.contract import snapshot
from tests.contract.test_contract_errors import EP, NET, create_net, endpoint_body, good_net

BAD_SPACES = ["LocalDefault\n", "LocalDefault\t", "LocalDefault\0", "::%lo", "fe80::1%eth0",
              "LocalDefault%eth0\nCOMMIT", "Local Default", "-x", "a" * 65]


@pytest.mark.parametrize("space", BAD_SPACES, ids=repr)
@pytest.mark.parametrize("family", ["IPv4Data", "IPv6Data"])
def test_create_network_address_space_refused(plugin, store, space, family):
    """Was: 200, the network stored with ``address_space = 'LocalDefault\\n'``."""
    data = {"IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.20.0.0/24", "Gateway": "10.20.0.1/24"}],
            "IPv6Data": [{"AddressSpace": "LocalDefault", "Pool": "fd00:20::/64", "Gateway": "fd00:20::1/64"}]}
    data[family][0]["AddressSpace"] = space
    body = good_net(**data, Options={"com.docker.network.enable_ipv6": True,
                                     "com.docker.network.generic": {}})
    before = snapshot(store)
    status, answer = plugin.call("NetworkDriver.CreateNetwork", body)
    assert status == 400 and "AddressSpace" in answer["Err"] and "\n" not in answer["Err"], answer
    assert snapshot(store) == before


@pytest.mark.parametrize("space", ["::%lo", "fe80::1%eth0", "-x", "a" * 65], ids=repr)
def test_request_pool_address_space_refused(plugin, store, space):
    """The IPAM refused '/', spaces and control characters; a zone or a
    leading '-' went into the pool ID (``::%lo/10.50.0.0/24``)."""
    before = snapshot(store)
    status, answer = plugin.call("IpamDriver.RequestPool", {"AddressSpace": space, "Pool": "10.50.0.0/24"})
    assert status == 400 and "AddressSpace" in answer["Err"], answer
    assert snapshot(store) == before


@pytest.mark.parametrize("key", ["x", "var/run/docker/netns/1", "netns"], ids=repr)
def test_join_sandbox_key_must_be_an_absolute_path(plugin, store, key):
    assert create_net(plugin) == (200, {})
    assert plugin.call("NetworkDriver.CreateEndpoint", endpoint_body())[0] == 200
    before = snapshot(store)
    status, answer = plugin.call("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP, "SandboxKey": key})
    assert status == 400 and "SandboxKey" in answer["Err"], answer
    assert snapshot(store) == before


def test_docker_address_spaces_still_pass(plugin):
    for space in ("LocalDefault", "GlobalDefault", ""):
        status, answer = plugin.call("IpamDriver.RequestPool", {"AddressSpace": space or "LocalDefault",
                                                                "Pool": "10.51.0.0/24"})
        assert status == 200, answer
        assert plugin.call("IpamDriver.ReleasePool", {"PoolID": answer["PoolID"]})[0] == 200
    assert plugin.call("NetworkDriver.CreateNetwork", good_net(IPv4Data=[
        {"AddressSpace": "", "Pool": "10.20.0.0/24", "Gateway": "10.20.0.1/24"}])) == (200, {})
