"""Issue 13: the firewall e2e of tests/e2e/test_docker_nft.py's subset on LEGACY iptables.

Runs only inside the "legacy host" of tests/e2e/test_docker_legacy.py, which runs it as a
sub-pytest (the suite never collects this file: no ``test_`` prefix): a network namespace with
a private dockerd that writes iptables-legacy (``iptables`` on PATH is iptables-legacy,
``DOCKER_HOST`` its socket), this run's pynet daemon and CLI on legacy iptables
(``PYNET_IPTABLES_BACKEND=legacy``: libiptc for IPv4, iptables-legacy-restore for IPv6), the
module's "outside" namespace behind a veth of that host.  The base module's helpers
(``iptables``, ``iptables-save``) act on the legacy tables through that PATH.

The same guarantee classes as the nftables subset (imported from it: same policies, same
variants); in place of its three nft-table tests, the legacy ones: where the rules are,
removal leaving no rule, the reconcile after ``iptables -F FORWARD`` (the base module's), and
the reconcile after every filter and nat chain is flushed (only a host of the test's own can
take that: dockerd's rules go too).  ``pynet firewall diff`` is empty after every test.
"""
from __future__ import annotations

import os

import pytest

from tests.e2e.test_docker_firewall import env, forward_policy, harness  # noqa: F401 (fixtures)
import tests.e2e.test_docker_firewall as base
from tests.e2e.test_docker_nft import (test_icc_off_and_internal, test_isolation_pynet_pynet_and_docker_both_ways,  # noqa: F401
                                       test_outbound_masqueraded_to_host_address, test_published_port_reachable_five_ways,
                                       test_spoof_check, test_unpublished_port_not_reachable)

INSIDE = "PYNET_LEGACY_HOST"  # set by tests/e2e/test_docker_legacy.py for the sub-run

pytestmark = pytest.mark.skipif(os.environ.get(INSIDE) != "1",
                                reason="runs inside the legacy host of tests/e2e/test_docker_legacy.py only")


@pytest.fixture(autouse=True)
def firewall_diff_empty_after(request):
    """Issue 13: ``pynet firewall diff`` empty after every test (the re-check runs every 2 s)."""
    yield
    base.wait_in_sync(request.getfixturevalue("env"))


def saves(*tools: str) -> str:
    return "".join(harness.sh(t).stdout for t in tools)


def test_rules_on_legacy_tables_only(env):
    """dockerd's chains and pynet's rules (IPv4 and IPv6) in the legacy tables; nf_tables'
    iptables tables hold none of them."""
    assert "legacy" in harness.sh("iptables", "--version").stdout
    v4, v6 = saves("iptables-legacy-save"), saves("ip6tables-legacy-save")
    tag = f"pynet:{env.cp}:"
    assert tag in v4 and tag in v6
    assert ":DOCKER " in v4 and ":DOCKER-ISOLATION-STAGE-1 " in v4, v4
    nft = saves("iptables-nft-save", "ip6tables-nft-save")
    assert "pynet:" not in nft and "DOCKER" not in nft, nft


test_rm_and_network_rm_leave_no_rule = base.test_rm_and_network_rm_leave_no_rule
test_reconcile_after_forward_flushed = base.test_reconcile_after_forward_flushed


def test_z_reconcile_after_iptables_F(env):
    """``iptables -F`` and ``-t nat -F`` (both families): every chain of pynet's and dockerd's
    emptied; the re-check restores pynet's (dockerd's FORWARD rules are put back by the
    helper; dockerd's other chains stay empty: last test of the module)."""
    base.flushed_then_repaired(env, *[[ipt, *t, "-F"] for ipt in ("iptables", "ip6tables")
                                      for t in ([], ["-t", "nat"])], timeout=10)
    assert base.reach(f"ns:{env.out}", "tcp", env.host6, env.H, env.pub["explicit"])  # the IPv6 DNAT too
