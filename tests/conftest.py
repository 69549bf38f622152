"""Root conftest: the per-run ``prefix`` fixture and markers.

``prefix`` (session): ``pt`` + 4 hex digits, e.g. ``pt3fa9``. Name every resource a test creates
``<prefix>-...`` (Docker networks/containers, netns, links: 7 bytes with the dash, so 8 are left
for an interface name's suffix). The run holds the prefix's lock (``harness.RunLock``) until it
ends, which is how the crash cleanup at session start tells a dead run's leftovers from a live
run's resources. Own links/netns with the prefix are removed again at session end.

The e2e harness module is importable everywhere as ``harness`` (tests/e2e is put on sys.path).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

_E2E = str(Path(__file__).resolve().parent / "e2e")
if _E2E not in sys.path:
    sys.path.insert(0, _E2E)

import harness  # noqa: E402


def pytest_configure(config):
    for line in (
        "e2e: needs root and a real dockerd (every test under tests/e2e gets it)",
        "netns: needs root; runs real netlink/firewall in throwaway namespaces",
        "pynet_daemon: uses a real `pynet daemon` process (set on tests using the pynet_daemon fixtures)",
        "root: needs root",
    ):
        config.addinivalue_line("markers", line)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Lets fixtures see the outcome in teardown: request.node.rep_setup / rep_call / rep_teardown.
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture(scope="session")
def prefix() -> str:
    lock = harness.RunLock.acquire_new()
    try:
        removed = harness.cleanup_stale_host(current=lock.prefix)
        if removed:
            print(f"\n[pynet] removed leftovers of earlier runs: {' '.join(removed)}")
        yield lock.prefix
        if harness.is_root():
            harness.cleanup_netns([lock.prefix])
            harness.cleanup_links([lock.prefix])
    finally:
        lock.release()
