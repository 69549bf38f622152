"""The nftables backend against the real kernel, in a throwaway namespace (``nft
flush ruleset`` there never touches the root namespace's dockerd rules): two
instances' tables coexist, a change is an element delta and nothing else, a
reconcile after a flush restores everything (the per-change path falls back to
a table replace when the kernel is not what it applied last), the
administrator's rules in ``user`` survive, and iptables' FORWARD is opened
exactly where it would drop what pynet's table accepts (or refused, in one line)."""
from __future__ import annotations

import os

import pytest

from pynet.errors import KernelError
from pynet.firewall import EndpointSpec, Firewall, NetworkSpec, PortMapping
from pynet.firewall.nft import NftFirewall
from tests.netns.test_firewall_traffic import sh

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


@pytest.fixture
def ns(make_netns):
    return os.path.basename(make_netns("nk"))


def nft(ns, *args):
    return sh("ip", "netns", "exec", ns, "nft", *args).stdout


def ipt_save(ns):
    return sh("ip", "netns", "exec", ns, "iptables-nft-save").stdout


def state(tag, third, n_ports=1):
    nets = [NetworkSpec(f"n{tag}", f"br{tag}", [f"10.23{third}.1.0/24"], [f"fd00:23{third}::/64"])]
    eps = [EndpointSpec(f"e{tag}", f"n{tag}", f"10.23{third}.1.2", f"fd00:23{third}::2", "02:42:0a:00:00:02",
                        [PortMapping("tcp", "", 18000 + third * 100 + i, 80 + i) for i in range(n_ports)])]
    return nets, eps


def test_two_instances_coexist(ns):
    a, b = NftFirewall("PNA", netns=ns), NftFirewall("PNB", netns=ns)
    sa, sb = state("a", 1), state("b", 2)
    a.apply(*sa)
    b.apply(*sb)
    assert a.diff(*sa) == "" and b.diff(*sb) == ""
    tables = nft(ns, "list", "tables")
    assert {"table ip PNA", "table ip6 PNA", "table ip PNB", "table ip6 PNB"} <= set(tables.splitlines())
    # an instance with nothing desired removes nothing of the other's
    c = NftFirewall("PNC", netns=ns)
    c.apply([], [])
    c.remove_all()
    a.remove_all()
    assert "PNA" not in nft(ns, "list", "tables")
    assert b.diff(*sb) == ""
    b.remove_all()
    assert nft(ns, "list", "tables").strip() == ""


def test_change_is_an_element_delta(ns):
    fw = NftFirewall("PNX", netns=ns)
    nets, eps = state("x", 3, n_ports=3)
    fw.apply(nets, eps)
    assert fw.last_path == "replace"
    fw.apply(nets, eps)
    assert fw.last_path == "in-sync"  # a full reconcile in sync: read, nothing written
    handles = nft(ns, "-a", "list", "chain", "ip", "PNX", "forward")
    more = [EndpointSpec("ey", "nx", "10.233.1.3", None, None, [PortMapping("udp", "", 18999, 53)])]
    fw.apply(nets, eps + more, changed={"ey"})
    assert fw.last_path == "delta"
    assert fw.diff(nets, eps + more) == ""
    assert "udp . 18999 : 10.233.1.3 . 53" in nft(ns, "list", "map", "ip", "PNX", "dnat_any")
    # the rules were not touched (same handles): only elements changed
    assert nft(ns, "-a", "list", "chain", "ip", "PNX", "forward") == handles
    fw.apply(nets, eps, changed={"ey"})
    assert fw.last_path == "delta" and fw.diff(nets, eps) == ""
    # a network going: its elements go, in one delta
    n2, e2 = state("y", 4)
    fw.apply(nets + n2, eps + e2, changed={"ny", "ey"})
    assert fw.last_path == "delta" and fw.diff(nets + n2, eps + e2) == ""
    fw.apply(nets, eps, changed={"ny", "ey"})
    assert fw.last_path == "delta" and fw.diff(nets, eps) == "" and '"bry"' not in nft(ns, "list", "ruleset")
    fw.remove_all()


def test_reconcile_after_flush_ruleset(ns):
    fw = NftFirewall("PNX", netns=ns)
    nets, eps = state("x", 3)
    fw.apply(nets, eps)
    nft(ns, "flush", "ruleset")
    assert fw.diff(nets, eps) != ""
    more = [EndpointSpec("ey", "nx", "10.233.1.3", None, None, [PortMapping("udp", "", 18999, 53)])]
    # a per-change apply on a flushed kernel: the delta is refused, the table replaced
    fw.apply(nets, eps + more, changed={"ey"})
    assert fw.last_path == "replace" and fw.diff(nets, eps + more) == ""
    # a flushed chain is what the periodic full reconcile notices
    nft(ns, "flush", "chain", "ip", "PNX", "isolation")
    assert "isolation" in fw.diff(nets, eps + more)
    fw.apply(nets, eps + more)
    assert fw.diff(nets, eps + more) == ""
    # an element deleted behind pynet's back
    nft(ns, "delete", "element", "ip", "PNX", "nets", '{ "brx" }')
    assert 'element nets "brx"' in fw.diff(nets, eps + more)
    fw.apply(nets, eps + more)
    assert fw.diff(nets, eps + more) == ""
    fw.remove_all()


def test_administrators_rules_in_user_survive(ns):
    fw = NftFirewall("PNX", netns=ns)
    nets, eps = state("x", 3)
    fw.apply(nets, eps)
    nft(ns, "add", "rule", "ip", "PNX", "user", "iifname", "brx", "tcp", "dport", "22", "drop")
    assert fw.diff(nets, eps) == ""  # not pynet's to compare
    nft(ns, "delete", "element", "ip", "PNX", "nets", '{ "brx" }')
    fw.apply(nets, eps)  # a replace
    assert fw.last_path == "replace"
    assert 'iifname "brx" tcp dport 22 drop' in nft(ns, "list", "chain", "ip", "PNX", "user")
    fw.remove_all()


def test_iptables_forward_opened_only_where_it_drops(ns):
    nets, eps = state("x", 3)
    fw = NftFirewall("PNX", netns=ns)
    fw.apply(nets, eps)
    assert "pynet:PNX:" not in ipt_save(ns)  # nothing in iptables: nothing opened there
    # dockerd's policy: FORWARD DROP -> pynet's bridges opened, tagged
    for ipt in ("iptables", "ip6tables"):
        sh("ip", "netns", "exec", ns, ipt, "-P", "FORWARD", "DROP")
    assert fw.diff(nets, eps) != ""
    fw.apply(nets, eps)
    text = ipt_save(ns)
    assert '-A FORWARD -i brx -m comment --comment "pynet:PNX:nx" -j ACCEPT' in text
    assert '-A FORWARD -o brx -m comment --comment "pynet:PNX:nx" -j ACCEPT' in text
    assert fw.diff(nets, eps) == ""
    # iptables -F: the next full reconcile opens again
    sh("ip", "netns", "exec", ns, "iptables", "-F", "FORWARD")
    assert fw.diff(nets, eps) != ""
    fw.apply(nets, eps)
    assert fw.diff(nets, eps) == ""
    # a network more: opened with it
    n2, e2 = state("y", 4)
    fw.apply(nets + n2, eps + e2, changed={"ny", "ey"})
    assert "-i bry" in ipt_save(ns) and fw.diff(nets + n2, eps + e2) == ""
    # refuse instead: one readable line
    strict = NftFirewall("PNX", netns=ns, iptables_forward="refuse")
    with pytest.raises(KernelError) as e:
        strict.apply(nets, eps)
    assert "\n" not in str(e.value) and "--iptables=false" in str(e.value)
    fw.remove_all()
    assert "pynet:PNX:" not in ipt_save(ns) and "PNX" not in nft(ns, "list", "tables")


def test_switching_from_the_iptables_backend_cleans_up(ns):
    """The same prefix on the iptables backend before: its tagged rules and chains go
    when the nftables backend takes over (FORWARD policy ACCEPT: nothing to open)."""
    nets, eps = state("x", 3)
    Firewall("PNX", backend="nft", netns=ns).apply(nets, eps)
    assert "pynet:PNX:" in ipt_save(ns)
    fw = NftFirewall("PNX", netns=ns)
    fw.apply(nets, eps)
    assert "pynet:PNX:" not in ipt_save(ns) and ":PNX" not in ipt_save(ns)
    assert fw.diff(nets, eps) == ""
    fw.remove_all()


def test_refused_owner_costs_its_own_elements(ns):
    fw = NftFirewall("PNX", netns=ns)
    nets, eps = state("x", 3)
    dup = [EndpointSpec("ez", "nx", "10.233.1.9", None, None, [PortMapping("tcp", "", 18300, 80)])]  # port of ex
    problems: dict = {}
    fw.apply(nets, eps + dup, problems=problems)
    assert set(problems) == {"ez"}
    assert fw.diff(nets, eps) == ""


class _Counting(NftFirewall):
    """An NftFirewall recording every nft command it runs (argv and stdin)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: list[tuple[list, str | None]] = []

    def _nft(self, args, stdin=None):
        self.calls.append((list(args), stdin))
        return super()._nft(args, stdin)


def test_a_fresh_process_first_change_is_a_delta(ns, tmp_path):
    """A CNI binary is a fresh process each time: with the ledger beside the state (a
    file per owner), its first change reads nothing from the kernel and sends exactly
    the changed owners' elements, not the table."""
    from pynet.firewall.ledger import FileLedger
    ledger = lambda: FileLedger(str(tmp_path / "ledger"))  # noqa: E731 -- every "process" its own object
    nets, eps = state("x", 3, n_ports=50)
    NftFirewall("PNX", netns=ns, ledger=ledger()).apply(nets, eps)  # the daemon's start-up
    more = EndpointSpec("ey", "nx", "10.233.1.3", None, None, [PortMapping("udp", "", 18999, 53)])
    fresh = _Counting("PNX", netns=ns, ledger=ledger())
    fresh.apply(nets, eps + [more], changed={"ey"})
    assert fresh.last_path == "delta"
    assert [args for args, _ in fresh.calls] == [["-f", "-"]]  # one transaction, no listing
    sent = fresh.calls[0][1]
    assert sent == fresh.last_batch
    assert sorted(sent.splitlines()) == sorted([
        'add element ip PNX dnat_any { udp . 18999 : 10.233.1.3 . 53 }',
        'add element ip PNX published { "brx" . 10.233.1.3 . udp . 53 }',
        'add element ip PNX hairpin { 10.233.1.3 . 10.233.1.3 . udp . 53 }'])
    assert fresh.diff(nets, eps + [more]) == ""
    # another fresh process removes it: the deletes come from the ledger (the record is gone)
    gone = _Counting("PNX", netns=ns, ledger=ledger())
    gone.apply(nets, eps, changed={"ey"})
    assert gone.last_path == "delta" and [a for a, _ in gone.calls] == [["-f", "-"]]
    assert len(gone.last_batch.splitlines()) == 3 and all(
        ln.startswith("delete element ip PNX ") for ln in gone.last_batch.splitlines())
    assert gone.diff(nets, eps) == ""
    # a network and its endpoint in a fresh process: their elements only (IPv4 and IPv6)
    n2, e2 = state("y", 4)
    third = _Counting("PNX", netns=ns, ledger=ledger())
    third.apply(nets + n2, eps + e2, changed={"ny", "ey"})
    assert third.last_path == "delta" and third.diff(nets + n2, eps + e2) == ""
    assert '"brx"' not in third.last_batch and "18300" not in third.last_batch
    # a stale ledger (the kernel flushed behind it): the delta is refused, the table replaced
    nft(ns, "flush", "ruleset")
    stale = _Counting("PNX", netns=ns, ledger=ledger())
    stale.apply(nets, eps, changed={"ny", "ey"})
    assert stale.last_path == "replace" and stale.diff(nets, eps) == ""
    # and the next fresh process is a delta again (the full apply rewrote the ledger)
    again = _Counting("PNX", netns=ns, ledger=ledger())
    again.apply(nets, eps + [more], changed={"ey"})
    assert again.last_path == "delta" and again.diff(nets, eps + [more]) == ""
    again.remove_all()
    assert "PNX" not in nft(ns, "list", "tables")


def test_sctp_checksum_rule_as_dockers_layout(ns, tmp_path):
    """Docker's layout fills in SCTP checksums of published container ports on the way
    out (mangle POSTROUTING CHECKSUM --checksum-fill); nft has no such statement, so the
    nftables backend keeps that rule in iptables, tagged, with the port's lifetime (a
    fresh process's change included), and a reconcile after ``iptables -t mangle -F``
    restores it."""
    from pynet.firewall.ledger import FileLedger
    ledger = lambda: FileLedger(str(tmp_path / "ledger"))  # noqa: E731
    nets, eps = state("x", 3)
    sctp = EndpointSpec("es", "nx", "10.233.1.5", "fd00:233::5", "02:42:0a:00:00:05",
                        [PortMapping("sctp", "", 18777, 9777)])
    rule = '-A POSTROUTING -p sctp -m sctp --sport 9777 -m comment --comment "pynet:PNX:es" -j CHECKSUM --checksum-fill'
    fw = NftFirewall("PNX", netns=ns, ledger=ledger())
    fw.apply(nets, eps)
    assert "CHECKSUM" not in ipt_save(ns)
    NftFirewall("PNX", netns=ns, ledger=ledger()).apply(nets, eps + [sctp], changed={"es"})
    assert rule in ipt_save(ns)
    assert rule in sh("ip", "netns", "exec", ns, "ip6tables-nft-save").stdout
    assert "sctp . 18777 : 10.233.1.5 . 9777" in nft(ns, "list", "map", "ip", "PNX", "dnat_any")
    assert fw.diff(nets, eps + [sctp]) == ""
    sh("ip", "netns", "exec", ns, "iptables", "-t", "mangle", "-F", "POSTROUTING")
    assert "CHECKSUM" in fw.diff(nets, eps + [sctp])
    fw.apply(nets, eps + [sctp])
    assert rule in ipt_save(ns) and fw.diff(nets, eps + [sctp]) == ""
    # the port goes (a fresh process): its checksum rule goes with it
    NftFirewall("PNX", netns=ns, ledger=ledger()).apply(nets, eps, changed={"es"})
    assert "CHECKSUM" not in ipt_save(ns) and fw.diff(nets, eps) == ""
    # on an internal network Docker ignores port bindings: no rule either
    inner = [NetworkSpec("ni", "bri", ["10.233.9.0/24"], internal=True)]
    on_inner = EndpointSpec("ei", "ni", "10.233.9.5", None, None, [PortMapping("sctp", "", 18778, 9778)])
    fw.apply(nets + inner, eps + [on_inner])
    assert "CHECKSUM" not in ipt_save(ns) and fw.diff(nets + inner, eps + [on_inner]) == ""
    fw.remove_all()
    assert "pynet:PNX:" not in ipt_save(ns)


def test_a_fresh_process_removing_a_network_closes_its_forward_opening(ns, tmp_path):
    """dockerd's FORWARD policy DROP: a network removed by a change (its record gone, so
    it is not among the networks handed in) takes its iptables openings with it."""
    from pynet.firewall.ledger import FileLedger
    ledger = lambda: FileLedger(str(tmp_path / "ledger"))  # noqa: E731
    sh("ip", "netns", "exec", ns, "iptables", "-P", "FORWARD", "DROP")
    nets, eps = state("x", 3)
    n2, e2 = state("y", 4)
    NftFirewall("PNX", netns=ns, ledger=ledger()).apply(nets + n2, eps + e2)
    assert "-i bry" in ipt_save(ns)
    fw = NftFirewall("PNX", netns=ns, ledger=ledger())
    fw.apply(nets, eps, changed={"ny", "ey"})
    assert fw.last_path == "delta"
    assert "-i bry" not in ipt_save(ns) and "-i brx" in ipt_save(ns) and fw.diff(nets, eps) == ""
    fw.remove_all()
