"""Renderer safety by construction (issue 9, defects 4 and 5), proved by property tests.

Random network/endpoint specs, hostile strings included (newlines, quotes, NUL, non-ASCII,
iptables wildcards, option-looking names, IPv6 zones carrying a whole batch), go through
the renderer.  The answer is either a typed refusal (a PynetError, never a crash) or a
batch in which every line is a table header, a chain declaration, ``COMMIT`` or one
well-formed ``-A`` rule -- and exactly as many lines as the rule set holds, so no token
ever split into a line of its own.  Bounded (max_examples, deadline=None) for CI.
"""
from __future__ import annotations

import re
import shlex

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pynet.errors import InvalidAddress, InvalidParameter, PynetError
from pynet.firewall import EndpointSpec, Firewall, NetworkSpec, PortMapping, parse_save
from pynet.firewall.model import (CHAIN_RE, ISOLATION_PATTERNS, TABLE_ORDER, Rule, Ruleset,
                                  check_spec)


class NoBackend:
    name = "none"


HOSTILE = [
    "", " ", "+", "eth+", "br-+", "pn-+", "-j", "-", "!", "a b", "a\tb", "a\nb", "x\x00y", "é",
    "br0\n", "br0\r", 'a"b', "a'b", "a\\b", "a/b", "a:b", "abcdefghijklmnop", "\u2028", "\x7f",
    "COMMIT", "*filter", "--comment", "#x",
]
INJECT = "\nCOMMIT\n*filter\n-I INPUT 1 -j ACCEPT"
HOSTILE_ADDR = [
    "::%lo" + INJECT, "::%x", "fe80::1%eth0", "10.0.0.1 -j ACCEPT", "10.0.0.1\n", '10.0.0.1"',
    "10.0.0.300", "1.2.3.4/33", "::ffff:1.2.3.4", "0.0.0.0", "::", "127.0.0.1", "::1", "", " 10.0.0.1",
]

def mostly(valid, *hostile):
    """Usually a valid value, sometimes (1 in 16) a hostile one: so most examples render
    a real rule set and the hostile value sits among valid rules."""
    return st.integers(min_value=0, max_value=15).flatmap(
        lambda k: st.one_of(*hostile) if k == 0 else valid)


names = mostly(st.sampled_from(["br1", "br2", "pn-abc", "docker0", "br-0123456789ab", "v.1", "a_b"]),
               st.sampled_from(HOSTILE), st.text(max_size=18))
subnets4 = mostly(st.sampled_from(["10.240.1.0/24", "10.240.2.0/24", "172.18.0.0/16", "10.240.1.7/24"]),
                  st.sampled_from(HOSTILE_ADDR), st.text(max_size=20))
subnets6 = mostly(st.sampled_from(["fd00:1::/64", "fd00:2::/64"]),
                  st.sampled_from(HOSTILE_ADDR + ["fe80::%x/64"]), st.text(max_size=20))
addrs4 = mostly(st.sampled_from([None, "10.240.1.2", "10.240.2.3", "172.18.0.5", "10.240.1.9/24"]),
                st.sampled_from(HOSTILE_ADDR), st.text(max_size=20))
addrs6 = mostly(st.sampled_from([None, "fd00:1::2", "fd00:2::3"]),
                st.sampled_from(HOSTILE_ADDR), st.text(max_size=20))
host_ips = mostly(st.sampled_from(["", "", "10.0.0.1", "127.0.0.1", "::1", "fd00::9", "0.0.0.0", "::"]),
                  st.sampled_from(HOSTILE_ADDR), st.text(max_size=20))
ports = mostly(st.integers(min_value=1, max_value=65535), st.sampled_from([0, -1, 65536, True]))
protos = mostly(st.sampled_from(["tcp", "udp", "sctp"]), st.sampled_from(["icmp", "tcp\n", "TCP", ""]))
macs = mostly(st.sampled_from([None, "02:42:0a:f0:01:02", "02-42-0A-F0-01-03"]),
              st.sampled_from(["zz:zz", "02:42:0a:f0:01:02\n"]), st.text(max_size=18))
ids = mostly(st.sampled_from(["n1", "n2", "n3", "e1", "e2"]), st.text(max_size=12))


@st.composite
def states(draw):
    nets = []
    for i in range(draw(st.integers(min_value=1, max_value=3))):
        nets.append(NetworkSpec(
            id=draw(mostly(st.just(f"n{i}"), ids)), bridge=draw(names),
            subnets_v4=draw(st.lists(subnets4, min_size=1, max_size=2)),
            subnets_v6=draw(st.lists(subnets6, max_size=2)),
            icc=draw(st.booleans()), internal=draw(st.booleans()), masquerade=draw(st.booleans()),
            host_ipv4=draw(st.one_of(st.none(), st.none(), host_ips)), spoof_check=draw(st.booleans())))
    net_ids = [n.id for n in nets] or ["n0"]
    eps = []
    for i in range(draw(st.integers(min_value=0, max_value=3))):
        pms = [PortMapping(proto=draw(protos), host_ip=draw(host_ips), host_port=draw(ports),
                           container_port=draw(ports),
                           container_ip=draw(mostly(st.just(""), addrs4, addrs6)) or "")
               for _ in range(draw(st.integers(min_value=0, max_value=2)))]
        eps.append(EndpointSpec(
            id=draw(mostly(st.just(f"e{i}"), ids)),
            network_id=draw(mostly(st.sampled_from(net_ids), ids)),
            ipv4=draw(addrs4), ipv6=draw(addrs6), mac=draw(macs), ports=pms,
            host_veth=draw(st.one_of(st.none(), names))))
    isolate = draw(st.lists(mostly(st.sampled_from(["docker0", "br-+", "pn-+"]), names), max_size=3))
    return nets, eps, isolate


LINE_RULE = re.compile(r"-A (\S+) (.*)")


def assert_well_formed(rs: Ruleset, text: str) -> None:
    """Every line one of the four kinds; exactly the rule set's count of lines."""
    expected = sum(2 + len(rs.chains.get(t, [])) + sum(len(r) for r in rs.rules.get(t, {}).values())
                   for t in rs.tables())
    lines = text.split("\n")
    assert lines[-1] == "" if text else lines == [""]
    lines = lines[:-1]
    assert len(lines) == expected, text
    assert len(text.splitlines()) == expected  # no \r, \v, \f, \x1c-\x1e, \u2028... either
    table = None
    comments = 0
    for line in lines:
        assert re.fullmatch(r"[ -~]+", line), repr(line)  # printable ASCII only
        if line.startswith("*"):
            assert table is None and line[1:] in TABLE_ORDER, line
            table = line[1:]
        elif line == "COMMIT":
            assert table is not None
            table = None
        elif line.startswith(":"):
            assert table is not None
            m = re.fullmatch(r":(\S+) - \[0:0\]", line)
            assert m and CHAIN_RE.fullmatch(m.group(1)), line
        else:
            assert table is not None
            m = LINE_RULE.fullmatch(line)
            assert m and CHAIN_RE.fullmatch(m.group(1)), line
            toks = shlex.split(m.group(2))
            k = toks.index("--comment")
            assert toks[k - 2:k] == ["-m", "comment"] and toks[k + 1].startswith("pynet:")
            assert re.fullmatch(r"pynet:[A-Za-z0-9_.-]*:[A-Za-z0-9_.:@/~-]+", toks[k + 1]), toks[k + 1]
            spec = toks[:k - 2] + toks[k + 2:]
            assert "--comment" not in spec
            check_spec(spec)  # the grammar, on what the line really says
            for opt in ("-i", "-o", "--physdev-in"):
                for j, t in enumerate(spec[:-1]):
                    if t == opt and "+" in spec[j + 1]:
                        assert spec[j + 1] in ISOLATION_PATTERNS, line
            comments += 1
    assert table is None
    assert comments == sum(len(r) for t in rs.rules.values() for r in t.values())
    # and it reads back as the same rules (nothing merged, split or re-owned)
    back = parse_save(text, rs.instance)
    for t, chains in rs.rules.items():
        for ch, rules in chains.items():
            got = [(r.spec, r.owner) for r in back[t].chains.get(ch, [])]
            assert [s for s, _ in got] == [r.spec for r in rules]


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(states())
def test_render_refuses_or_renders_only_well_formed_rules(state):
    nets, eps, isolate = state
    fw = Firewall("PT", backend=NoBackend(), isolate_from=isolate)
    try:
        desired = fw.desired(nets, eps)
    except PynetError:
        return  # a typed refusal
    for fam, rs in desired.items():
        assert_well_formed(rs, rs.to_restore())


@SETTINGS
@given(states())
def test_skipping_refused_owners_always_renders_the_rest(state):
    """The per-owner mode (what BridgeFirewall.sync uses): never raises for bad input,
    every line well-formed, and a refused owner has no rule at all."""
    nets, eps, isolate = state
    fw = Firewall("PT", backend=NoBackend(), isolate_from=isolate)
    problems: dict = {}
    desired = fw.desired(nets, eps, problems=problems)
    seen = [n.id for n in nets] + [e.id for e in eps]
    ambiguous = {i for i in seen if seen.count(i) > 1}  # one id for two owners: can't tell them apart
    for fam, rs in desired.items():
        assert_well_formed(rs, rs.to_restore())
        owners = {r.owner for chains in rs.rules.values() for rules in chains.values() for r in rules}
        assert not (owners & set(problems)) - ambiguous, problems
    # what the strict mode refuses, the per-owner mode skipped (it checks more: every
    # address of an endpoint, used or not, and duplicate network ids)
    try:
        fw.desired(nets, eps)
    except PynetError:
        assert problems


@SETTINGS
@given(st.text(max_size=20), st.sampled_from(["-s", "-d", "-i", "-o", "--physdev-in", "--dport",
                                              "--to-destination", "--mac-source", "-j", "-p"]))
def test_no_rule_with_a_bad_token_can_be_made(value, option):
    """A Rule is checked where it is made: a value the grammar does not accept never
    becomes a rule, so it cannot reach a batch through any path."""
    try:
        r = Rule("filter", "PT", (option, value, "-j", "ACCEPT") if option != "-j" else ("-j", value), "o", "PT")
    except InvalidParameter:
        return
    rs = Ruleset("ipv4", "PT")
    rs.rules.setdefault("filter", {}).setdefault("PT", []).append(r)
    rs.declare("filter", "PT")
    assert_well_formed(rs, rs.to_restore())


# --- the findings of issue 9, one by one -----------------------------------------------
def fw(**kw):
    return Firewall("PT", backend=NoBackend(), **kw)


NET = NetworkSpec("n1", "br1", ["10.240.1.0/24"], ["fd00:1::/64"])


@pytest.mark.parametrize("host_ipv4", ["::%lo" + INJECT, "10.0.0.1%x"])
def test_zone_text_in_host_binding_refused(host_ipv4):
    with pytest.raises(InvalidAddress):
        fw().render([NetworkSpec("n1", "br1", ["10.240.1.0/24"], [], host_ipv4=host_ipv4)], [])


@pytest.mark.parametrize("field", ["host_ip", "container_ip"])
def test_zone_text_in_a_port_mapping_refused(field):
    pm = PortMapping("tcp", "", 8080, 80)
    setattr(pm, field, "::%lo" + INJECT)
    with pytest.raises(InvalidAddress):
        fw().render([NET], [EndpointSpec("e1", "n1", "10.240.1.2", "fd00:1::2", None, [pm])])


@pytest.mark.parametrize("ip6", ["fd00:1::2%eth0", "fd00:1::2%x" + INJECT])
def test_zone_text_in_an_endpoint_address_refused(ip6):
    with pytest.raises(InvalidAddress):
        fw().render([NET], [EndpointSpec("e1", "n1", "10.240.1.2", ip6, None,
                                         [PortMapping("tcp", "", 8080, 80)])])


@pytest.mark.parametrize("bridge", ["+", "eth+", "br-+", "pn-+", "-j", "br\x00", "br 0", "br0\n", "bré"])
def test_wildcard_or_option_bridge_names_refused(bridge):
    with pytest.raises(InvalidParameter):
        fw().render([NetworkSpec("n1", bridge, ["10.240.1.0/24"])], [])


@pytest.mark.parametrize("veth", ["+", "v+", "-j", "v\x00"])
def test_wildcard_veth_names_refused(veth):
    with pytest.raises(InvalidParameter):
        fw().render([NetworkSpec("n1", "br1", ["10.240.1.0/24"], spoof_check=True)],
                    [EndpointSpec("e1", "n1", "10.240.1.2", None, None, [], veth)])


def test_isolation_patterns_are_the_only_wildcards():
    text = fw(isolate_from=("docker0", "br-+", "pn-+")).render([NET], [])["ipv4"]
    assert "-i br-+ ! -o br-+" in text and "-o pn-+ " in text
    with pytest.raises(InvalidParameter):
        fw(isolate_from=("eth+",)).render([NET], [])


def test_owner_ids_cannot_escape_the_comment():
    eps = [EndpointSpec('e"1\n-A INPUT -j ACCEPT é', "n1", "10.240.1.2", None, None,
                        [PortMapping("tcp", "", 8080, 80)]),
           EndpointSpec("x" * 600, "n1", "10.240.1.3", None, None, [PortMapping("tcp", "", 8081, 80)])]
    rs = fw().desired([NET], eps)["ipv4"]
    assert_well_formed(rs, rs.to_restore())
    tags = [r.tokens()[r.tokens().index("--comment") + 1]
            for chains in rs.rules.values() for rules in chains.values() for r in rules]
    assert any(t.startswith("pynet:PT:xxxx") for t in tags)
    assert all(len(t) < 255 for t in tags)  # iptables' comment match holds 255 bytes


@pytest.mark.parametrize("prefix", ["P T", "P\nT", 'P"', "P+", "-P", "PÉ", ""])
def test_chain_prefix_checked(prefix):
    with pytest.raises(ValueError):
        Firewall(prefix, backend=NoBackend())
