"""The Controller on a real etcd (Store v2 only: etcd has no pessimistic
transaction, so every verb must run as an optimistic txn function).

The controller's unit tests (tests/unit/test_controller.py) run here again,
unchanged, with their ``store`` fixture replaced by an ``EtcdStore`` on a
one-member etcd nobody else writes to (``whole_etcd_store``: those tests list
the whole store), emptied around each test.
"""
from __future__ import annotations

import pytest

from tests.unit.test_controller import *  # noqa: F401,F403 -- the tests and fixtures, re-run here


@pytest.fixture
def store(whole_etcd_store):  # noqa: F811 -- replaces the MemoryStore of the imported tests
    return whole_etcd_store
