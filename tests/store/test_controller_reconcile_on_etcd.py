"""tests/unit/test_controller_reconcile.py (a runtime's reconcile, restore) re-run on a real
etcd, as tests/store/test_controller_on_etcd.py does for test_controller.py: a module of its
own, since the two modules' ``ctl`` fixtures differ."""
from __future__ import annotations

import pytest

from tests.unit.test_controller_reconcile import *  # noqa: F401,F403 -- the tests and fixtures


@pytest.fixture
def store(whole_etcd_store):  # noqa: F811 -- replaces the MemoryStore of the imported tests
    return whole_etcd_store
