"""JSON the Go client never sends, through the Docker front end: nesting
~1,000 deep and lone surrogates answer 400 ``{"Err"}`` and change nothing."""
from __future__ import annotations

import pytest

from tests.support.contract import Plugin, make_ipam, snapshot
from tests.support.fakes import FakeDriver, FakeFirewall

NET = "1" * 64
DEEP = b"[" * 1000 + b"]" * 1000


@pytest.fixture
def sqlite_plugin(tmp_path):
    """The app over the real SQLite store: it is the store that cannot encode
    a lone surrogate (the memory store keeps any str)."""
    from pynet.cnm.controller import Controller
    from pynet.plugin_api.app import create_app
    from pynet.store.sqlite import SqliteStore

    store = SqliteStore.in_state_dir(str(tmp_path))
    c = Controller(store, make_ipam(store), {"bridge": FakeDriver()}, firewall=FakeFirewall(),
                   port_allocator=None)
    app = create_app(c)
    app.testing = False
    return Plugin(app.test_client()), store


@pytest.mark.parametrize("raw", [
    DEEP,
    b'{"NetworkID": ' + DEEP + b'}',
    b'{"NetworkID": "' + b"1" * 64 + b'", "Options": {"com.docker.network.generic": ' + b'{"a": ' * 999
    + b'1' + b'}' * 999 + b'}}',
], ids=["top", "in-field", "in-options"])
@pytest.mark.parametrize("method", ["NetworkDriver.CreateNetwork", "NetworkDriver.DeleteNetwork",
                                    "IpamDriver.RequestPool", "Plugin.Activate"])
def test_deep_nesting_is_a_400(plugin, store, method, raw):
    before = snapshot(store)
    status, answer = plugin.call(method, raw=raw)
    assert status == 400, answer
    assert "nested deeper" in answer["Err"]
    assert snapshot(store) == before


def test_moderate_nesting_below_the_limit_is_refused_too(plugin, store):
    """Below the interpreter's limit the body decodes, and used to be stored
    and walked deeper in the stack; anything deeper than any request pynet
    understands is refused at the door."""
    body = b'{"NetworkID": "' + b"1" * 64 + b'", "IPv4Data": [], "IPv6Data": [], "Options": ' \
           b'{"com.docker.network.generic": {"x": ' + b"[" * 200 + b"]" * 200 + b'}}}'
    before = snapshot(store)
    status, answer = plugin.call("NetworkDriver.CreateNetwork", raw=body)
    assert status == 400 and "nested deeper" in answer["Err"], answer
    assert snapshot(store) == before


def _net(nid, generic=None):
    return {"NetworkID": nid,
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.10.0.0/24", "Gateway": "10.10.0.1/24"}],
            "IPv6Data": [], "Options": {"com.docker.network.generic": generic or {}}}


@pytest.mark.parametrize("body", [
    b'{"NetworkID": "\\ud800", "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.10.0.0/24",'
    b' "Gateway": "10.10.0.1/24"}], "IPv6Data": [], "Options": {}}',
    b'{"NetworkID": "' + NET.encode() + b'", "IPv4Data": [{"AddressSpace": "LocalDefault",'
    b' "Pool": "10.10.0.0/24", "Gateway": "10.10.0.1/24"}], "IPv6Data": [],'
    b' "Options": {"com.docker.network.generic": {"x\\udfff": "1"}}}',
    b'{"NetworkID": "' + NET.encode() + b'", "IPv4Data": [{"AddressSpace": "LocalDefault",'
    b' "Pool": "10.10.0.0/24", "Gateway": "10.10.0.1/24"}], "IPv6Data": [],'
    b' "Options": {"com.docker.network.generic": {"x": "\\udc80"}}}',
], ids=["id", "option-key", "option-value"])
def test_lone_surrogates_are_a_400(sqlite_plugin, body):
    plugin, store = sqlite_plugin
    before = snapshot(store)
    status, answer = plugin.call("NetworkDriver.CreateNetwork", raw=body)
    assert status == 400, answer
    assert "surrogate" in answer["Err"]
    assert snapshot(store) == before
    # the store still works, and a well-formed request still does
    assert plugin.call("NetworkDriver.CreateNetwork", _net(NET)) == (200, {})
