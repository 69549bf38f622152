"""The Firewall: desired state in, one atomic change per family out.

Coexistence with dockerd (the hook-in choice)
---------------------------------------------
pynet keeps its own chains (``PYNET``, ``PYNET-ISOLATION-STAGE-1/2``,
``PYNET-USER``; prefix configurable) and hooks them in as Docker does, by
rules *at the top of the built-in chains* (``FORWARD``, nat ``PREROUTING``/
``OUTPUT``/``POSTROUTING``).  Every pynet rule carries
``-m comment --comment "pynet:<prefix>:<owner>"``; nothing without that
exact instance tag is ever deleted or moved, so pynet daemons with different
chain prefixes share a host (each one's block sits above all non-pynet rules;
below other pynet instances' blocks is fine, so they never fight over the top).  dockerd inserts its own FORWARD rules above
everything when it creates a network and when it restarts; the full
reconcile therefore compares the whole chain (foreign rules included) with
the target "pynet block on top, foreign rules after, in their order" and, if
anything moved, re-inserts pynet's block on top in the same atomic batch; a
change checks FORWARD alone (``iptables -S FORWARD``) and lifts the block in
its own batch when needed.  Being first matters: Docker's ``-i docker0 ! -o docker0
-j ACCEPT`` would otherwise accept traffic before pynet's isolation sees it.
Hooking into ``DOCKER-USER`` instead was rejected: it exists only while
dockerd runs, it is the administrator's chain, and ``iptables -F
DOCKER-USER`` would silently unhook pynet.  So: call ``apply()`` on daemon
start and whenever Docker or firewalld may have rewritten the tables (it is
idempotent: no batch when in sync), and ``apply(changed=ids)`` after every
change.

A change costs what it changes: the built-in chains hold only the base jumps
(owner ``base``), the networks' and ports' rules sit in pynet's own chains in
sections whose inner order carries no meaning (Ruleset.kinds), so a change
deletes its owners' old rules (from the ledger, :mod:`pynet.firewall.ledger`)
by spec and inserts the new ones at the head of their section (``-I chain 1``)
or appends them -- neither makes iptables-nft fetch the chain's rules -- in one
batch per family, without reading or rendering anything else.  What the
ledger can't do (the base rules change; a batch refused because the kernel
disagrees with the ledger) falls back to the full reconcile below, the
committed tables of the refused batch undone first.
In the chains pynet creates, foreign rules (e.g. an admin's rules in
``PYNET-USER``) are kept *ahead* of pynet's own ones (so the final
``-j RETURN`` stays last).

FORWARD policy: Docker sets ``ip_forward=1`` and, when it is the one that
turned forwarding on, the FORWARD policy to DROP; where forwarding was already
on (a router, a Kubernetes node, a host where a CNI plugin ran first) it leaves
the policy at ACCEPT.  pynet's bridge driver sets ``ip_forward=1`` for
non-internal networks but pynet never changes a built-in chain's policy: it is
host-wide state pynet cannot own or restore by tag.  Nothing pynet promises
leans on the policy: isolation, ICC off, internal, anti-spoofing, and "a
container port is reachable from outside its network only if it is published"
are all explicit rules, for IPv4 and IPv6 -- the last one is the
``! -i br -o br -j DROP`` per network at the end of the ``<prefix>`` chain,
below every per-port ACCEPT (as Docker 28 does; Docker 20.10 relied on the
policy there, see :mod:`pynet.firewall.render`).  What policy DROP still adds
on a host without dockerd is that the host does not route between its *other*
interfaces; administrators who want that set ``iptables -P FORWARD DROP``
themselves.

Atomicity: one ``iptables-restore --noflush`` process (nft) or one libiptc
commit per table (legacy) per family.  iptables-restore commits table by
table, so when the kernel refuses a later table the tables already committed
are rolled back to the state read before the change, and
:class:`~pynet.errors.KernelError` carries the iptables message.  When the
tables changed under the batch (dockerd or another pynet instance editing the
same built-in chain between pynet's read and its batch: "Index of insertion
too big"), the change is planned again from a fresh read, a few times.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess

from pynet.errors import KernelError, NotFound, PynetError

from .backend import make_backend
from .ledger import MemoryLedger
from .model import (BUILTIN_CHAINS, CHAIN_RE, ENDPOINT, FAMILIES, IPV4, NETWORK, EndpointSpec,
                    NetworkSpec, Ruleset)
from .reconcile import (Op, block_on_top, diff_text, parse_chain, parse_save, plan_family,
                        plan_restore)
from .render import PortIndex, own_chains, render_family, route_localnet_sysctls, screen


log = logging.getLogger("pynet.firewall")

RETRIES = 3  # re-plans when someone else changed the tables under a batch


def _chains(state) -> dict:
    """Every rule of every chain (foreign ones included) and every user chain, to tell
    whether the tables moved (an empty table nft made on the way does not count)."""
    return {(t, ch): [r.tokens for r in rules] for t, ts in state.items()
            for ch, rules in ts.chains.items() if rules or ch not in BUILTIN_CHAINS.get(t, ())}


class Firewall:
    def __init__(self, prefix: str = "PYNET", backend=None, *, userland_proxy: bool = False,
                 sysctl=None, netns: str | None = None, families=FAMILIES, isolate_from=(),
                 ledger=None):
        """
        prefix: chain name prefix (``DOCKER`` reproduces Docker's layout).
        backend: None (detect once), ``"nft"``, ``"legacy"`` (libiptc),
            ``"legacy-restore"``, or a backend object.
        userland_proxy: render Docker's proxy-on variant (default off, like
            ``"userland-proxy": false``: DNAT handles localhost and hairpin).
        sysctl: ``callable(path, value)`` or object with ``set(path, value)``;
            default writes /proc/sys (inside ``netns`` if given).
        netns: named network namespace to act in (subprocess backends).
        isolate_from: bridge interface names/patterns of others (``docker0``, ``br-+``)
            isolated from pynet's networks in both directions (see render_family).
        ledger: where the rules applied per owner are remembered between changes (see
            :mod:`pynet.firewall.ledger`); default: this object's memory only.
        """
        if not isinstance(prefix, str) or not CHAIN_RE.fullmatch(prefix) \
                or len(prefix) > 28 - len("-ISOLATION-STAGE-1"):
            raise ValueError(f"invalid chain prefix {prefix!r}")
        self.prefix = prefix
        self.netns = netns
        self.backend = make_backend(backend, netns)
        self.userland_proxy = userland_proxy
        self.families = tuple(families)
        self._sysctl = sysctl
        self.isolate_from = tuple(isolate_from)
        self.ledger = ledger if ledger is not None else MemoryLedger()

    # --- rendering -----------------------------------------------------------
    def _render(self, networks, endpoints, isolate_from) -> dict[str, Ruleset]:
        return {fam: render_family(self.prefix, list(networks), list(endpoints), fam, self.userland_proxy,
                                   isolate_from)
                for fam in self.families}

    def screened(self, networks, endpoints, problems: dict):
        """``(rule sets, networks rendered)`` with the owners the renderer refuses
        skipped and recorded in ``problems`` (owner id -> one line; see
        render.screen).  A rule refused later still (model.Rule's own check of
        every token) drops its owner the same way."""
        nets, eps, iso = screen(list(networks), list(endpoints), self.isolate_from, problems)
        for _ in range(len(nets) + len(eps) + 1):
            try:
                return self._render(nets, eps, iso), nets
            except PynetError as e:
                owner = e.details.get("owner")
                if owner is None or not any(o.id == owner for o in nets + eps):
                    raise
                problems[owner] = str(e)
                nets = [n for n in nets if n.id != owner]
                ids = {n.id for n in nets}
                eps = [x for x in eps if x.id != owner and x.network_id in ids]
        raise AssertionError("unreachable: every round removes an owner")

    def desired(self, networks: list[NetworkSpec], endpoints: list[EndpointSpec],
                problems: dict | None = None) -> dict[str, Ruleset]:
        """The rule set per family.  ``problems`` None: any refused input raises (a typed
        PynetError); a dict: refused owners are skipped and recorded there instead, and
        everything else is rendered (issue 9, defect 6)."""
        if problems is None:
            return self._render(networks, endpoints, self.isolate_from)
        return self.screened(networks, endpoints, problems)[0]

    def render(self, networks, endpoints, problems: dict | None = None) -> dict[str, str]:
        """The desired iptables-restore text per family (``ipv4``, ``ipv6``)."""
        return {fam: rs.to_restore() for fam, rs in self.desired(networks, endpoints, problems).items()}

    def sysctls(self, networks) -> list[tuple[str, str]]:
        return route_localnet_sysctls(list(networks), self.userland_proxy)

    # --- kernel --------------------------------------------------------------
    def _actual(self, family: str, desired: Ruleset | None):
        try:
            return parse_save(self.backend.save(family), self.prefix)
        except KernelError:
            if desired is None or desired.is_empty():
                return None  # e.g. no IPv6 in this kernel and nothing wanted there
            raise

    def _reconcile(self, family: str, desired: Ruleset) -> None:
        # The plan is made from one read of the tables; dockerd or another pynet instance
        # (other chain prefix, other lock) may change a chain before the batch runs, and
        # the batch then fails ("Index of insertion too big", a rule to delete gone).  So:
        # rolled back, and if the tables now differ from what the plan was made from,
        # planned again from a fresh read -- a bounded number of times.
        for attempt in range(RETRIES + 1):
            before = self._actual(family, desired)
            if before is None:
                return
            plan = plan_family(before, desired, own_chains(self.prefix))
            if not plan:
                return
            try:
                self.backend.execute(family, plan)
                return
            except KernelError as err:
                now = self._rollback(family, before, err)
                if attempt == RETRIES or now is None or _chains(now) == _chains(before):
                    raise  # refused on its own merits (or the rollback failed)

    def _rollback(self, family: str, before, err: KernelError):
        """Put pynet's rules back as in ``before``; the tables afterwards, None if the
        rollback failed too."""
        try:
            now = parse_save(self.backend.save(family), self.prefix)
            plan = plan_restore(now, before, own_chains(self.prefix))
            if plan:
                self.backend.execute(family, plan)
                now = parse_save(self.backend.save(family), self.prefix)
            return now
        except KernelError as e2:
            err.details["rollback_error"] = str(e2)
            err.args = (f"{err.args[0]} (and the rollback failed too: {e2})",)
            return None

    def apply(self, networks, endpoints, problems: dict | None = None, *, changed=None) -> None:
        """Make the kernel match the desired state (idempotent).  ``problems``: as in
        :meth:`desired` (skip and record refused owners instead of raising).

        ``changed``: None for a full reconcile (read the tables, compare everything, repair);
        else the owner ids (network and endpoint ids) whose rules were added, changed or
        removed since the kernel was last in sync: only their rules are touched, from what
        the ledger says was applied for them, without reading or rendering the rest."""
        networks, endpoints = list(networks), list(endpoints)
        if changed is not None:
            self._apply_change(networks, endpoints, problems, set(changed))
            return
        if problems is None:
            desired = self.desired(networks, endpoints)  # validates everything before touching anything
        else:
            desired, networks = self.screened(networks, endpoints, problems)
        self.apply_desired(desired, networks)

    def apply_desired(self, desired: dict[str, Ruleset], networks) -> None:
        """Apply rule sets made by :meth:`desired`/:meth:`screened` (``networks``: the
        networks rendered, for their sysctls)."""
        for fam in self.families:
            self._reconcile_and_remember(fam, desired[fam])
        if IPV4 in self.families:
            for path, value in self.sysctls(networks):
                self._set_sysctl(path, value)

    def _reconcile_and_remember(self, family: str, desired: Ruleset) -> None:
        self.ledger.put(family, "base", None)  # unknown until the reconcile succeeds
        self._reconcile(family, desired)
        self.ledger.replace(family, ledger_entries(desired))

    # --- a change: its owners' rules only ---------------------------------------
    def _apply_change(self, networks, endpoints, problems, changed: set) -> None:
        """Delete the changed owners' old rules (as the ledger has them) by their exact spec
        and insert their new ones at the top or the end of their sections, in one batch per
        family; then, if dockerd inserted rules above it (it does when it creates a
        network), put the base block back on top of FORWARD.  What this can't do from the ledger
        (the base rules change: the first or the last network of a family, anti-spoofing or
        SCTP appearing, other foreign bridges; a ledger that disagrees with the kernel, so
        the batch is refused) falls back to the full reconcile, which rewrites the ledger."""
        # a network's change is its endpoints' too (their rules name its bridge)
        changed = changed | {e.id for e in endpoints if e.network_id in changed}
        found: dict[str, str] = {}
        sub_nets, sub_eps, iso = self._screen_change(networks, endpoints, changed, found)
        if found and problems is None:
            self._render(networks, endpoints, self.isolate_from)  # raises the typed error
        if problems is not None:
            problems.update(found)
        full = None
        for fam in self.families:
            try:
                rs = render_family(self.prefix, sub_nets, sub_eps, fam, self.userland_proxy, iso,
                                   whole=(networks, endpoints))
            except PynetError:
                rs = None  # an owner refused by a rule's own check: the full path skips it
            entries = ledger_entries(rs) if rs is not None else None
            if entries is None:
                why = "a rule refused"
            elif entries.get("base") != self.ledger.get(fam, "base"):
                why = "the base rules change"
            elif self._change_family(fam, entries, changed):
                continue
            else:
                why = "the batch was refused"
            log.info("firewall: %s reconciled in full (%s)", fam, why)
            if full is None:
                full = self.screened(networks, endpoints, {} if problems is None else problems)[0]
            self._reconcile_and_remember(fam, full[fam])
        if IPV4 in self.families:
            for path, value in self.sysctls([n for n in sub_nets if n.id in changed]):
                self._set_sysctl(path, value)

    def _screen_change(self, networks, endpoints, changed: set, problems: dict):
        """render.screen for the changed owners only (and the networks of changed
        endpoints), each changed endpoint's host ports checked against every other
        endpoint's: what is unchanged was screened when it changed (the full reconcile
        screens everything again)."""
        eps = [e for e in endpoints if e.id in changed]
        need = changed | {e.network_id for e in eps}
        nets = [n for n in networks if n.id in need]
        known = {n.id for n in networks}
        for e in eps:
            if e.network_id not in known:
                problems[e.id] = f"endpoint {e.id}: unknown network {e.network_id}"
        eps = [e for e in eps if e.network_id in known]
        nets, eps, iso = screen(nets, eps, self.isolate_from, problems)
        seen = PortIndex(o for o in endpoints if o.id not in changed)
        ok = []
        for e in eps:
            err = seen.conflict(e)
            if err is not None:
                problems[e.id] = f"endpoint {e.id}: {err}"
            else:
                ok.append(e)
        return nets, ok, iso

    def _at_top(self, table: str, chain: str, kind: str) -> bool:
        """Where a new owner's rules go in its section (any place in the section is right,
        see Ruleset.kinds): the networks' first sections at the top, the sections that
        follow another one (the networks' unpublished-port drops after every port's
        ACCEPT, the ports' DNATs, masquerades and checksums after the networks') at the end."""
        if table == "filter" and chain == self.prefix:
            return kind == ENDPOINT
        return kind == NETWORK

    def _change_family(self, family: str, entries: dict, changed: set) -> bool:
        """One batch for the changed owners of one family; False when it was refused (and
        undone): the caller then reconciles the family in full."""
        dels: dict[str, list[Op]] = {}
        ins: dict[str, list[Op]] = {}
        undo_dels: dict[str, list[Op]] = {}
        undo_ins: dict[str, list[Op]] = {}
        for owner in sorted(changed):
            old = self.ledger.get(family, owner) or {"kind": None, "rules": []}
            new = entries.get(owner) or {"kind": None, "rules": []}
            if old["rules"] == new["rules"]:
                continue
            for table, chain, toks in old["rules"]:
                dels.setdefault(table, []).append(Op("del", chain, tuple(toks)))
            for table, chain, toks in new["rules"]:
                undo_dels.setdefault(table, []).append(Op("del", chain, tuple(toks)))
            self._place(ins, new)
            self._place(undo_ins, old)
        if not dels and not ins:
            return True
        base = entries.get("base") or {"rules": []}
        block = [tuple(t) for table, chain, t in base["rules"] if (table, chain) == ("filter", "FORWARD")]
        lift = self._lift(family, block)
        if lift is None:
            return False  # the hook-in is gone (iptables -F FORWARD): the full reconcile's work
        tables = [t for t in ("raw", "mangle", "filter", "nat") if t in dels or t in ins]
        batch = {t: dels.get(t, []) + ins.get(t, []) for t in tables}
        try:
            self.backend.execute(family, batch)
        except KernelError as err:
            failed = _failed_table(err, tables)
            for t in tables[:tables.index(failed)] if failed in tables else []:
                with contextlib.suppress(KernelError):  # best effort; the full reconcile follows
                    self.backend.execute(family, {t: undo_dels.get(t, []) + undo_ins.get(t, [])})
            return False
        for owner in changed:
            self.ledger.put(family, owner, entries.get(owner))
        if lift:
            # a batch of its own: a delete makes iptables-nft fetch every rule of the table
            # for the whole batch, so mixed with the change it would cost what the table holds
            try:
                self.backend.execute(family, {"filter": lift})
            except KernelError as e:  # FORWARD changed again meanwhile: the re-check lifts it
                log.warning("firewall: %s: could not put the base block back on top of FORWARD: %s",
                            family, e)
        return True

    def _lift(self, family: str, block: list[tuple]) -> list[Op] | None:
        """The ops that put the base block back on top of FORWARD, from FORWARD's rules
        alone (dockerd inserts its rules above it when it creates a network): [] when it
        is in place, None when a rule of it is missing."""
        if not block:
            return []
        lister = getattr(self.backend, "list_chain", None)
        if lister is None:
            return []  # a backend that can't list one chain: the re-check keeps the order
        try:
            actual = parse_chain(lister(family, "filter", "FORWARD"), "FORWARD", self.prefix)
        except KernelError:
            return None  # can't tell: the full reconcile reads (and reports) for itself
        if block_on_top(actual, block):
            return []
        log.debug("firewall: %s: the base block is back on top of FORWARD", family)
        have = [r.tokens for r in actual if r.owner is not None]
        if any(h not in have for h in block):
            return None
        # the peers' blocks (other pynet instances) may stay above: insert right below them
        at = 0
        while at < len(actual) and actual[at].peer:
            at += 1
        return [Op("del", "FORWARD", h) for h in block] + \
            [Op("ins", "FORWARD", h, at + i + 1) for i, h in enumerate(block)]

    def _place(self, ops: dict[str, list[Op]], entry: dict) -> None:
        """An owner's rules as ops: at the top of a section, each chain's rules inserted at
        position 1 last first; at the end, appended.  Neither needs iptables-nft to fetch
        the chain's rules (an insert at position k > 1 or a delete by spec does: its cost
        grows with the chain), so adding a network costs the same at any number of them."""
        kind = entry.get("kind")
        heads: dict[tuple[str, str], list] = {}
        for table, chain, toks in entry["rules"]:
            if self._at_top(table, chain, kind):
                heads.setdefault((table, chain), []).append(tuple(toks))
            else:
                ops.setdefault(table, []).append(Op("app", chain, tuple(toks)))
        for (table, chain), rules in heads.items():
            ops.setdefault(table, []).extend(Op("ins", chain, t, 1) for t in reversed(rules))

    def remove_all(self) -> None:
        """Remove every pynet-owned rule and every empty pynet chain."""
        for fam in self.families:
            self._reconcile_and_remember(fam, Ruleset(fam, self.prefix))

    def diff(self, networks, endpoints, problems: dict | None = None) -> str:
        """Desired vs actual pynet rules; '' when the kernel is in sync."""
        out = []
        for fam, rs in self.desired(networks, endpoints, problems).items():
            actual = self._actual(fam, rs)
            if actual is None:
                continue
            text = diff_text(actual, rs)
            if text:
                out.append(text)
            else:
                plan = plan_family(actual, rs, own_chains(self.prefix))
                if plan:
                    chains = sorted({f"{t}/{op.chain}" for t, ops in plan.items() for op in ops})
                    out.append(f"# {fam}: pynet rules present but out of place in: {', '.join(chains)}\n")
        return "".join(out)

    def _set_sysctl(self, path: str, value: str) -> None:
        if set_bridge_sysctl(self._sysctl, path, value):
            return
        if self.netns:
            p = subprocess.run(["ip", "netns", "exec", self.netns, "sh", "-c",
                                f'[ ! -e "/proc/sys/{path}" ] || echo {value} > "/proc/sys/{path}"'],
                               capture_output=True, text=True)
            if p.returncode != 0:
                raise KernelError(f"sysctl {path}={value}: {p.stderr.strip()}")
            return
        full = os.path.join("/proc/sys", path)
        if not os.path.exists(os.path.dirname(full)):
            return  # bridge not created yet; the next apply() sets it
        try:
            with open(full, "w") as f:
                f.write(value)
        except OSError as e:
            raise KernelError(f"sysctl {path}={value}: {e}") from None


def set_bridge_sysctl(sysctl, path: str, value: str) -> bool:
    """A bridge's sysctl (``route_localnet``) through ``sysctl`` (the kernel interface, or a
    callable); False when there is none (the caller writes /proc itself).  A bridge that no
    longer exists (deleted by hand, or by a restore before the firewall's pass) is skipped
    with a log line: its rules are harmless and its network is repaired or removed on its
    own -- it must not fail a daemon's start-up or another network's change."""
    if sysctl is None:
        return False
    setter = getattr(sysctl, "set", sysctl)
    try:
        setter(path, value)
    except NotFound:
        log.warning("sysctl %s=%s skipped: %s has no such interface (the bridge is gone)",
                    path, value, path.split("/")[3] if path.count("/") >= 4 else path)
    return True


def ledger_entries(rs: Ruleset) -> dict[str, dict]:
    """The ledger's entries of a rendered rule set: owner -> {"kind", "rules"}, each owner's
    rules in table and chain order (the order inside a chain kept); the base entry also
    lists the chains.  An empty rule set has none (no base: the next change is in full)."""
    out: dict[str, dict] = {}
    for table in rs.tables():
        for chain in sorted(rs.rules.get(table, {})):
            for r in rs.rules[table][chain]:
                e = out.setdefault(r.owner, {"kind": rs.kinds.get(r.owner, "base"), "rules": []})
                e["rules"].append([table, chain, list(r.tokens())])
    if out or rs.chains:
        out.setdefault("base", {"kind": "base", "rules": []})["chains"] = {
            t: list(chs) for t, chs in sorted(rs.chains.items()) if chs}
    return out


def _failed_table(err: KernelError, tables: list[str]) -> str | None:
    """The table whose section a refused batch stopped at (the ones before it were
    committed): iptables-restore names the line, libiptc's error carries its table."""
    text = err.details.get("batch") or ""
    lines = text.splitlines()
    m = re.search(r"line:? (\d+)", err.details.get("stderr") or "")
    if m and 0 < int(m.group(1)) <= len(lines):
        for line in reversed(lines[:int(m.group(1))]):
            if line.startswith("*"):
                return line[1:]
    heads = [line[1:] for line in lines if line.startswith("*")]
    if len(heads) == 1:
        return heads[0]
    return tables[0] if tables else None  # unknown: assume nothing was committed
