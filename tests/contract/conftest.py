"""Fixtures for the Docker front-end contract tests: a Controller on a
MemoryStore with the real IPAM and the fake driver/firewall, served through
Flask's test client exactly as dockerd calls it (POST, no Content-Type,
Docker's Accept header, raw bodies)."""
from __future__ import annotations

import pytest

from pynet.cnm.controller import Controller  # noqa: E402
from pynet.store.memory import MemoryStore  # noqa: E402
from tests.support.contract import Plugin, make_ipam
from tests.support.fakes import FakeDriver, FakeFirewall


@pytest.fixture
def store():
    return MemoryStore()


@pytest.fixture
def driver():
    return FakeDriver()


@pytest.fixture
def firewall():
    return FakeFirewall()


@pytest.fixture
def controller(store, driver, firewall):
    return Controller(store, make_ipam(store), {"bridge": driver}, firewall=firewall,
                      port_allocator=None)


@pytest.fixture
def plugin(controller):
    from pynet.plugin_api.app import create_app

    app = create_app(controller)
    app.testing = False  # exercise the real error handlers
    return Plugin(app.test_client())
