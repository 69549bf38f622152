"""Root conftest: the per-run ``prefix`` fixture and markers.

``prefix`` (session): ``pt`` + 4 hex digits, e.g. ``pt3fa9``. Name every resource a test creates
``<prefix>-...`` (Docker networks/containers, netns, links: 7 bytes with the dash, so 8 are left
for an interface name's suffix). The run holds the prefix's lock (``harness.RunLock``) until it
ends, which is how the crash cleanup at session start tells a dead run's leftovers from a live
run's resources. Own links/netns with the prefix are removed again at session end.

The e2e harness is ``tests.support.harness`` (``from tests.support import harness``).

``kernel_lab`` marker: the test needs a kernel feature this machine's kernel lacks and Debian's has
(802.1q, dummy links, ...). Such tests are deselected here and run inside the kernel lab VM instead
(tests/vm: one host-side test per such node id, which fails if the guest test does not pass).
"""
from __future__ import annotations

import os

import pytest

from tests.support import harness


def pytest_configure(config):
    for line in (
        "e2e: needs root and a real dockerd (every test under tests/e2e gets it)",
        "netns: needs root; runs real netlink/firewall in throwaway namespaces",
        "pynet_daemon: uses a real `pynet daemon` process (set on tests using the pynet_daemon fixtures)",
        "root: needs root",
        "kernel_lab: needs a kernel feature Debian's kernel has and this machine's may not: runs "
        "in the kernel lab VM (tests/vm)",
    ):
        config.addinivalue_line("markers", line)


def _runs_kernel_lab_tests_here() -> bool:
    # inside the guest (PYNET_IN_VM) and while tests/vm lists them (PYNET_VM_COLLECT)
    return os.environ.get("PYNET_IN_VM") == "1" or os.environ.get("PYNET_VM_COLLECT") == "1"


def pytest_collection_modifyitems(config, items):
    if _runs_kernel_lab_tests_here():
        return
    routed = [i for i in items if i.get_closest_marker("kernel_lab")]
    if routed:
        config.hook.pytest_deselected(items=routed)
        items[:] = [i for i in items if not i.get_closest_marker("kernel_lab")]
        config._pynet_kernel_lab_routed = len(routed)


def pytest_terminal_summary(terminalreporter, config):
    n = getattr(config, "_pynet_kernel_lab_routed", 0)
    if n:
        terminalreporter.write_line(f"kernel lab: {n} deselected test(s) marked kernel_lab run in "
                                    f"the VM (tests/vm/test_kernel_lab.py)")


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
        # the kernel lab guest boots fresh: nothing of an earlier run to find (and every
        # iptables-save/ip call costs seconds in the emulated guest)
        removed = [] if os.environ.get("PYNET_IN_VM") == "1" else \
            harness.cleanup_stale_host(current=lock.prefix)
        if removed:
            print(f"\n[pynet] removed leftovers of earlier runs: {' '.join(removed)}")
        yield lock.prefix
        if harness.is_root():
            harness.cleanup_netns([lock.prefix])
            harness.cleanup_links([lock.prefix])
    finally:
        lock.release()
