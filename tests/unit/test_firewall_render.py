"""Renderer against real Docker 20.10 captures (shared/reference), plus variants."""
from __future__ import annotations

from pathlib import Path

import pytest

from pynet.errors import InvalidAddress, InvalidParameter, PortInUse
from pynet.firewall import EndpointSpec, Firewall, NetworkSpec, PortMapping, parse_save
from pynet.firewall.reconcile import inline_hooks
from pynet.firewall.render import route_localnet_sysctls

REF = Path(__file__).resolve().parents[3] / "shared" / "reference"
if not REF.exists():
    REF = Path("/work/shared/reference")
BUILTIN = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"]
GOLDEN = REF / "iptables-docker-20.10-noproxy-two-networks-published-port.txt"
PROXY = REF / "iptables-docker-20.10-2-two-networks-published-port.txt"
BEFORE = REF / "iptables-docker-20.10-0-before.txt"


class NoBackend:
    """render() never touches the kernel."""
    name = "none"


def fw(prefix="DOCKER", **kw):
    return Firewall(prefix, backend=NoBackend(), **kw)


def normalise(text: str, prefix: str = "DOCKER") -> dict[str, dict]:
    """table -> {"chains": set of user chains, "rules": ['-A CHAIN ...' in order]} without comments,
    pynet's ``<prefix>-FORWARD``/``-POSTROUTING`` inlined where the built-in chains jump to them
    (Docker's layout has those rules in FORWARD and POSTROUTING themselves)."""
    out = {}
    for table, ts in inline_hooks(parse_save(text), prefix).items():
        rules = []
        for chain, rs in ts.chains.items():
            for r in rs:
                rules.append((chain, " ".join(r.spec)))
        users = {c for c in ts.chains if c not in ts.policies and c not in BUILTIN}
        # iptables-save groups rules by chain: built-ins first, then user chains
        builtin = [c for c in ts.chains if c in ts.policies]
        key = {c: (0, builtin.index(c)) if c in builtin else (1, c) for c in ts.chains}
        key.update({c: (0, BUILTIN.index(c)) for c in ts.chains if c in BUILTIN})
        rules.sort(key=lambda cr: key[cr[0]])  # stable: order inside a chain kept
        out[table] = {"chains": users, "rules": rules}
    return out


def without_unpublished_drops(got: dict, bridges, chain="DOCKER") -> dict:
    """The deliberate difference from Docker 20.10 (Docker 28 has it too): the filter
    ``<prefix>`` chain ends with ``! -i br -o br -j DROP`` per network, in network order,
    below every per-port ACCEPT.  Checks that and returns the layout without them."""
    rules = got["filter"]["rules"]
    drops = [(chain, f"! -i {br} -o {br} -j DROP") for br in bridges]
    mine = [r for r in rules if r[0] == chain]
    assert mine[len(mine) - len(drops):] == drops, mine
    got["filter"]["rules"] = [r for r in rules if r not in drops]
    return got


def golden_state(bridges):
    """The golden layout's networks, newest first as Docker puts them on top."""
    br2, br1, br0 = bridges
    nets = [
        NetworkSpec("net2", br2, ["10.240.2.0/24"], []),
        NetworkSpec("net1", br1, ["10.240.1.0/24"], []),
        NetworkSpec("bridge", br0, ["172.17.0.0/16"], []),  # docker0 as just another network
    ]
    eps = [EndpointSpec("ep1", "net1", "10.240.1.2", None, "02:42:0a:f0:01:02",
                        [PortMapping("tcp", "", 18088, 80, "10.240.1.2")], None)]
    return nets, eps


def test_golden_noproxy_rule_for_rule():
    nets, eps = golden_state(["br-e99dea33cd8f", "br-e21fa4b7a5e2", "docker0"])
    rendered = fw().render(nets, eps)
    got = without_unpublished_drops(normalise(rendered["ipv4"]), [n.bridge for n in nets])
    want = normalise(GOLDEN.read_text())
    for table in ("filter", "nat"):
        assert got[table]["chains"] == want[table]["chains"], table
        assert got[table]["rules"] == want[table]["rules"], table
    assert set(got) == {"filter", "nat"}
    assert rendered["ipv6"] == ""  # no IPv6 subnets: ip6tables untouched
    assert fw().sysctls(nets) == [
        ("net/ipv4/conf/br-e99dea33cd8f/route_localnet", "1"),
        ("net/ipv4/conf/br-e21fa4b7a5e2/route_localnet", "1"),
        ("net/ipv4/conf/docker0/route_localnet", "1"),
    ]


def test_golden_every_rule_tagged_with_owner():
    nets, eps = golden_state(["br-e99dea33cd8f", "br-e21fa4b7a5e2", "docker0"])
    text = fw().render(nets, eps)["ipv4"]
    rules = [l for l in text.splitlines() if l.startswith("-A ")]
    assert rules and all('-m comment --comment "pynet:' in l for l in rules)
    owners = {r.owner for ts in parse_save(text).values() for rs in ts.chains.values() for r in rs}
    assert owners == {"base", "net1", "net2", "bridge", "ep1"}
    assert '-A DOCKER -p tcp -m tcp --dport 18088 -m comment --comment "pynet:DOCKER:ep1" -j DNAT ' \
           '--to-destination 10.240.1.2:80' in rules


def test_golden_userland_proxy_variant():
    """Docker's default (proxy on) layout, from the second capture."""
    nets, eps = golden_state(["br-e727e63fee59", "br-025c3fd52350", "docker0"])
    got = without_unpublished_drops(normalise(fw(userland_proxy=True).render(nets, eps)["ipv4"]),
                                    [n.bridge for n in nets])
    want = normalise(PROXY.read_text())
    for table in ("filter", "nat"):
        assert got[table] == want[table], table
    assert fw(userland_proxy=True).sysctls(nets) == []


def test_golden_docker0_only():
    nets = [NetworkSpec("bridge", "docker0", ["172.17.0.0/16"], [])]
    got = without_unpublished_drops(normalise(fw(userland_proxy=True).render(nets, [])["ipv4"]), ["docker0"])
    want = normalise(BEFORE.read_text())
    assert got == want


def rules_of(text, table, chain=None):
    """Rules as Docker lays them out (the networks' rules in FORWARD/POSTROUTING, see normalise)."""
    ts = inline_hooks(inline_hooks(parse_save(text), "DOCKER"), "PYNET")[table]
    return [(c, " ".join(r.spec)) for c, rs in ts.chains.items() for r in rs if chain in (None, c)]


def test_prefix_default_pynet_chains():
    nets, eps = golden_state(["br1", "br2", "br0"])
    text = Firewall(backend=NoBackend()).render(nets, eps)["ipv4"]
    st = parse_save(text)
    assert set(st["filter"].chains) >= {"PYNET", "PYNET-ISOLATION-STAGE-1", "PYNET-ISOLATION-STAGE-2",
                                        "PYNET-USER", "FORWARD"}
    assert "DOCKER" not in text
    assert rules_of(text, "filter", "FORWARD")[:2] == [("FORWARD", "-j PYNET-USER"),
                                                       ("FORWARD", "-j PYNET-ISOLATION-STAGE-1")]


def test_icc_off():
    nets = [NetworkSpec("n1", "br1", ["10.240.1.0/24"], [], icc=False)]
    fwd = [r for _, r in rules_of(fw().render(nets, [])["ipv4"], "filter", "FORWARD")]
    assert fwd == [
        "-j DOCKER-USER", "-j DOCKER-ISOLATION-STAGE-1",
        "-o br1 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-o br1 -j DOCKER",
        "-i br1 ! -o br1 -j ACCEPT",
        "-i br1 -o br1 -j DROP",
    ]


def test_internal_network():
    nets = [NetworkSpec("n1", "br1", ["10.240.1.0/24"], [], internal=True),
            NetworkSpec("n2", "br2", ["10.240.2.0/24"], [])]
    eps = [EndpointSpec("e1", "n1", "10.240.1.2", None, None, [PortMapping("tcp", "", 8080, 80, "")], None)]
    text = fw().render(nets, eps)["ipv4"]
    assert [r for _, r in rules_of(text, "filter", "FORWARD") if "br1" in r] == ["-i br1 -o br1 -j ACCEPT"]
    assert [r for _, r in rules_of(text, "filter", "DOCKER-ISOLATION-STAGE-1")] == [
        "! -s 10.240.1.0/24 -o br1 -j DROP",
        "! -d 10.240.1.0/24 -i br1 -j DROP",
        "-i br2 ! -o br2 -j DOCKER-ISOLATION-STAGE-2",
        "-j RETURN",
    ]
    assert [r for _, r in rules_of(text, "filter", "DOCKER-ISOLATION-STAGE-2")] == ["-o br2 -j DROP", "-j RETURN"]
    nat = " ".join(r for _, r in rules_of(text, "nat"))
    assert "br1" not in nat and "10.240.1." not in nat  # no masquerade, no port mapping
    assert "br1" not in " ".join(r for _, r in rules_of(text, "filter", "DOCKER"))
    assert route_localnet_sysctls(nets) == [("net/ipv4/conf/br2/route_localnet", "1")]


def test_internal_network_two_subnets_uses_return_form():
    nets = [NetworkSpec("n1", "br1", ["10.240.1.0/24", "10.240.3.0/24"], [], internal=True)]
    iso = [r for _, r in rules_of(fw().render(nets, [])["ipv4"], "filter", "DOCKER-ISOLATION-STAGE-1")]
    assert iso == ["-s 10.240.1.0/24 -o br1 -j RETURN", "-s 10.240.3.0/24 -o br1 -j RETURN", "-o br1 -j DROP",
                   "-d 10.240.1.0/24 -i br1 -j RETURN", "-d 10.240.3.0/24 -i br1 -j RETURN", "-i br1 -j DROP",
                   "-j RETURN"]


def test_masquerade_off():
    nets = [NetworkSpec("n1", "br1", ["10.240.1.0/24"], [], masquerade=False)]
    post = [r for _, r in rules_of(fw().render(nets, [])["ipv4"], "nat", "POSTROUTING")]
    assert post == ["-o br1 -m addrtype --src-type LOCAL -j MASQUERADE"]  # hairpin stays, as in Docker
    post = [r for _, r in rules_of(fw(userland_proxy=True).render(nets, [])["ipv4"], "nat")]
    assert not any("br1" in r for r in post)  # and no "-i br1 -j RETURN" either


def test_host_ipv4_snat():
    nets = [NetworkSpec("n1", "br1", ["10.240.1.0/24"], ["fd00:1::/64"], host_ipv4="10.9.9.9")]
    eps = [EndpointSpec("e1", "n1", "10.240.1.2", None, None, [PortMapping("tcp", "", 8080, 80, "10.240.1.2")], None)]
    r = fw().render(nets, eps)
    post = [x for _, x in rules_of(r["ipv4"], "nat", "POSTROUTING")]
    assert post == [
        "-o br1 -m addrtype --src-type LOCAL -j SNAT --to-source 10.9.9.9",
        "-s 10.240.1.0/24 ! -o br1 -j SNAT --to-source 10.9.9.9",
        "-s 10.240.1.2/32 -d 10.240.1.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE",
    ]
    post6 = [x for _, x in rules_of(r["ipv6"], "nat", "POSTROUTING")]
    assert post6 == ["-o br1 -m addrtype --src-type LOCAL -j MASQUERADE", "-s fd00:1::/64 ! -o br1 -j MASQUERADE"]


def test_ipv6_mirror():
    nets = [NetworkSpec("n1", "br1", ["10.240.1.0/24"], ["fd00:1::/64"]),
            NetworkSpec("n2", "br2", ["10.240.2.0/24"], [])]
    eps = [EndpointSpec("e1", "n1", "10.240.1.2", "fd00:1::2", None,
                        [PortMapping("tcp", "", 8080, 80, ""), PortMapping("udp", "::1", 5353, 53, ""),
                         PortMapping("udp", "127.0.0.1", 5353, 53, "")], None)]
    r = fw().render(nets, eps)
    v4 = normalise(r["ipv4"])
    v6 = normalise(r["ipv6"])
    # same shape, only n1 in v6
    assert v6["filter"]["rules"] == [
        ("FORWARD", "-j DOCKER-USER"), ("FORWARD", "-j DOCKER-ISOLATION-STAGE-1"),
        ("FORWARD", "-o br1 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        ("FORWARD", "-o br1 -j DOCKER"), ("FORWARD", "-i br1 ! -o br1 -j ACCEPT"),
        ("FORWARD", "-i br1 -o br1 -j ACCEPT"),
        ("DOCKER", "-d fd00:1::2/128 ! -i br1 -o br1 -p tcp -m tcp --dport 80 -j ACCEPT"),
        ("DOCKER", "! -i br1 -o br1 -j DROP"),
        ("DOCKER-ISOLATION-STAGE-1", "-i br1 ! -o br1 -j DOCKER-ISOLATION-STAGE-2"),
        ("DOCKER-ISOLATION-STAGE-1", "-j RETURN"),
        ("DOCKER-ISOLATION-STAGE-2", "-o br1 -j DROP"), ("DOCKER-ISOLATION-STAGE-2", "-j RETURN"),
        ("DOCKER-USER", "-j RETURN"),
    ]
    assert v6["nat"]["rules"] == [
        ("PREROUTING", "-m addrtype --dst-type LOCAL -j DOCKER"),
        ("OUTPUT", "! -d ::1/128 -m addrtype --dst-type LOCAL -j DOCKER"),
        ("POSTROUTING", "-o br1 -m addrtype --src-type LOCAL -j MASQUERADE"),
        ("POSTROUTING", "-s fd00:1::/64 ! -o br1 -j MASQUERADE"),
        ("POSTROUTING", "-s fd00:1::2/128 -d fd00:1::2/128 -p tcp -m tcp --dport 80 -j MASQUERADE"),
        ("DOCKER", "-p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:1::2]:80"),
    ]
    # v4 has the localhost mapping (route_localnet), v6 skipped ::1
    assert ("DOCKER", "-d 127.0.0.1/32 -p udp -m udp --dport 5353 -j DNAT --to-destination 10.240.1.2:53") \
        in v4["nat"]["rules"]
    assert not any("5353" in r for _, r in v6["nat"]["rules"])


def test_sctp_checksum_rule():
    nets = [NetworkSpec("n1", "br1", ["10.240.1.0/24"], [])]
    eps = [EndpointSpec("e1", "n1", "10.240.1.2", None, None, [PortMapping("sctp", "", 9000, 90, "")], None)]
    mangle = rules_of(fw().render(nets, eps)["ipv4"], "mangle")
    assert mangle == [("POSTROUTING", "-p sctp -m sctp --sport 90 -j CHECKSUM --checksum-fill")]


def test_spoof_check_rules():
    nets = [NetworkSpec("n1", "br1", ["10.240.1.0/24"], [], spoof_check=True)]
    eps = [EndpointSpec("e1", "n1", "10.240.1.2", None, "02:42:0a:f0:01:02", [], "veth1"),
           EndpointSpec("e2", "n1", "10.240.1.3", None, None, [], "veth2")]
    text = fw().render(nets, eps)["ipv4"]
    assert rules_of(text, "filter", "DOCKER-ANTISPOOF") == [
        ("DOCKER-ANTISPOOF", "-s 10.240.1.2/32 -i br1 -m mac ! --mac-source 02:42:0a:f0:01:02 -j DROP"),
        ("DOCKER-ANTISPOOF", "! -s 10.240.1.2/32 -i br1 -m mac --mac-source 02:42:0a:f0:01:02 -j DROP"),
        ("DOCKER-ANTISPOOF", "! -s 10.240.1.3/32 -i br1 -m physdev --physdev-in veth2 -j DROP"),
    ]
    assert ("FORWARD", "-j DOCKER-ANTISPOOF") in rules_of(text, "filter", "FORWARD")
    assert ("INPUT", "-j DOCKER-ANTISPOOF") in rules_of(text, "filter", "INPUT")


def test_invalid_input():
    f = fw()
    with pytest.raises(InvalidAddress):
        f.render([NetworkSpec("n1", "br1", ["10.999.1.0/24"], [])], [])
    with pytest.raises(InvalidAddress):
        f.render([NetworkSpec("n1", "br1", ["fd00::/64"], [])], [])  # v6 in the v4 list
    with pytest.raises(InvalidParameter):
        f.render([NetworkSpec("n1", "a-bridge-name-too-long", ["10.1.0.0/24"], [])], [])
    nets = [NetworkSpec("n1", "br1", ["10.240.1.0/24"], [])]
    with pytest.raises(InvalidAddress):
        f.render(nets, [EndpointSpec("e", "n1", "10.240.1.2", None, None,
                                     [PortMapping("tcp", "", 80, 80, "10.240.1.300")], None)])
    with pytest.raises(InvalidParameter):
        f.render(nets, [EndpointSpec("e", "n1", "10.240.1.2", None, None,
                                     [PortMapping("icmp", "", 80, 80, "")], None)])
    with pytest.raises(InvalidParameter):
        f.render(nets, [EndpointSpec("e", "n1", "10.240.1.2", None, None,
                                     [PortMapping("tcp", "", 0, 80, "")], None)])
    with pytest.raises(InvalidParameter):
        f.render(nets, [EndpointSpec("e", "nX", "10.240.1.2", None, None, [], None)])
    with pytest.raises(PortInUse):
        f.render(nets, [EndpointSpec("e1", "n1", "10.240.1.2", None, None, [PortMapping("tcp", "", 80, 80, "")], None),
                        EndpointSpec("e2", "n1", "10.240.1.3", None, None,
                                     [PortMapping("tcp", "127.0.0.1", 80, 80, "")], None)])
    # same port, other protocol / other specific address: fine
    f.render(nets, [EndpointSpec("e1", "n1", "10.240.1.2", None, None, [PortMapping("tcp", "10.0.0.1", 80, 80, "")], None),
                    EndpointSpec("e2", "n1", "10.240.1.3", None, None,
                                 [PortMapping("tcp", "127.0.0.1", 80, 80, ""), PortMapping("udp", "", 80, 80, "")], None)])


def test_render_is_restore_text():
    nets, eps = golden_state(["br1", "br2", "br0"])
    text = Firewall(backend=NoBackend()).render(nets, eps)["ipv4"]
    assert text.startswith("*filter\n:PYNET - [0:0]\n")
    assert text.count("COMMIT") == 2 and text.endswith("COMMIT\n")


def test_backend_detection(monkeypatch):
    from pynet.firewall import IptcBackend, NftBackend, detect
    monkeypatch.setenv("PYNET_IPTABLES_BACKEND", "legacy")
    assert isinstance(detect(), IptcBackend)
    monkeypatch.setenv("PYNET_IPTABLES_BACKEND", "nft")
    assert isinstance(detect(), NftBackend)
    monkeypatch.delenv("PYNET_IPTABLES_BACKEND")
    import pynet.firewall.backend as b

    class P:
        def __init__(self, out): self.stdout, self.stderr = out, ""
    monkeypatch.setattr(b, "_variant_of_binary", lambda: "")  # not a known link: asks --version
    monkeypatch.setattr(b, "_run", lambda argv, **kw: P("iptables v1.8.9 (nf_tables)\n"))
    assert isinstance(detect(), NftBackend)
    monkeypatch.setattr(b, "_run", lambda argv, **kw: P("iptables v1.8.9 (legacy)\n"))
    assert isinstance(detect(), IptcBackend)


def test_backend_detection_by_the_binary_link(monkeypatch, tmp_path):
    """Debian's ``iptables`` is an alternatives link to a multi-call binary: its name is the
    variant, read without exec'ing ``iptables --version`` (one process less per CNI call)."""
    import pynet.firewall.backend as b
    from pynet.firewall import IptcBackend, NftBackend, detect
    monkeypatch.delenv("PYNET_IPTABLES_BACKEND", raising=False)
    monkeypatch.setattr(b, "_run", lambda argv, **kw: pytest.fail(f"exec'd {argv}"))
    for target, cls in (("xtables-nft-multi", NftBackend), ("xtables-legacy-multi", IptcBackend)):
        d = tmp_path / target
        d.mkdir()
        (d / target).write_text("")
        (d / "iptables").symlink_to(d / target)
        monkeypatch.setenv("PATH", str(d))
        (d / target).chmod(0o755)
        assert isinstance(detect(), cls)


def test_unpublished_ports_dropped_below_every_accept_both_families():
    """Defect 1 (issue 9): isolation must not lean on the FORWARD policy.  Each routing
    network's bridge gets ``! -i br -o br -j DROP`` at the end of the filter DNAT-accept
    chain, after the ACCEPTs of *all* networks' endpoints (whatever order the endpoints
    come in); internal networks get none (they have no jump to the chain)."""
    nets = [NetworkSpec("n1", "br1", ["10.240.1.0/24"], ["fd00:1::/64"]),
            NetworkSpec("n2", "br2", ["10.240.2.0/24"], [], icc=False),
            NetworkSpec("n3", "br3", ["10.240.3.0/24"], ["fd00:3::/64"], internal=True)]
    eps = [EndpointSpec("e2", "n2", "10.240.2.2", None, None, [PortMapping("udp", "", 5300, 53)]),
           EndpointSpec("e1", "n1", "10.240.1.2", "fd00:1::2", None, [PortMapping("tcp", "", 8080, 80)]),
           EndpointSpec("e3", "n3", "10.240.3.2", "fd00:3::2", None, [PortMapping("tcp", "", 8081, 80)])]
    r = fw().render(nets, eps)
    assert [x for _, x in rules_of(r["ipv4"], "filter", "DOCKER")] == [
        "-d 10.240.2.2/32 ! -i br2 -o br2 -p udp -m udp --dport 53 -j ACCEPT",
        "-d 10.240.1.2/32 ! -i br1 -o br1 -p tcp -m tcp --dport 80 -j ACCEPT",
        "! -i br1 -o br1 -j DROP",
        "! -i br2 -o br2 -j DROP",
    ]
    assert [x for _, x in rules_of(r["ipv6"], "filter", "DOCKER")] == [
        "-d fd00:1::2/128 ! -i br1 -o br1 -p tcp -m tcp --dport 80 -j ACCEPT",
        "! -i br1 -o br1 -j DROP",
    ]
    # replies are accepted before the jump, so the drop never sees them
    fwd = [x for _, x in rules_of(r["ipv4"], "filter", "FORWARD")]
    assert fwd.index("-o br1 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT") < fwd.index("-o br1 -j DOCKER")
    # the userland-proxy layout gets the same drops
    proxy = fw(userland_proxy=True).render(nets, eps)["ipv4"]
    assert [x for _, x in rules_of(proxy, "filter", "DOCKER")][-2:] == [
        "! -i br1 -o br1 -j DROP", "! -i br2 -o br2 -j DROP"]
