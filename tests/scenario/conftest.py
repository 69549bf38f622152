"""Fixtures of the scenario tests: ``snapshot`` proves that a scenario run leaves no namespace,
root-namespace link or work dir behind. The helpers (``run_cli``, ``netns_names``, ...) are in
tests/support/scenario.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.scenario import netns_names, root_links


@pytest.fixture
def snapshot():
    """Yields; afterwards asserts no scenario namespace, root link or work
    dir appeared."""
    ns0, links0 = netns_names(), root_links()
    yield
    assert netns_names() - ns0 == set(), "scenario namespaces left behind"
    assert root_links() - links0 == set(), "scenario links in the root namespace"
    work = Path("/tmp/pynet-scenario")
    assert not work.exists() or not [d for d in work.iterdir() if d.name not in _WORK0], \
        "scenario work dirs left behind"


_WORK0 = {d.name for d in Path("/tmp/pynet-scenario").iterdir()} if Path("/tmp/pynet-scenario").exists() else set()
