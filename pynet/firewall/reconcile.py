"""Read ``iptables-save`` back into rules and plan the change to a target.

The plan for one family is a list of per-table operation lists; one batch
(``iptables-restore --noflush``) or one libiptc commit per table executes it.

Per chain the plan is: if the chain's full rule list (foreign rules
included) already equals the target, nothing; otherwise delete every pynet
rule in that chain by its exact spec and insert the target's pynet rules at
their absolute positions (``-I chain N``, ascending), which rebuilds the
target exactly around the untouched foreign rules.  Deleting by spec (not by
number) means a concurrent foreign change makes the batch fail instead of
deleting somebody else's rule.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from .model import BUILTIN_CHAINS, TABLE_ORDER, Rule, Ruleset, join, owner_tag, split_tag


@dataclass(frozen=True)
class SavedRule:
    tokens: tuple[str, ...]  # as printed, comment included
    spec: tuple[str, ...]  # own pynet comment removed
    owner: str | None  # pynet owner if this instance's rule, None for foreign rules
    peer: bool = False  # a rule of another pynet instance (foreign to this one, kept as is)

    @property
    def key(self):
        return (self.spec, self.owner)


@dataclass
class TableState:
    chains: dict[str, list[SavedRule]] = field(default_factory=dict)
    policies: dict[str, str] = field(default_factory=dict)


def _strip_counters(tokens: list[str]) -> list[str]:
    if tokens and tokens[0].startswith("[") and tokens[0].endswith("]"):
        return tokens[1:]
    return tokens


def parse_rule_tokens(tokens, instance: str | None = None) -> SavedRule:
    """One saved rule.  ``instance`` None: any pynet tag makes the rule pynet's (owner =
    the tag's owner part); else only tags of that instance do, and other instances'
    rules come back foreign with ``peer=True`` (their comment left in ``spec``)."""
    tokens = tuple(tokens)
    spec = list(tokens)
    owner = None
    peer = False
    i = 0
    while i < len(spec) - 3:
        if spec[i] == "-m" and spec[i + 1] == "comment" and spec[i + 2] == "--comment":
            tag = split_tag(spec[i + 3])
            if tag is not None and owner is None and not peer:
                if instance is None or tag[0] == instance:
                    owner = tag[1]
                    del spec[i:i + 4]
                    continue
                peer = True
        i += 1
    return SavedRule(tokens, tuple(spec), owner, peer)


_QUOTED = __import__("re").compile(r'"((?:[^"\\]|\\.)*)"(?=\s|$)|([^\s"\']+)(?=\s|$)|(\S)')


def _split(line: str) -> list[str]:
    """shlex.split for iptables-save lines, fast: plain words and whole "quoted" words
    (pynet's comments); anything else (a quote inside a word, single quotes) -> shlex."""
    if '"' not in line and "'" not in line:
        return line.split()
    out = []
    for m in _QUOTED.finditer(line):
        if m.group(3) is not None:
            return shlex.split(line)
        out.append(m.group(2) if m.group(2) is not None else
                   __import__("re").sub(r"\\(.)", r"\1", m.group(1)))
    return out


def parse_save(text: str, instance: str | None = None) -> dict[str, TableState]:
    """Parse iptables-save output into table -> TableState.

    ``instance``: the chain prefix of the Firewall reading; only its tagged rules
    count as pynet's (see :func:`parse_rule_tokens`)."""
    tables: dict[str, TableState] = {}
    cur = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            cur = tables.setdefault(line[1:], TableState())
        elif line == "COMMIT":
            cur = None
        elif line.startswith(":") and cur is not None:
            parts = line[1:].split()
            cur.chains.setdefault(parts[0], [])
            if len(parts) > 1 and parts[1] != "-":
                cur.policies[parts[0]] = parts[1]
        elif cur is not None:
            toks = _strip_counters(_split(line))
            if len(toks) >= 2 and toks[0] == "-A":
                cur.chains.setdefault(toks[1], []).append(parse_rule_tokens(toks[2:], instance))
    return tables


def parse_chain(text: str, chain: str, instance: str | None = None) -> list[SavedRule]:
    """The rules of ``iptables -S chain`` output."""
    out = []
    for line in text.splitlines():
        toks = _split(line.strip())
        if len(toks) >= 2 and toks[0] == "-A" and toks[1] == chain:
            out.append(parse_rule_tokens(toks[2:], instance))
    return out


def block_on_top(actual: list[SavedRule], block: list[tuple[str, ...]]) -> bool:
    """Whether a built-in chain starts with this instance's rules ``block`` (tokens, in
    order), only other pynet instances' rules above it, and holds no other rule of this
    instance: what target_chain leaves in place."""
    first = next((i for i, r in enumerate(actual) if r.owner is not None), None)
    if first is None:
        return not block
    if not all(r.peer for r in actual[:first]):
        return False
    mine = [r.tokens for r in actual if r.owner is not None]
    return [r.tokens for r in actual[first:first + len(block)]] == list(block) and len(mine) == len(block)


def pynet_rules(state: dict[str, TableState]) -> dict[str, dict[str, list[SavedRule]]]:
    out: dict[str, dict[str, list[SavedRule]]] = {}
    for t, ts in state.items():
        for ch, rules in ts.chains.items():
            mine = [r for r in rules if r.owner is not None]
            if mine:
                out.setdefault(t, {})[ch] = mine
    return out


# --- operations --------------------------------------------------------------
@dataclass(frozen=True)
class Op:
    kind: str  # 'new' | 'del' | 'ins' | 'app' | 'delchain'
    chain: str
    tokens: tuple[str, ...] = ()
    pos: int = 0

    def line(self) -> str:
        if self.kind == "new":
            return f":{self.chain} - [0:0]"
        if self.kind == "delchain":
            return f"-X {self.chain}"
        if self.kind == "del":
            return f"-D {self.chain} {join(self.tokens)}"
        if self.kind == "app":
            return f"-A {self.chain} {join(self.tokens)}"
        return f"-I {self.chain} {self.pos} {join(self.tokens)}"


def batch_text(plan: dict[str, list[Op]]) -> str:
    out = []
    for table in sorted(plan, key=lambda t: (TABLE_ORDER.index(t) if t in TABLE_ORDER else 99, t)):
        ops = plan[table]
        if not ops:
            continue
        out.append("*" + table)
        out.extend(op.line() for op in ops)
        out.append("COMMIT")
    return "\n".join(out) + ("\n" if out else "")


def _is_builtin(table: str, chain: str) -> bool:
    return chain in BUILTIN_CHAINS.get(table, ())


def settle_order(desired: list[Rule], actual: list[SavedRule], kinds: dict | None) -> list[Rule]:
    """``desired`` with the owners of one kind that stand next to each other (a section:
    the networks' rules in ``<prefix>-FORWARD``, the published ports' ACCEPTs in
    ``<prefix>``...) in the order the kernel has them, where it has them; owners it lacks
    keep their rendered places.  The order inside a section carries no meaning (see
    Ruleset.kinds), so a kernel whose sections were filled change by change (a new owner
    at the top or the end of its section) is in sync, not "out of place"."""
    if not kinds or not desired:
        return desired
    groups: list[tuple[str, list[Rule]]] = []
    for r in desired:
        if groups and groups[-1][0] == r.owner:
            groups[-1][1].append(r)
        else:
            groups.append((r.owner, [r]))
    at: dict[str, int] = {}
    for i, a in enumerate(actual):
        if a.owner is not None:
            at.setdefault(a.owner, i)
    out: list[Rule] = []
    i = 0
    while i < len(groups):
        kind = kinds.get(groups[i][0])
        j = i + 1
        while kind is not None and j < len(groups) and kinds.get(groups[j][0]) == kind:
            j += 1
        section = groups[i:j]
        if kind is not None and j - i > 1:
            keys = [at.get(_norm_owner(o)) for o, _ in section]
            slots = [k for k, key in enumerate(keys) if key is not None]
            moved = sorted((section[k] for k in slots), key=lambda g: at[_norm_owner(g[0])])
            for k, g in zip(slots, moved):
                section[k] = g
        for _, rules in section:
            out.extend(rules)
        i = j
    return out


def target_chain(table: str, chain: str, desired: list[Rule], actual: list[SavedRule],
                 kinds: dict | None = None):
    """The full rule list pynet wants in a chain: (spec, owner) keys and tokens.

    Built-in chains: pynet's rules on top (so they win over rules others insert
    later, re-asserted by every apply) -- but only *foreign non-pynet* rules
    must not precede them: rules of other pynet instances (``peer``) may.  If
    this instance's block now starts after nothing but peer rules, it stays
    where it is; otherwise it goes right below the run of peer rules at the top
    of the chain.  So two instances settle (whoever came first stays first)
    instead of re-inserting themselves above each other forever, and both stay
    above dockerd's rules.  Chains pynet creates: foreign rules first (a
    user's rules in ``<prefix>-USER`` stay ahead of its RETURN).
    """
    others = [r for r in actual if r.owner is None]
    theirs = [(f.key, None) for f in others]
    if not _is_builtin(table, chain):
        mine = [((r.spec, _norm_owner(r.owner)), r.tokens()) for r in settle_order(desired, actual, kinds)]
        return theirs + mine
    mine = [((r.spec, _norm_owner(r.owner)), r.tokens()) for r in desired]
    first = next((i for i, r in enumerate(actual) if r.owner is not None), None)
    if first is not None and all(r.peer for r in actual[:first]):
        at = first  # in place: only other pynet instances above it
    else:
        at = 0
        while at < len(others) and others[at].peer:
            at += 1
    return theirs[:at] + mine + theirs[at:]


def _norm_owner(owner: str) -> str:
    return owner_tag(owner).partition(":")[2].partition(":")[2]


def plan_table(table: str, actual: TableState | None, chains_wanted: list[str],
               target: dict[str, list[tuple]], removable: set[str]) -> list[Op]:
    """Operations turning ``actual`` into ``target`` for one table.

    ``target``: chain -> full list of (key, tokens|None) as from target_chain
    (tokens None = a foreign rule, kept where it is).  Chains in ``removable``
    that hold no rule afterwards and are not wanted are deleted.
    """
    actual = actual or TableState()
    ops: list[Op] = []
    for ch in chains_wanted:
        if ch not in actual.chains:
            ops.append(Op("new", ch))
    touched = set(target) | {ch for ch, rules in actual.chains.items()
                             if any(r.owner is not None for r in rules)}
    order = [ch for ch in target] + sorted(touched - set(target))
    for ch in order:
        have = actual.chains.get(ch, [])
        want = target.get(ch) or [(f.key, None) for f in have if f.owner is None]
        if [r.key for r in have] == [k for k, _ in want]:
            continue
        ops.extend(_edit_chain(ch, have, want))
    # delete chains that are pynet's, unwanted and empty of foreign rules and references
    for ch in sorted(removable):
        if ch not in actual.chains or ch in chains_wanted:
            continue
        if any(r.owner is None for r in actual.chains[ch]):
            continue
        referenced = any(r.owner is None and _jumps_to(r.spec, ch)
                         for other, rules in actual.chains.items() if other != ch for r in rules)
        if not referenced:
            ops.append(Op("delchain", ch))
    return ops


def _edit_chain(ch: str, have: list[SavedRule], want: list[tuple]) -> list[Op]:
    """The fewest deletes/inserts turning ``have`` into ``want`` (so adding the 100th network
    touches its own rules, not the 99 others'): deletes first (by spec), then inserts at their
    final absolute positions in ascending order.  If a foreign rule would have to move, fall
    back to rebuilding all of pynet's rules around the foreign ones (which never move)."""
    import difflib

    hk = [r.key for r in have]
    wk = [k for k, _ in want]
    sm = difflib.SequenceMatcher(None, hk, wk, autojunk=False)
    dels, ins = [], []
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag in ("delete", "replace"):
            dels.extend(have[i1:i2])
        if tag in ("insert", "replace"):
            ins.extend(range(j1, j2))
    if any(r.owner is None for r in dels) or any(want[j][1] is None for j in ins) \
            or len(set(hk)) != len(hk):
        dels = [r for r in have if r.owner is not None]
        ins = [j for j, (_, toks) in enumerate(want) if toks is not None]
    return [Op("del", ch, r.tokens) for r in dels] + \
        [Op("ins", ch, tuple(want[j][1]), j + 1) for j in ins]


def _jumps_to(spec, chain) -> bool:
    s = list(spec)
    return any(s[i] in ("-j", "-g") and s[i + 1] == chain for i in range(len(s) - 1))


def plan_family(actual: dict[str, TableState], desired: Ruleset, removable: set[str]) -> dict[str, list[Op]]:
    plan: dict[str, list[Op]] = {}
    tables = set(desired.tables()) | set(pynet_rules(actual)) | {
        t for t, ts in actual.items() if set(ts.chains) & removable}
    for table in tables:
        ts = actual.get(table, TableState())
        target = {}
        for ch, rules in desired.rules.get(table, {}).items():
            target[ch] = target_chain(table, ch, rules, ts.chains.get(ch, []), desired.kinds)
        ops = plan_table(table, ts, desired.chains.get(table, []), target, removable)
        if ops:
            plan[table] = ops
    return plan


def plan_restore(actual: dict[str, TableState], before: dict[str, TableState],
                 removable: set[str]) -> dict[str, list[Op]]:
    """Plan that puts pynet's rules and chains back exactly as in ``before``."""
    plan: dict[str, list[Op]] = {}
    for table in set(actual) | set(before):
        now = actual.get(table, TableState())
        old = before.get(table, TableState())
        target = {}
        for ch in set(now.chains) | set(old.chains):
            old_rules = old.chains.get(ch, [])
            if any(r.owner is not None for r in old_rules) or \
                    any(r.owner is not None for r in now.chains.get(ch, [])):
                target[ch] = [(r.key, r.tokens if r.owner is not None else None) for r in old_rules]
        wanted = [ch for ch in old.chains if ch in removable]
        ops = plan_table(table, now, wanted, target, removable)
        if ops:
            plan[table] = ops
    return plan


def diff_text(actual: dict[str, TableState], desired: Ruleset) -> str:
    """Unified-style diff of pynet rules: desired vs actual, per table and chain."""
    import difflib
    mine = pynet_rules(actual)
    a_lines, d_lines = [], []
    for table in sorted(set(desired.tables()) | set(mine)):
        for ch in sorted(set(desired.rules.get(table, {})) | set(mine.get(table, {}))):
            for r in mine.get(table, {}).get(ch, []):
                a_lines.append(f"{table} -A {ch} {join(r.tokens)}")
            want = desired.rules.get(table, {}).get(ch, [])
            if not _is_builtin(table, ch):
                want = settle_order(want, actual.get(table, TableState()).chains.get(ch, []), desired.kinds)
            for r in want:
                d_lines.append(f"{table} -A {ch} {join(r.tokens())}")
    return "".join(l + "\n" for l in difflib.unified_diff(
        a_lines, d_lines, f"actual/{desired.family}", f"desired/{desired.family}", lineterm="", n=1))


def inline_hooks(state: dict[str, TableState], prefix: str) -> dict[str, TableState]:
    """The tables as Docker 20.10 lays them out: a built-in chain's jump to
    ``<prefix>-FORWARD`` (in it, ``<prefix>-BRIDGE``) or ``<prefix>-POSTROUTING`` replaced
    by that chain's rules, and those chains gone (pynet keeps the networks' rules there so that a change never
    has to find a position among the built-in chains' foreign rules)."""
    hooks = {f"{prefix}-FORWARD", f"{prefix}-BRIDGE", f"{prefix}-POSTROUTING"}

    def inlined(rules, depth=0):
        out = []
        for r in rules:
            s = list(r.spec)
            target = s[s.index("-j") + 1] if "-j" in s[:-1] else None
            if target in hooks and target in ts.chains and depth < len(hooks):
                out.extend(inlined(ts.chains[target], depth + 1))
            else:
                out.append(r)
        return out
    for ts in state.values():
        for ch in [c for c in ts.chains if c not in hooks]:
            ts.chains[ch] = inlined(ts.chains[ch])
        for h in hooks:
            ts.chains.pop(h, None)
    return state
