"""Issue 13: the firewall e2e of tests/e2e/test_docker_firewall.py again, with the module's
pynet daemon (and CLI) on the native nftables backend (``PYNET_FIREWALL_BACKEND=nftables``),
beside the host's real dockerd and its iptables rules: the five ways to a published port,
unpublished ports, masquerade, isolation from pynet's and Docker's networks both ways (also
after Docker creates a network, and a custom-named Docker bridge), ICC off, internal,
anti-spoofing, refused input, a refused stored record -- every test imported from there and
collected here, so it runs with this module's ``FIREWALL_BACKEND``.

Left out: the two tests that read pynet's rules out of ``iptables-save`` (replaced below by
their nft counterparts) and the dockerd restart (it restarts the shared dockerd; once per
run, in test_docker_firewall.py, is enough).  Since dockerd's FORWARD policy DROP is
active here, this also shows pynet opening iptables' FORWARD for its bridges.
"""
from __future__ import annotations

from tests.e2e.test_docker_firewall import (  # noqa: F401 (fixtures and tests, collected here)
    cli, env, forward_policy, harness,
    test_published_port_reachable_five_ways, test_unpublished_port_not_reachable,
    test_outbound_masqueraded_to_host_address, test_isolation_pynet_pynet_and_docker_both_ways,
    test_isolation_after_docker_creates_a_network, test_isolation_from_a_custom_named_docker_bridge,
    test_icc_off_and_internal, test_spoof_check, test_host_port_already_held, test_invalid_host_address,
    test_y_daemon_starts_despite_a_record_the_firewall_refuses,
)
import tests.e2e.test_docker_firewall as base

FIREWALL_BACKEND = "nftables"


def nft_table(env) -> str:
    return harness.sh("nft", "list", "table", "ip", env.cp, check=False).stdout


def test_nft_tables_and_forward_opening(env):
    """pynet's rules are its own nft tables; iptables holds only its FORWARD openings."""
    tables = harness.sh("nft", "list", "tables").stdout.splitlines()
    assert f"table ip {env.cp}" in tables and f"table ip6 {env.cp}" in tables
    forward = harness.sh("iptables", "-S", "FORWARD").stdout
    own = [ln for ln in base.ipt_save().splitlines() if f"pynet:{env.cp}:" in ln]
    assert own and all(ln.startswith("-A FORWARD ") and ln.endswith("-j ACCEPT") for ln in own), own
    if forward.splitlines()[0] == "-P FORWARD DROP":
        net_id = env.docker.inspect(env.n1, "network")["Id"]
        assert f'pynet:{env.cp}:{net_id}' in forward


def test_rm_and_network_rm_leave_no_element(env):
    d, pfx = env.docker, env.prefix
    net, c = f"{pfx}-rm", f"{pfx}-rmc"
    d.run("network", "create", "-d", env.daemon.name, "--ipam-driver", env.daemon.name,
          "--subnet", f"10.237.{(base.K + 100) % 250}.0/24", net)
    d.run("run", "-d", "--name", c, "--network", net, "-p", "80", "-p", "81/udp", env.image, "sleep", "3600")
    ip = base.ip_of(d, c, net)
    bridge = next(ln for ln in harness.sh("ip", "-o", "addr", "show").stdout.splitlines()
                  if f" {ip.rsplit('.', 1)[0]}.1/" in ln).split()[1]
    text = nft_table(env)
    assert f"{ip} . 80" in text and f"{ip} . 81" in text and f'"{bridge}"' in text
    d.run("rm", "-f", c)
    text = nft_table(env)
    assert f"{ip} . " not in text and f'"{bridge}"' in text
    d.run("network", "rm", net)
    assert f'"{bridge}"' not in nft_table(env)
    assert cli(env, "firewall", "diff", check=False).returncode == 0


def test_reconcile_after_own_table_flushed(env):
    """``nft flush table`` of pynet's own table (never ``flush ruleset`` here: the root
    namespace holds dockerd's rules) and ``iptables -F FORWARD``: the next re-check
    restores both."""
    base.flushed_then_repaired(env, ["nft", "flush", "table", "ip", env.cp], ["iptables", "-F", "FORWARD"],
                               timeout=10)
