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


# --- the firewall backends (issue 13): every firewall netns test runs on each ---------
FIREWALL_BACKENDS = {
    # name: (how the test's Firewall is built, the iptables binaries of the same kernel tables)
    "iptables-nft": ("nft", "iptables", "ip6tables"),
    "iptables-legacy": ("legacy-restore", "iptables-legacy", "ip6tables-legacy"),
    "nftables": ("nftables", "iptables", "ip6tables"),
}


class _Checked:
    """A firewall that remembers what it was last asked to apply, so the fixture can
    check afterwards that its diff is empty (the issue's "diff empty after every test")."""

    def __init__(self, fw):
        self._fw, self.last = fw, None

    def apply(self, networks, endpoints, *a, **kw):
        self._fw.apply(networks, endpoints, *a, **kw)
        self.last = (list(networks), list(endpoints))

    def remove_all(self):
        self._fw.remove_all()
        self.last = ([], [])

    def __getattr__(self, name):
        return getattr(self._fw, name)


@pytest.fixture(params=list(FIREWALL_BACKENDS), ids=lambda b: f"fw-{b}")
def fw_backend(request):
    """``.name``; ``.iptables``/``.ip6tables``: the binaries acting on the tables this
    backend's rules live beside (to set the FORWARD policy dockerd would);
    ``.make(netns, prefix="PYNET", **kw)``: the firewall, acting in ``netns``.  Every
    firewall made is checked by ``.check()`` (call it before its namespace goes) and at
    teardown if its namespace is still there: ``diff`` of what it applied last is ''."""
    kind, ipt, ip6t = FIREWALL_BACKENDS[request.param]
    made: list[_Checked] = []

    def make(netns, prefix="PYNET", **kw):
        if kind == "nftables":
            from pynet.firewall.nft import NftFirewall
            fw = NftFirewall(prefix, netns=netns, **kw)
        else:
            from pynet.firewall import Firewall
            fw = Firewall(prefix, backend=kind, netns=netns, **kw)
        made.append(_Checked(fw))
        return made[-1]

    def check():
        """Call before the namespaces go (fixtures holding them tear down first)."""
        for fw in made:
            if fw.last is not None:
                diff, fw.last = fw.diff(*fw.last), None
                assert diff == "", f"{request.param}: firewall diff not empty after the test:\n{diff}"

    yield SimpleNamespace(name=request.param, iptables=ipt, ip6tables=ip6t, make=make, check=check)
    for fw in made:  # the ones whose namespace is still there (a test's own, or the root's)
        if fw.last is not None and (fw.netns is None or os.path.exists(f"/run/netns/{fw.netns}")):
            check()
