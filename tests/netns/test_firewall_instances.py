"""Two pynet Firewall instances (different chain prefixes) on one kernel (nft backend,
throwaway namespace): each owns only its ``pynet:<prefix>:`` rules, both stay above
foreign (dockerd-like) rules, and neither re-inserts itself above the other forever."""
from __future__ import annotations

import os
import secrets
import subprocess

import pytest

from pynet.firewall import EndpointSpec, Firewall, NetworkSpec, PortMapping, parse_save

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def sh(*argv, check=True):
    p = subprocess.run(argv, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {p.stderr.strip()}")
    return p


@pytest.fixture
def ns(prefix):
    name = f"{prefix}-fi{secrets.token_hex(3)}"
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def save(ns):
    # without iptables-save's "# Generated/Completed on <time>" lines: two dumps a second
    # boundary apart must still compare equal when the rules are
    out = sh("ip", "netns", "exec", ns, "iptables-nft-save").stdout
    return "".join(l for l in out.splitlines(keepends=True) if not l.startswith("#"))


def forward(ns):
    return [" ".join(r.tokens) for r in parse_save(save(ns))["filter"].chains.get("FORWARD", [])]


def state(tag, third):
    nets = [NetworkSpec(f"n{tag}", f"br{tag}", [f"10.23{third}.1.0/24"])]
    eps = [EndpointSpec(f"e{tag}", f"n{tag}", f"10.23{third}.1.2", None, None,
                        [PortMapping("tcp", "", 18000 + third, 80)])]
    return nets, eps


def owners(ns):
    return [r.tokens[r.tokens.index("--comment") + 1].split(":")[1] if "--comment" in r.tokens else "-"
            for r in parse_save(save(ns))["filter"].chains.get("FORWARD", [])]


def test_two_instances_coexist_and_settle(ns):
    a, b = Firewall("PNA", backend="nft", netns=ns), Firewall("PNB", backend="nft", netns=ns)
    sa, sb = state("a", 1), state("b", 2)
    a.apply(*sa)
    b.apply(*sb)
    assert a.diff(*sa) == "" and b.diff(*sb) == ""
    # a foreign rule inserted on top (as dockerd does on network create)
    sh("ip", "netns", "exec", ns, "iptables-nft", "-I", "FORWARD", "-i", "foreign0", "-j", "ACCEPT")
    assert a.diff(*sa) != "" and b.diff(*sb) != ""
    for _ in range(3):  # settles, no ping-pong
        a.apply(*sa)
        b.apply(*sb)
    before = save(ns)
    a.apply(*sa)
    b.apply(*sb)
    assert save(ns) == before, "instances keep re-inserting their blocks"
    own = owners(ns)
    assert own[-1] == "-"  # the foreign rule below both pynet blocks
    assert set(own[:-1]) == {"PNA", "PNB"}
    # one instance's remove_all leaves the other's rules and chains intact
    a.remove_all()
    text = save(ns)
    assert "pynet:PNA:" not in text and ":PNA" not in text
    assert "pynet:PNB:" in text and b.diff(*sb) == ""
    # iptables -F FORWARD: re-apply restores the hook-in
    sh("ip", "netns", "exec", ns, "iptables-nft", "-F", "FORWARD")
    assert "-j PNB-FORWARD" in b.diff(*sb)
    b.apply(*sb)
    assert b.diff(*sb) == ""
    b.remove_all()
    assert "pynet:" not in save(ns)


def test_instance_ignores_other_instances_rules(ns):
    """An instance with nothing desired removes nothing of another's."""
    a, b = Firewall("PNA", backend="nft", netns=ns), Firewall("PNB", backend="nft", netns=ns)
    sa = state("a", 1)
    a.apply(*sa)
    before = save(ns)
    b.apply([], [])
    b.remove_all()
    assert save(ns) == before


def test_prefix_without_colon():
    with pytest.raises(ValueError):
        Firewall("A:B", backend="nft")


def test_changes_of_one_instance_leave_the_other_alone(ns):
    """The per-change path: A's changes (a network added, then removed) touch A's rules
    only, even after a foreign rule went on top of both blocks; B stays in sync."""
    a, b = Firewall("PNA", backend="nft", netns=ns), Firewall("PNB", backend="nft", netns=ns)
    sa, sb = state("a", 1), state("b", 2)
    a.apply(*sa)
    b.apply(*sb)
    theirs = [line for line in save(ns).splitlines() if "pynet:PNB:" in line]
    sh("ip", "netns", "exec", ns, "iptables-nft", "-I", "FORWARD", "-i", "foreign0", "-j", "ACCEPT")
    more = NetworkSpec("na2", "bra2", ["10.231.2.0/24"])
    a.apply([more] + sa[0], sa[1], changed={"na2"})
    assert a.diff([more] + sa[0], sa[1]) == ""
    own = owners(ns)
    assert own[0] == "PNA" and own.index("-") < own.index("PNB")  # A's block lifted, B's untouched
    a.apply(*sa, changed={"na2"})
    assert a.diff(*sa) == ""
    assert [line for line in save(ns).splitlines() if "pynet:PNB:" in line] == theirs
    b.apply(*sb)  # B's own re-check: its block goes back above the foreign rule too
    assert b.diff(*sb) == "" and a.diff(*sa) == ""
    a.remove_all()
    b.remove_all()
