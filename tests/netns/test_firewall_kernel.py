"""Firewall against the real kernel, in throwaway network namespaces (root).

Every scenario runs for both backends:
* ``nft``: in-process, the Firewall bound to the namespace (``ip netns exec``
  around iptables-nft-save/-restore);
* ``legacy``: libiptc acts on the caller's namespace, so the scenario runs in
  a subprocess started inside the namespace (``ip netns exec NS python -c``),
  with ``Firewall(backend="legacy")`` committing through python-iptables.

Nothing here touches the root namespace's tables.  Namespaces are named
``<run prefix>-fw<hex>`` (crash cleanup of the harness knows them) and are
deleted in the fixture teardown.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pynet.errors import InvalidAddress, KernelError
from pynet.firewall import EndpointSpec, Firewall, NetworkSpec, PortMapping, parse_save
from pynet.firewall.model import Rule
from pynet.firewall.reconcile import inline_hooks

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
GOLDEN = Path("/work/shared/reference/iptables-docker-20.10-noproxy-two-networks-published-port.txt")
if not GOLDEN.exists():
    GOLDEN = ROOT.parent / "shared/reference" / GOLDEN.name

SAVE = {("nft", "ipv4"): "iptables-nft-save", ("nft", "ipv6"): "ip6tables-nft-save",
        ("legacy", "ipv4"): "iptables-legacy-save", ("legacy", "ipv6"): "ip6tables-legacy-save"}
CMD = {("nft", "ipv4"): "iptables-nft", ("nft", "ipv6"): "ip6tables-nft",
       ("legacy", "ipv4"): "iptables-legacy", ("legacy", "ipv6"): "ip6tables-legacy"}


def sh(*argv, check=True, input=None):
    p = subprocess.run(argv, capture_output=True, text=True, input=input)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: rc={p.returncode} {p.stderr.strip()}")
    return p


# --- the scenario context: same API in-process (nft) and in the subprocess (legacy)
class Ctx:
    def __init__(self, kind: str, netns: str | None):
        self.kind, self.netns = kind, netns

    def _ns(self, argv):
        return (["ip", "netns", "exec", self.netns] if self.netns else []) + list(argv)

    def fw(self, **kw) -> Firewall:
        kw.setdefault("prefix", "PYNET")
        return Firewall(backend=self.kind, netns=self.netns, **kw)

    def save(self, family="ipv4") -> str:
        """iptables-save without its time-stamped comments and without tables holding no rules
        and no user chains (nft creates a table on first use; it stays, empty, after a rollback)."""
        out, table = [], []
        for line in sh(*self._ns([SAVE[self.kind, family]])).stdout.splitlines():
            if line.startswith("#"):
                continue
            table.append(line)
            if line == "COMMIT":
                if any(l.startswith("-A ") or l.endswith(" - [0:0]") for l in table):
                    out.extend(table)
                table = []
        return "\n".join(out) + "\n"

    def ipt(self, *args, family="ipv4", check=True):
        return sh(*self._ns([CMD[self.kind, family], *args]), check=check)

    def pynet_rules(self, family="ipv4"):
        """table -> chain -> [tokens] of pynet rules (comment included), as the kernel has them."""
        out = {}
        for t, ts in parse_save(self.save(family)).items():
            for ch, rules in ts.chains.items():
                mine = [r.tokens for r in rules if r.owner is not None]
                if mine:
                    out.setdefault(t, {})[ch] = mine
        return out

    def chains(self, table="filter", family="ipv4"):
        return set(parse_save(self.save(family)).get(table).chains)


def desired_rules(fw, nets, eps, family="ipv4"):
    rs = fw.desired(nets, eps)[family]
    return {t: {ch: [r.tokens() for r in rules] for ch, rules in chains.items() if rules}
            for t, chains in rs.rules.items()}


def state(v6=False, spoof=False):
    nets = [
        NetworkSpec("net2", "pt-br2", ["10.240.2.0/24"], ["fd00:2::/64"] if v6 else [], icc=False,
                    spoof_check=spoof),
        NetworkSpec("net1", "pt-br1", ["10.240.1.0/24"], ["fd00:1::/64"] if v6 else [], host_ipv4="10.240.9.9"),
        NetworkSpec("net3", "pt-br3", ["10.240.3.0/24"], [], internal=True),
    ]
    eps = [
        EndpointSpec("ep1", "net1", "10.240.1.2", "fd00:1::2" if v6 else None, None,
                     [PortMapping("tcp", "", 18088, 80, ""), PortMapping("udp", "127.0.0.1", 5353, 53, ""),
                      PortMapping("sctp", "", 9000, 90, "")], None),
        EndpointSpec("ep2", "net2", "10.240.2.2", None, "02:42:0a:f0:02:02", [], "pt-veth2"),
    ]
    return nets, eps


# --- scenarios ---------------------------------------------------------------
def sc_apply_exact(c: Ctx):
    fw = c.fw()
    nets, eps = state(v6=True, spoof=True)
    fw.apply(nets, eps)
    for fam in ("ipv4", "ipv6"):
        assert c.pynet_rules(fam) == desired_rules(fw, nets, eps, fam), fam
    assert {"PYNET", "PYNET-ISOLATION-STAGE-1", "PYNET-ISOLATION-STAGE-2", "PYNET-USER",
            "PYNET-ANTISPOOF"} <= c.chains()
    assert fw.diff(nets, eps) == ""
    if c.kind == "legacy":  # IPv4 really went through python-iptables, IPv6 through restore
        assert fw.backend.last_path == {"ipv4": "libiptc", "ipv6": "restore"}


def sc_idempotent(c: Ctx):
    fw = c.fw()
    nets, eps = state()
    fw.apply(nets, eps)
    before = [c.save("ipv4"), c.save("ipv6")]
    calls = []
    real = fw.backend.execute
    fw.backend.execute = lambda fam, plan: (calls.append(plan), real(fam, plan))
    fw.apply(nets, eps)
    fw.apply(nets, eps)
    assert calls == []  # in sync: no batch at all
    assert [c.save("ipv4"), c.save("ipv6")] == before


def sc_stale_removed(c: Ctx):
    fw = c.fw()
    nets, eps = state(v6=True)
    fw.apply(nets, eps)
    assert "pt-br2" in c.save()
    fw.apply([nets[1]], [eps[0]])  # net2, net3 and ep2 gone
    text = c.save()
    assert "pt-br2" not in text and "pt-br3" not in text and "pynet:PYNET:ep2" not in text
    assert c.pynet_rules() == desired_rules(fw, [nets[1]], [eps[0]])
    fw.apply([nets[0]], [])  # net1 gone with its endpoint, v6 off for the whole family? no: net2 has v6
    assert c.pynet_rules() == desired_rules(fw, [nets[0]], [])
    assert "pynet:PYNET:ep1" not in c.save() + c.save("ipv6")
    assert c.pynet_rules("ipv6") == desired_rules(fw, [nets[0]], [], "ipv6")


def sc_flush_forward_restored(c: Ctx):
    fw = c.fw()
    nets, eps = state()
    fw.apply(nets, eps)
    want = c.pynet_rules()
    c.ipt("-F", "FORWARD")
    assert fw.diff(nets, eps) != ""
    fw.apply(nets, eps)
    assert c.pynet_rules() == want


def sc_foreign_rules_kept_and_order_restored(c: Ctx):
    fw = c.fw()
    nets, eps = state()
    fw.apply(nets, eps)
    want = c.pynet_rules()
    # someone (dockerd restarting) inserts on top of FORWARD, and an admin adds to PYNET-USER
    c.ipt("-I", "FORWARD", "1", "-i", "docker0", "!", "-o", "docker0", "-j", "ACCEPT")
    c.ipt("-I", "FORWARD", "1", "-j", "DOCKER-USER", check=False)  # may fail: chain missing; fine
    c.ipt("-I", "PYNET-USER", "1", "-s", "10.66.0.0/16", "-j", "DROP")
    c.ipt("-A", "FORWARD", "-o", "eth9", "-j", "ACCEPT")
    assert "out of place" in fw.diff(nets, eps)
    fw.apply(nets, eps)
    st = parse_save(c.save())["filter"].chains
    fwd = st["FORWARD"]
    n_mine = len(want["filter"]["FORWARD"])
    assert all(r.owner for r in fwd[:n_mine]), "pynet block is on top again"
    assert [" ".join(r.spec) for r in fwd[n_mine:]] == ["-i docker0 ! -o docker0 -j ACCEPT",
                                                       "-o eth9 -j ACCEPT"]
    assert [(" ".join(r.spec), r.owner) for r in st["PYNET-USER"]] == [
        ("-s 10.66.0.0/16 -j DROP", None), ("-j RETURN", "base")]
    assert c.pynet_rules() == want
    assert fw.diff(nets, eps) == ""
    # remove_all keeps the foreign rules and the chain that still holds one
    fw.remove_all()
    text = c.save()
    assert "pynet:" not in text
    assert "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT" in text
    assert "-A PYNET-USER -s 10.66.0.0/16 -j DROP" in text
    assert "PYNET-ISOLATION-STAGE-1" not in text


def _inject(fw, rule: Rule):
    real = fw.desired

    def desired(nets, eps):
        d = real(nets, eps)
        d["ipv4"].add(rule.table, rule.chain, rule.spec, rule.owner)
        return d
    fw.desired = desired


def sc_rejected_batch_changes_nothing(c: Ctx):
    fw = c.fw()
    nets, eps = state(v6=True)
    fw.apply([nets[1]], [])
    before = [c.save("ipv4"), c.save("ipv6")]
    # 1) an invalid address: pynet refuses to make such a rule at all (model.Rule), so it
    #    never reaches iptables-restore
    with pytest.raises(InvalidAddress):
        Rule("filter", "PYNET", ("-s", "10.999.0.0/24", "-j", "DROP"), "bad")
    # ... and the kernel's own refusal of a batch still changes nothing: a well-formed
    #    rule jumping to a chain that does not exist
    _inject(fw, Rule("filter", "PYNET", ("-s", "10.240.2.0/24", "-j", "NOSUCHCHAIN"), "bad"))
    with pytest.raises(KernelError) as ei:
        fw.apply(nets, eps)
    assert "NOSUCHCHAIN" in str(ei.value)  # the iptables message (and the offending line)
    assert [c.save("ipv4"), c.save("ipv6")] == before
    # 2) a rule the kernel itself refuses (DNAT in POSTROUTING) in the nat table, after
    #    the filter table (with real changes) was committed: filter must be rolled back
    fw = c.fw()
    _inject(fw, Rule("nat", "POSTROUTING", ("-s", "10.240.2.0/24", "-j", "DNAT", "--to-destination",
                                             "10.240.2.9"), "bad"))
    with pytest.raises(KernelError) as ei:
        fw.apply(nets, eps)
    assert "POSTROUTING" in str(ei.value) or "DNAT" in str(ei.value) or "nat" in str(ei.value)
    assert [c.save("ipv4"), c.save("ipv6")] == before


def sc_remove_all(c: Ctx):
    fw = c.fw()
    nets, eps = state(v6=True, spoof=True)
    fw.apply(nets, eps)
    fw.remove_all()
    for fam in ("ipv4", "ipv6"):
        text = c.save(fam)
        assert "pynet:" not in text and ":PYNET" not in text, fam
    fw.remove_all()  # twice: nothing to do


def sc_golden_in_kernel(c: Ctx):
    """Prefix DOCKER in an empty namespace: iptables-save equals the golden capture rule for rule."""
    fw = c.fw(prefix="DOCKER")
    nets = [NetworkSpec("net2", "br-e99dea33cd8f", ["10.240.2.0/24"], []),
            NetworkSpec("net1", "br-e21fa4b7a5e2", ["10.240.1.0/24"], []),
            NetworkSpec("bridge", "docker0", ["172.17.0.0/16"], [])]
    eps = [EndpointSpec("ep1", "net1", "10.240.1.2", None, None,
                        [PortMapping("tcp", "", 18088, 80, "10.240.1.2")], None)]
    fw.apply(nets, eps)

    def norm(text):
        out = {}
        for t, ts in inline_hooks(parse_save(text), "DOCKER").items():
            if t in ("filter", "nat"):
                out[t] = {ch: [" ".join(r.spec) for r in rs] for ch, rs in ts.chains.items()}
        return out
    got = norm(c.save())
    # the one deliberate difference (Docker 28 has it too): unpublished ports are dropped
    # at the end of the DOCKER chain, whatever the FORWARD policy
    drops = [f"! -i {n.bridge} -o {n.bridge} -j DROP" for n in nets]
    assert got["filter"]["DOCKER"][-len(drops):] == drops
    del got["filter"]["DOCKER"][-len(drops):]
    assert got == norm(GOLDEN.read_text())


# --- the per-change path (Firewall.apply(changed=...)) ----------------------------
class Spy:
    """Counts the backend's reads and records its batches (the ops per table)."""

    def __init__(self, fw):
        self.saves, self.batches = 0, []
        real_save, real_execute = fw.backend.save, fw.backend.execute

        self.saved = []

        def save(family):
            self.saves += 1
            self.saved.append(family)
            return real_save(family)

        def execute(family, plan):
            self.batches.append((family, {t: [op.line() for op in ops] for t, ops in plan.items()}))
            return real_execute(family, plan)
        fw.backend.save, fw.backend.execute = save, execute

    def lines(self):
        return [line for _, plan in self.batches for ops in plan.values() for line in ops]


def more(v6=False):
    """A fourth network with a published port, added to state() one change at a time."""
    net = NetworkSpec("net4", "pt-br4", ["10.240.4.0/24"], ["fd00:4::/64"] if v6 else [])
    ep = EndpointSpec("ep4", "net4", "10.240.4.2", "fd00:4::2" if v6 else None, None,
                      [PortMapping("tcp", "", 18089, 8080, "")], None)
    return net, ep


LEDGERS: list[str] = []


def ledger_dir():
    """A ledger directory of the scenario's own, removed by sc_change_from_a_fresh_process."""
    import tempfile
    LEDGERS.append(tempfile.mkdtemp(prefix="pynet-ledger-"))
    return LEDGERS[-1]


def sc_change_touches_only_its_owners(c: Ctx):
    fw = c.fw()
    nets, eps = state(v6=True, spoof=True)
    fw.apply(nets, eps)
    # a rule of someone else in a pynet chain the change edits: it stays as it is
    c.ipt("-I", "PYNET-BRIDGE", "1", "-o", "pt-other", "-j", "ACCEPT")
    net4, ep4 = more(v6=True)
    spy = Spy(fw)
    nets = [net4] + nets
    fw.apply(nets, eps, changed={"net4"})
    eps = eps + [ep4]
    fw.apply(nets, eps, changed={"ep4"})
    assert spy.saves == 0, "a change never reads the tables"
    assert len(spy.batches) == 4  # one batch per family and change
    for line in spy.lines():
        assert "pynet:PYNET:net4" in line or "pynet:PYNET:ep4" in line or \
            (line.startswith(("-D FORWARD", "-I FORWARD")) and "pynet:PYNET:base" in line), line
    text = c.save()
    assert "-A PYNET-BRIDGE -o pt-other -j ACCEPT" in text
    c.ipt("-D", "PYNET-BRIDGE", "-o", "pt-other", "-j", "ACCEPT")
    assert fw.diff(nets, eps) == ""
    # and back: the endpoint, then the network, go with their rules only
    spy.batches.clear()
    spy.saves = 0
    fw.apply(nets, eps[:-1], changed={"ep4"})
    fw.apply(nets[1:], eps[:-1], changed={"net4"})
    assert spy.saves == 0
    assert all("net4" in line or "ep4" in line or "pynet:PYNET:base" in line for line in spy.lines())
    assert "net4" not in c.save() + c.save("ipv6") and "pt-br4" not in c.save()
    assert fw.diff(nets[1:], eps[:-1]) == ""
    # an unchanged owner: no batch at all
    spy.batches.clear()
    spy.saves = 0
    fw.apply(nets[1:], eps[:-1], changed={"net1"})
    assert spy.batches == [] and spy.saves == 0


def sc_change_from_a_fresh_process(c: Ctx):
    """The ledger on disk is all a new Firewall (a CNI binary in-process) knows."""
    import shutil
    try:
        _change_from_a_fresh_process(c)
    finally:
        while LEDGERS:
            shutil.rmtree(LEDGERS.pop(), ignore_errors=True)


def _change_from_a_fresh_process(c: Ctx):
    from pynet.firewall.ledger import FileLedger
    where = ledger_dir()
    nets, eps = state(v6=True)
    c.fw(ledger=FileLedger(where)).apply(nets, eps)
    net4, ep4 = more()
    fresh = c.fw(ledger=FileLedger(where))
    spy = Spy(fresh)
    fresh.apply([net4] + nets, eps + [ep4], changed={"net4", "ep4"})
    assert spy.saves == 0
    fresh = c.fw(ledger=FileLedger(where))
    spy = Spy(fresh)
    fresh.apply([net4] + nets[1:], [eps[0], ep4], changed={"net2", "ep2"})  # removed
    assert spy.saves == 0
    assert "pt-br2" not in c.save() + c.save("ipv6") and "pynet:PYNET:ep2" not in c.save()
    assert c.fw().diff([net4] + nets[1:], [eps[0], ep4]) == ""
    # ep1's SCTP port (both families) was the last one: the mangle table's base jump
    # goes, which is the full reconcile's work
    fresh = c.fw(ledger=FileLedger(where))
    spy = Spy(fresh)
    fresh.apply([net4] + nets[1:], [ep4], changed={"ep1"})
    assert spy.saved == ["ipv4", "ipv6"]
    assert "pynet:PYNET:ep1" not in c.save() + c.save("ipv6") and "*mangle" not in c.save()
    assert c.fw().diff([net4] + nets[1:], [ep4]) == ""
    # without a ledger (or with one from before): the full reconcile
    stale = c.fw(ledger=FileLedger(ledger_dir()))
    spy = Spy(stale)
    stale.apply(nets, eps, changed={"net4", "ep4"})
    assert spy.saves > 0 and c.fw().diff(nets, eps) == ""


def sc_change_restores_the_block_on_top(c: Ctx):
    fw = c.fw()
    nets, eps = state()
    fw.apply(nets, eps)
    c.ipt("-I", "FORWARD", "1", "-i", "docker0", "!", "-o", "docker0", "-j", "ACCEPT")  # dockerd's
    assert "out of place" in fw.diff(nets, eps)
    net4, ep4 = more()
    spy = Spy(fw)
    fw.apply([net4] + nets, eps, changed={"net4"})
    assert spy.saves == 0
    fwd = parse_save(c.save())["filter"].chains["FORWARD"]
    assert [r.owner for r in fwd] == ["base"] * (len(fwd) - 1) + [None]
    assert fw.diff([net4] + nets, eps) == ""


def sc_change_after_a_flush_reconciles(c: Ctx):
    """``iptables -F`` (every chain of filter and nat): the next change's deletes are
    refused, so it falls back to the full reconcile, which restores everything."""
    fw = c.fw()
    nets, eps = state()
    fw.apply(nets, eps)
    want = c.pynet_rules()
    c.ipt("-F")
    c.ipt("-t", "nat", "-F")
    fw.apply(nets[1:], eps[:1], changed={"net2", "ep2"})
    assert fw.diff(nets[1:], eps[:1]) == ""
    c.ipt("-F")
    fw.apply(nets, eps)  # the re-check's reconcile
    assert c.pynet_rules() == want


def sc_change_of_the_last_network_removes_the_base(c: Ctx):
    fw = c.fw()
    nets, eps = state(v6=True)
    fw.apply(nets[:1], [])
    fw.apply(nets[:2], eps[:1], changed={"net1", "ep1"})
    assert fw.diff(nets[:2], eps[:1]) == ""
    fw.apply(nets[1:2], eps[:1], changed={"net2"})
    fw.apply([], [], changed={"net1", "ep1"})
    for fam in ("ipv4", "ipv6"):
        assert "pynet:" not in c.save(fam) and ":PYNET" not in c.save(fam), fam


def sc_refused_change_changes_nothing(c: Ctx):
    """A change whose nat section the kernel refuses after its filter section was
    committed: the filter part is undone, the full reconcile is refused too and rolled
    back, and the kernel is as before."""
    import pynet.firewall.firewall as fwmod
    fw = c.fw()
    nets, eps = state()
    fw.apply(nets[1:], eps[:1])
    before = [c.save("ipv4"), c.save("ipv6")]
    real = fwmod.render_family

    def bad(prefix, nets_, eps_, family, *a, **kw):
        rs = real(prefix, nets_, eps_, family, *a, **kw)
        if family == "ipv4" and any(n.id == "net2" for n in nets_):
            rs.add("nat", "PYNET", ("-s", "10.240.2.0/24", "-j", "NOSUCHCHAIN"), "net2")
        return rs
    fwmod.render_family = bad
    try:
        with pytest.raises(KernelError):
            fw.apply(nets, eps, changed={"net2", "ep2"})
    finally:
        fwmod.render_family = real
    assert [c.save("ipv4"), c.save("ipv6")] == before
    fw.apply(nets, eps, changed={"net2", "ep2"})
    assert fw.diff(nets, eps) == ""


SCENARIOS = {f.__name__[3:]: f for f in (
    sc_apply_exact, sc_idempotent, sc_stale_removed, sc_flush_forward_restored,
    sc_foreign_rules_kept_and_order_restored, sc_rejected_batch_changes_nothing, sc_remove_all,
    sc_golden_in_kernel, sc_change_touches_only_its_owners, sc_change_from_a_fresh_process,
    sc_change_restores_the_block_on_top, sc_change_after_a_flush_reconciles,
    sc_change_of_the_last_network_removes_the_base, sc_refused_change_changes_nothing)}


# --- fixtures and the test matrix ---------------------------------------------
@pytest.fixture
def netns(prefix):
    name = f"{prefix}-fw{secrets.token_hex(3)}"
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def run_in_netns(name: str, scenario: str):
    code = textwrap.dedent(f"""
        import tests.netns.test_firewall_kernel as m
        m.SCENARIOS[{scenario!r}](m.Ctx("legacy", None))
    """)
    # cwd: ``python -c`` puts it first on the child's sys.path, so ``tests.netns`` imports
    p = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    if p.returncode != 0:
        pytest.fail(f"legacy scenario {scenario} failed in {name}:\n{p.stderr[-4000:]}", pytrace=False)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("kind", ["nft", "legacy"])
def test_kernel(kind, scenario, netns):
    if kind == "nft":
        SCENARIOS[scenario](Ctx("nft", netns))
    else:
        run_in_netns(netns, scenario)
