"""The per-change path (Firewall.apply(changed=...)) against the stateful fake backend:
whatever sequence of changes, the kernel ends where the full reconcile would have put it
(``diff`` empty), the tables are never read on the way, and a change's batch names its
own owners only.  The real-kernel versions are in tests/netns/test_firewall_kernel.py."""
from __future__ import annotations

import random

import pytest

from tests.support.fake_iptables import FakeTables

from pynet.firewall import EndpointSpec, Firewall, NetworkSpec, PortMapping
from pynet.firewall.ledger import FileLedger, MemoryLedger
from pynet.firewall.model import ENDPOINT, NETWORK, Rule
from pynet.firewall.reconcile import SavedRule, settle_order


class Counting(FakeTables):
    def __init__(self):
        super().__init__()
        self.saves = 0

    def save(self, family):
        self.saves += 1
        return super().save(family)


def net(i, **kw):
    v6 = [f"fd00:77:{i:x}::/64"] if i % 3 == 0 else []
    return NetworkSpec(f"n{i}", f"pn-t{i}", [f"10.77.{i}.0/24"], v6, **kw)


def ep(i, n, ports=(), mac=None):
    v6 = f"fd00:77:{n:x}::{i + 2:x}" if n % 3 == 0 else None
    return EndpointSpec(f"e{i}", f"n{n}", f"10.77.{n}.{i + 2}", v6, mac,
                        [PortMapping(p, "", 20000 + i * 4 + k, 80 + k) for k, p in enumerate(ports)],
                        f"pv{i}")


def test_random_changes_end_where_the_full_reconcile_would():
    rnd = random.Random(13)
    tables = Counting()
    fw = Firewall("PT", backend=tables, sysctl=lambda p, v: None)
    nets, eps = [], []
    fw.apply(nets, eps)
    fulls = 0
    for step in range(120):  # bounded
        r = rnd.random()
        live = [n.id for n in nets]
        if r < 0.35 or not nets:
            i = step
            opts = rnd.choice([{}, {"icc": False}, {"internal": True}, {"spoof_check": True},
                               {"masquerade": False}])
            n = net(i, **opts)
            nets.insert(0, n)  # newest first, as the adapter orders them
            changed = {n.id}
        elif r < 0.7:
            n = int(rnd.choice(live)[1:])
            e = ep(step, n, rnd.choice([(), ("tcp",), ("tcp", "udp"), ("sctp",)]),
                   rnd.choice([None, f"02:42:0a:4d:{n:02x}:{step % 250:02x}"]))
            eps.append(e)
            changed = {e.id}
        elif r < 0.85 and eps:
            e = eps.pop(rnd.randrange(len(eps)))
            changed = {e.id}
        else:
            n = nets.pop(rnd.randrange(len(nets)))
            gone = [e for e in eps if e.network_id == n.id]
            eps = [e for e in eps if e.network_id != n.id]
            changed = {n.id} | {e.id for e in gone}
        before, n_batches = tables.saves, len(tables.batches)
        fw.apply(nets, eps, changed=changed)
        if tables.saves == before:  # the change alone: its batches name its owners only
            tags = tuple(f"pynet:PT:{o}" for o in changed)
            for _, text in tables.batches[n_batches:]:
                assert all(any(t in line for t in tags) for line in text.splitlines()
                           if line[:1] == "-"), text
        else:
            fulls += 1
        assert fw.diff(nets, eps) == "", f"step {step}"
    # the full path is for base changes only (the first network of a family, the first
    # or last anti-spoofing network or SCTP port...)
    assert fulls <= 20, fulls  # 10 with this seed


def test_a_change_reads_nothing_and_names_its_owners_only():
    tables = Counting()
    fw = Firewall("PT", backend=tables, sysctl=lambda p, v: None)
    nets = [net(i) for i in range(5)][::-1]
    eps = [ep(1, 2, ("tcp",))]
    fw.apply(nets, eps)
    n_batches, saves = len(tables.batches), tables.saves
    nets = [net(7)] + nets
    eps = eps + [ep(2, 7, ("tcp", "udp"))]
    fw.apply(nets, eps, changed={"n7"})  # with its endpoint
    fw.apply(nets, eps[1:], changed={"e1"})
    assert tables.saves == saves
    lines = [line for _, text in tables.batches[n_batches:] for line in text.splitlines()
             if line[:1] == "-"]
    assert lines and all("pynet:PT:n7" in line or "pynet:PT:e2" in line or "pynet:PT:e1" in line
                         for line in lines)
    # only head inserts and appends when adding (no rule fetch in iptables-nft), deletes by spec
    assert all(line.startswith(("-I ", "-A ", "-D ")) for line in lines)
    assert all(line.split()[2] == "1" for line in lines if line.startswith("-I "))
    assert fw.diff(nets, eps[1:]) == ""


def test_dockerd_above_the_block_is_lifted_on_the_next_change():
    tables = FakeTables()
    fw = Firewall("PT", backend=tables, sysctl=lambda p, v: None)
    nets = [net(1)]
    fw.apply(nets, [])
    fwd = tables.tables["ipv4"]["filter"]["FORWARD"]
    fwd.insert(0, ("-i", "docker0", "!", "-o", "docker0", "-j", "ACCEPT"))
    assert "out of place" in fw.diff(nets, [])
    fw.apply([net(2)] + nets, [], changed={"n2"})
    assert fw.diff([net(2)] + nets, []) == ""
    assert tables.tables["ipv4"]["filter"]["FORWARD"][-1][:2] == ("-i", "docker0")


def test_the_ledger_on_disk_serves_a_fresh_firewall(tmp_path):
    tables = Counting()
    nets = [net(1), net(2)]
    Firewall("PT", backend=tables, sysctl=lambda p, v: None, ledger=FileLedger(str(tmp_path))).apply(nets, [])
    saves = tables.saves
    fresh = Firewall("PT", backend=tables, sysctl=lambda p, v: None, ledger=FileLedger(str(tmp_path)))
    fresh.apply(nets[1:], [], changed={"n1"})
    assert tables.saves == saves and fresh.diff(nets[1:], []) == ""
    # a ledger that does not match the kernel (flushed): the delete is refused, the full
    # reconcile takes over and rewrites the ledger
    for chains in tables.tables["ipv4"].values():
        for rules in chains.values():
            rules.clear()
    fresh = Firewall("PT", backend=tables, sysctl=lambda p, v: None, ledger=FileLedger(str(tmp_path)))
    fresh.apply([net(3)] + nets[1:], [], changed={"n3"})
    assert fresh.diff([net(3)] + nets[1:], []) == ""
    fresh.remove_all()
    assert not any((tmp_path / "ipv4").iterdir())


def test_ledger_kinds():
    m = MemoryLedger()
    m.put("ipv4", "a", {"kind": NETWORK, "rules": []})
    assert m.get("ipv4", "a")["kind"] == NETWORK
    m.put("ipv4", "a", None)
    assert m.get("ipv4", "a") is None


def test_settle_order_keeps_the_kernels_order_inside_a_section_only():
    def rule(owner, n):
        return Rule("filter", "PT", ("-o", f"br{n}", "-j", "DROP" if owner.startswith("n") else "ACCEPT"),
                    owner, "PT")
    desired = [rule("e1", 1), rule("e2", 2), rule("n1", 3), rule("n2", 4), rule("base", 5)]
    kinds = {"e1": ENDPOINT, "e2": ENDPOINT, "n1": NETWORK, "n2": NETWORK}
    actual = [SavedRule((), r.spec, r.owner) for r in (desired[1], desired[0], desired[3], desired[2])]
    got = [r.owner for r in settle_order(desired, actual, kinds)]
    assert got == ["e2", "e1", "n2", "n1", "base"]
    # an owner the kernel lacks keeps its rendered place; sections never mix
    got = [r.owner for r in settle_order(desired, actual[:1], kinds)]
    assert got == ["e1", "e2", "n1", "n2", "base"]


@pytest.mark.parametrize("changed", [{"n1"}, set()])
def test_no_owner_changed_no_batch(changed):
    tables = FakeTables()
    fw = Firewall("PT", backend=tables, sysctl=lambda p, v: None)
    fw.apply([net(1)], [])
    n = len(tables.batches)
    fw.apply([net(1)], [], changed=changed)
    assert len(tables.batches) == n
