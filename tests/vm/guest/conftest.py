"""Fixtures of the tests that run inside the kernel lab guest (every module here sets
``pytestmark = [pytest.mark.netns, pytest.mark.kernel_lab]``).

The netns layer's fixtures (``prefix``-named throwaway namespaces: ``make_netns``, ``host_ns``,
``ping``) are borrowed from tests/netns/conftest.py, so these tests build the same kind of
"machine" namespace as tests/netns does; the guest's own root namespace is left as it is.

``kernel_module_unloaded(name)``: the guest's kernel without one module for the duration (the guest
does no module autoloading, see vmlab.py), loaded again afterwards from the initramfs' tree.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "pynet_netns_fixtures", Path(__file__).resolve().parents[2] / "netns" / "conftest.py")
_netns = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_netns)
make_netns = _netns.make_netns
host_ns = _netns.host_ns
ping = _netns.ping
icmp_ping = _netns.icmp_ping


@pytest.fixture(autouse=True)
def _guest_only(request):
    # these tests change the kernel (modules) and expect Debian's: never outside the guest
    if os.environ.get("PYNET_IN_VM") != "1":
        pytest.fail("tests/vm/guest runs only inside the kernel lab VM (tests/vm/test_kernel_lab.py)",
                    pytrace=False)


@pytest.fixture
def kernel_module_unloaded():
    @contextlib.contextmanager
    def unloaded(name: str):
        subprocess.run(["rmmod", name], check=True, capture_output=True, text=True, timeout=60)
        try:
            yield
        finally:
            subprocess.run(["modprobe", "-d", os.environ["PYNET_VM_MODROOT"], name], check=True,
                           capture_output=True, text=True, timeout=60)
    return unloaded
