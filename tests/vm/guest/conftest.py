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
import os
import subprocess

import pytest

# the fixtures themselves, re-exported here (tests/vm/guest is not below tests/netns)
from tests.netns.conftest import host_ns, make_netns, ping  # noqa: F401


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
