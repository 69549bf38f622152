"""A stateful stand-in for an iptables backend (``save`` / ``execute``), for unit tests
of the firewall's callers: it keeps the tables of each family, prints them the way
iptables-save does (so pynet.firewall.parse_save reads them back) and applies the
plans pynet makes (new chain, delete chain, delete a rule by spec, insert at a
position, append) and lists one chain (``list_chain``).  Every batch is also rendered as
text (``batches``) and checked to have one line per operation, as iptables-restore would
see it."""
from __future__ import annotations

import shlex

from pynet.errors import KernelError
from pynet.firewall.model import BUILTIN_CHAINS, TABLE_ORDER, join
from pynet.firewall.reconcile import batch_text


class FakeTables:
    name = "fake"

    def __init__(self):
        self.tables = {fam: {t: {c: [] for c in chains} for t, chains in BUILTIN_CHAINS.items()}
                       for fam in ("ipv4", "ipv6")}
        self.batches: list[tuple[str, str]] = []
        self.before_execute = None  # hook: someone else changing the tables under a batch

    def save(self, family: str) -> str:
        out = []
        for t in TABLE_ORDER:
            chains = self.tables[family][t]
            out.append("*" + t)
            for c in chains:
                out.append(f":{c} {'ACCEPT' if c in BUILTIN_CHAINS[t] else '-'} [0:0]")
            for c, rules in chains.items():
                out.extend(f"-A {c} {join(r)}" for r in rules)
            out.append("COMMIT")
        return "\n".join(out) + "\n"

    def execute(self, family: str, plan) -> None:
        text = batch_text(plan)
        n_ops = sum(len(ops) for ops in plan.values() if ops)
        n_tables = sum(1 for ops in plan.values() if ops)
        if len(text.splitlines()) != n_ops + 2 * n_tables:
            raise KernelError("fake: a batch line is not one operation", batch=text)
        self.batches.append((family, text))
        if self.before_execute is not None:
            hook, self.before_execute = self.before_execute, None
            hook(self)
        state = {t: {c: list(r) for c, r in chains.items()} for t, chains in self.tables[family].items()}
        for table, ops in plan.items():
            chains = state[table]
            for op in ops:
                if op.kind == "new":
                    if op.chain in chains:
                        raise KernelError(f"fake: chain {op.chain} exists")
                    chains[op.chain] = []
                elif op.kind == "delchain":
                    if chains.get(op.chain):
                        raise KernelError(f"fake: chain {op.chain} not empty")
                    chains.pop(op.chain, None)
                elif op.kind == "del":
                    toks = tuple(shlex.split(join(op.tokens)))
                    if toks not in chains.get(op.chain, []):
                        raise KernelError(f"fake: no such rule in {op.chain}: {' '.join(toks)}")
                    chains[op.chain].remove(toks)
                elif op.kind == "app":
                    if op.chain not in chains:
                        raise KernelError(f"fake: no chain {op.chain}")
                    chains[op.chain].append(tuple(shlex.split(join(op.tokens))))
                else:
                    if op.chain not in chains:
                        raise KernelError(f"fake: no chain {op.chain}")
                    if not 1 <= op.pos <= len(chains[op.chain]) + 1:
                        raise KernelError("fake: Index of insertion too big.")
                    chains[op.chain].insert(op.pos - 1, tuple(shlex.split(join(op.tokens))))
        self.tables[family] = state  # all or nothing, like one iptables-restore batch

    def list_chain(self, family: str, table: str, chain: str) -> str:
        """``iptables -t table -S chain``."""
        if chain not in self.tables[family][table]:
            raise KernelError(f"fake: no chain {chain}")
        return "".join(f"-A {chain} {join(r)}\n" for r in self.tables[family][table][chain])

    def rules(self, family: str = "ipv4") -> list[str]:
        return [f"{c} {' '.join(r)}" for chains in self.tables[family].values()
                for c, rs in chains.items() for r in rs]
