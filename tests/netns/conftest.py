"""Shared fixtures of the netns layer (root): throwaway namespaces named with
the per-run ``prefix`` (root conftest), always removed in teardown.

- ``make_netns(tag)`` -> path of a new namespace ``<prefix>-<tag><hex>``
- ``host_ns``         -> a throwaway "host" namespace with a real Netlink and
                         Sysctl bound to it (``.path``, ``.name``, ``.nl``, ``.sysctl``)
- ``ping``            -> ``icmp_ping(netns_path, dst, size=56, df=False, timeout=1.0) -> bool``
                         (tests/support/icmp.py): one ICMP/ICMPv6 echo sent from inside a
                         namespace (no ping binary needed); a too-big DF packet answers False.

Nothing here touches the root namespace: every link lives inside a
namespace created here, so deleting the namespace removes it.
"""
from __future__ import annotations

import os
import secrets
import subprocess
from types import SimpleNamespace

import pytest

from tests.support.icmp import icmp_ping

NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def make_netns(prefix):
    from pynet.cnm import sandbox
    made = []

    def make(tag: str = "n") -> str:
        name = f"{prefix}-{tag}{secrets.token_hex(2)}"
        path = sandbox.create_netns(name)
        made.append(name)
        return path

    try:
        yield make
    finally:
        for name in reversed(made):
            try:
                sandbox.delete_netns(name)
            except Exception:
                subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def host_ns(make_netns):
    from pynet.netlink.pyroute import PyrouteNetlink
    from pynet.sysctl import Sysctl
    path = make_netns("h")
    nl = PyrouteNetlink(path)
    try:
        yield SimpleNamespace(path=path, name=os.path.basename(path), nl=nl, sysctl=Sysctl(netns=path))
    finally:
        nl.close()


@pytest.fixture
def ping():
    return icmp_ping
