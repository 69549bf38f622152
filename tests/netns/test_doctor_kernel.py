"""Acceptance for ``pynet doctor`` (root): run inside a throwaway network namespace, once with a
healthy setup -- ip_forward=1, a test ``pynet daemon`` running *in that namespace* with a bridge
network (so its bridge and its FORWARD rules are there) -- and once after breaking it on purpose
in the same namespace: ip_forward=0, FORWARD policy DROP with the daemon's rules flushed, the
daemon killed (its socket left behind, as a crash leaves it), and a link and a chain tagged for
an instance of this run with no daemon.  Everything lives in the namespace (deleted by the
fixture) or under this run's prefix; the host's sysctls and policies are never touched."""
from __future__ import annotations

import json
import os
import secrets

from tests.support import harness
import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def _doctor(ns: str, name: str, sock, state, chain_prefix: str, json_out: bool = True):
    argv = ["ip", "netns", "exec", ns, *harness.pynet_command(), "doctor", "--plugin-name", name,
            "--socket", str(sock), "--state-dir", str(state), "--chain-prefix", chain_prefix]
    p = harness.sh(*(argv + (["--json"] if json_out else [])), check=False, timeout=120)
    if not json_out:
        return p.returncode, p.stdout
    try:
        data = json.loads(p.stdout)
    except ValueError:
        raise AssertionError(f"doctor printed no JSON (exit {p.returncode}): {p.stdout} {p.stderr}")
    return p.returncode, {c["name"]: c for c in data["checks"]}


def _failed(checks: dict) -> set[str]:
    return {n for n, c in checks.items() if c["status"] == "fail"}


def test_doctor_healthy_namespace_then_each_problem_made_on_purpose(prefix, make_netns, tmp_path):
    ns = os.path.basename(make_netns("dr"))
    name = f"{prefix}-dr{secrets.token_hex(2)}"
    sock = harness.LOCK_DIR / f"{name}.sock"   # short path: unix socket names have 108 bytes
    state = tmp_path / "state"
    cp = harness.chain_prefix_for(name)

    def in_ns(n, s, st):
        return ["ip", "netns", "exec", ns, *harness.default_daemon_argv(n, s, st)]

    # its log as JSON lines (issue 14 item 5), checked at the end
    daemon = harness.PynetDaemon(name, sock, state, command=in_ns, extra_args=["--log-format", "json"])
    nsh = lambda *a: harness.sh("ip", "netns", "exec", ns, *a)  # noqa: E731
    try:
        nsh("sysctl", "-qw", "net.ipv4.ip_forward=1")
        daemon.start(remove_stale_socket=True)
        net_id = secrets.token_hex(32)
        sub = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"  # inside the namespace only
        status, body = daemon.post("NetworkDriver.CreateNetwork", {
            "NetworkID": net_id, "IPv6Data": [],
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": f"{sub}.0/24", "Gateway": f"{sub}.1/24"}],
            "Options": {"com.docker.network.generic": {}}})
        assert status == 200, body

        # healthy: nothing fails
        rc, checks = _doctor(ns, name, sock, state, cp)
        assert _failed(checks) == set(), checks
        assert rc == 0
        assert checks["plugin_socket"]["status"] == "ok"
        assert checks["store"]["status"] == "ok" and "1 network" in checks["store"]["message"]
        assert checks["leftovers"]["status"] == "ok"

        # FORWARD DROP alone is fine while the daemon's rules are in FORWARD
        nsh("iptables", "-P", "FORWARD", "DROP")
        rc, checks = _doctor(ns, name, sock, state, cp)
        assert rc == 0 and checks["forward_policy"]["status"] == "ok", checks["forward_policy"]

        # break it: a crashed daemon (socket left), its rules gone, ip_forward off, leftovers
        daemon.kill()
        assert sock.exists()
        logged = [json.loads(line) for line in daemon.log_text().splitlines()[1:] if line.strip()]
        assert any(e["msg"].startswith("pynet daemon starting") for e in logged), logged
        assert all({"ts", "level", "logger", "msg"} <= e.keys() for e in logged)
        assert harness.sh("ip", "netns", "exec", ns, *harness.pynet_command(), "firewall", "flush",
                          "--chain-prefix", cp, "--state-dir", str(state), check=False).returncode == 0
        nsh("sysctl", "-qw", "net.ipv4.ip_forward=0")
        dead = f"{prefix}-dead{secrets.token_hex(2)}"
        dead_cp = harness.chain_prefix_for(dead)
        link = f"{prefix}-lf{secrets.token_hex(2)}"
        nsh("ip", "link", "add", link, "type", "bridge")
        nsh("ip", "link", "set", "dev", link, "alias", f"pynet:{dead}:{secrets.token_hex(32)}")
        nsh("iptables", "-N", f"{dead_cp}-USER")
        nsh("iptables", "-A", f"{dead_cp}-USER", "-j", "RETURN", "-m", "comment", "--comment",
            f"pynet:{dead_cp}:hook")

        rc, checks = _doctor(ns, name, sock, state, cp)
        assert rc == 1
        assert _failed(checks) == {"ip_forward", "forward_policy", "plugin_socket", "leftovers"}, checks
        assert "does not answer" in checks["plugin_socket"]["message"]
        assert "FORWARD policy DROP" in checks["forward_policy"]["message"]
        assert link in checks["leftovers"]["message"] and dead_cp in checks["leftovers"]["message"]
        # the daemon's own bridge is known to its store: not a leftover
        assert f"pn-{net_id[:12]}" not in checks["leftovers"]["message"]

        # the human form: one line per check, each failure with what to do
        rc, text = _doctor(ns, name, sock, state, cp, json_out=False)
        lines = text.splitlines()
        assert rc == 1 and len(lines) == len(checks)
        fails = [line for line in lines if line.startswith("FAIL")]
        assert len(fails) == 4 and all(" -- " in line for line in fails), text
    finally:
        daemon.kill()
        sock.unlink(missing_ok=True)
        # the namespace (links, rules, sysctls) goes with the make_netns fixture


def test_doctor_finds_overlay_links_and_nft_tables_of_a_dead_instance(prefix, make_netns, tmp_path):
    """In a throwaway namespace: a link tagged as the overlay tags its own
    (``pynet-overlay:<instance>:<id>``) and the nftables backend's tables (``ip``/``ip6``
    named after the chain prefix, holding pynet's sets) of an instance with no daemon are
    leftovers; another program's nft table is not, even one with a set of the same name."""
    ns = os.path.basename(make_netns("dn"))
    nsh = lambda *a: harness.sh("ip", "netns", "exec", ns, *a)  # noqa: E731
    dead = f"{prefix}-dn{secrets.token_hex(2)}"
    dead_cp = harness.chain_prefix_for(dead)
    link = f"ox-{secrets.token_hex(4)}"
    nsh("ip", "link", "add", link, "type", "bridge")
    nsh("ip", "link", "set", "dev", link, "alias", f"pynet-overlay:{dead}:{secrets.token_hex(32)}")
    sets = {"nets": "ifname", "same": "ifname . ifname", "icc_off": "ifname . ifname",
            "published": "ifname . ipv4_addr . inet_proto . inet_service",
            "spoof_ok": "ifname . ether_addr . ipv4_addr"}
    script = [f"table ip {dead_cp} {{"] + [f"  set {n} {{ type {t}; }}" for n, t in sets.items()] + ["}"]
    script += ["table ip other {", "  set nets { type ifname; }", "}"]
    (tmp_path / "t.nft").write_text("\n".join(script) + "\n")
    nsh("nft", "-f", str(tmp_path / "t.nft"))
    # this instance: nothing of its own in the namespace, no daemon needed for the check
    name = f"{prefix}-dl{secrets.token_hex(2)}"
    _, checks = _doctor(ns, name, harness.LOCK_DIR / f"{name}.sock", tmp_path / "state",
                        harness.chain_prefix_for(name))
    msg = checks["leftovers"]["message"]
    assert checks["leftovers"]["status"] == "fail", checks["leftovers"]
    assert link in msg and f"nft table(s) ip {dead_cp} of {dead_cp}" in msg, msg
    assert "other" not in msg, msg
