"""iptables backends: nf_tables (iptables-nft-restore) and legacy (libiptc).

Detection (once per :class:`~pynet.firewall.Firewall`, see :func:`detect`):
``$PYNET_IPTABLES_BACKEND`` if set (``nft``, ``legacy``, ``legacy-restore``);
else the multi-call binary ``iptables`` resolves to (Debian's alternatives:
``xtables-nft-multi`` -> nft, ``xtables-legacy-multi`` -> legacy: no exec on
every CNI call), else ``iptables --version``: ``(nf_tables)`` -> nft,
``(legacy)`` -> legacy.
That is the variant dockerd itself uses (it calls plain ``iptables``), so
pynet's rules land in the same tables as Docker's.

* :class:`NftBackend` -- one ``iptables-nft-restore --noflush`` (or
  ``ip6tables-nft-restore``) process per family per change, batch on stdin.
* :class:`IptcBackend` -- python-iptables (libiptc) on the legacy tables:
  each table is edited with autocommit off and committed once, under the
  xtables lock (``/run/xtables.lock``) that iptables-legacy also takes.
  libiptc acts on the network namespace of the calling thread.
* :class:`LegacyRestoreBackend` -- ``iptables-legacy-restore --noflush -w``;
  the fallback for anything libiptc can't express, and the path for IPv6 on
  legacy hosts: python-iptables can't load the IPv6 NAT targets (MASQUERADE,
  DNAT) in a process that uses the IPv4 ones, and once it tried, it loses
  the IPv4 ones too.

All read the actual state with the matching ``*-save`` binary.  A backend
may be bound to a named network namespace (``netns=``): subprocesses then
run under ``ip netns exec``.

Note on atomicity: iptables-restore (nft and legacy alike) commits each
``*table ... COMMIT`` section on its own; :class:`Firewall` therefore rolls
already committed tables back when a later one is refused.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess

from pynet.errors import KernelError

from .model import IPV4, IPV6
from .reconcile import Op, batch_text


def _run(argv, stdin=None, netns=None, timeout=30) -> subprocess.CompletedProcess:
    if netns:
        argv = ["ip", "netns", "exec", netns] + list(argv)
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise KernelError(f"{argv[0]} not found: {e}") from None
    except subprocess.TimeoutExpired:
        raise KernelError(f"{' '.join(argv)} timed out after {timeout}s") from None


class _RestoreBackend:
    name = "?"
    tools: dict[str, tuple[str, str]] = {}  # family -> (save, restore)
    restore_args: tuple[str, ...] = ("--noflush",)

    def __init__(self, netns: str | None = None):
        self.netns = netns

    def available(self, family: str) -> bool:
        return shutil.which(self.tools[family][0]) is not None

    def save(self, family: str) -> str:
        p = _run([self.tools[family][0]], netns=self.netns)
        if p.returncode != 0:
            raise KernelError(f"{self.tools[family][0]} failed: {p.stderr.strip()}")
        return p.stdout

    listers: dict[str, str] = {}  # family -> the iptables binary that lists one chain

    def list_chain(self, family: str, table: str, chain: str) -> str:
        """``iptables -t table -S chain``: one chain's rules (``-A chain ...`` lines), without
        reading the others (iptables-nft fetches only that chain's rules; a change checks
        FORWARD's head with it instead of reading every table with iptables-save)."""
        exe = self.listers[family]
        p = _run([exe, "-w", "-t", table, "-S", chain], netns=self.netns)
        if p.returncode != 0:
            raise KernelError(f"{exe} -t {table} -S {chain} failed: {p.stderr.strip()}")
        return p.stdout

    def execute(self, family: str, plan: dict[str, list[Op]]) -> None:
        text = batch_text(plan)
        if not text:
            return
        self.last_path = getattr(self, "last_path", {})
        self.last_path[family] = "restore"
        self.restore_text(family, text)

    def restore_text(self, family: str, text: str) -> None:
        exe = self.tools[family][1]
        p = _run([exe, *self.restore_args], stdin=text, netns=self.netns)
        if p.returncode != 0:
            msg = " ".join((p.stderr or p.stdout).split()) or f"exit status {p.returncode}"
            m = re.search(r"line:? (\d+)", p.stderr or "")
            lines = text.splitlines()
            if m and 0 < int(m.group(1)) <= len(lines):
                msg += f" [line {m.group(1)}: {lines[int(m.group(1)) - 1]}]"
            raise KernelError(f"{exe} refused the batch: {msg}", batch=text, stderr=p.stderr)

    def __repr__(self):
        return f"{type(self).__name__}(netns={self.netns!r})"


class NftBackend(_RestoreBackend):
    name = "nft"
    tools = {IPV4: ("iptables-nft-save", "iptables-nft-restore"),
             IPV6: ("ip6tables-nft-save", "ip6tables-nft-restore")}
    listers = {IPV4: "iptables-nft", IPV6: "ip6tables-nft"}


class LegacyRestoreBackend(_RestoreBackend):
    name = "legacy-restore"
    tools = {IPV4: ("iptables-legacy-save", "iptables-legacy-restore"),
             IPV6: ("ip6tables-legacy-save", "ip6tables-legacy-restore")}
    listers = {IPV4: "iptables-legacy", IPV6: "ip6tables-legacy"}
    restore_args = ("--noflush", "--wait")


XTABLES_LOCK = "/run/xtables.lock"


@contextlib.contextmanager
def xtables_lock(path: str = XTABLES_LOCK):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class IptcBackend(LegacyRestoreBackend):
    """Legacy tables through python-iptables: one libiptc commit per table.

    Reads state with iptables-legacy-save.  ``netns`` is not supported for the
    libiptc path (it acts on the caller's namespace): with a netns it falls
    back to iptables-legacy-restore.
    """

    name = "legacy"

    def execute(self, family: str, plan: dict[str, list[Op]]) -> None:
        if not any(plan.values()):
            return
        if self.netns or family == IPV6 or not self._expressible(family, plan):
            # libiptc can't do it here: the same ops as one iptables-legacy-restore batch
            return super().execute(family, plan)
        import iptc

        v6 = family == IPV6
        self.last_path = getattr(self, "last_path", {})
        self.last_path[family] = "libiptc"
        with xtables_lock():
            for table, ops in plan.items():
                t = (iptc.Table6 if v6 else iptc.Table)(table)
                t.autocommit = False
                try:
                    t.refresh()
                    for op in ops:
                        if op.kind == "new":
                            t.create_chain(op.chain)
                        elif op.kind == "delchain":
                            t.delete_chain(op.chain)
                        else:
                            # built here, after the chains of this batch exist in the handle:
                            # python-iptables resolves a jump target by asking the tables
                            rule = tokens_to_iptc(op.tokens, v6)
                            if op.kind == "del":
                                iptc.Chain(t, op.chain).delete_rule(rule)
                            elif op.kind == "app":
                                iptc.Chain(t, op.chain).append_rule(rule)
                            else:
                                iptc.Chain(t, op.chain).insert_rule(rule, position=op.pos - 1)
                    t.commit()
                except (iptc.IPTCError, iptc.XTablesError, ValueError) as e:
                    raise KernelError(f"libiptc refused the {table} table: {e}",
                                      batch=batch_text({table: ops})) from None
                finally:
                    # python-iptables caches Table objects (rules consult them), so never leave
                    # a closed handle behind: drop uncommitted work and re-read, then autocommit
                    with contextlib.suppress(Exception):
                        t.refresh()
                    t.autocommit = True

    _xt_keep: list = []

    @classmethod
    def _init_xtables(cls):
        """python-iptables keeps its per-family xtables state in a weak cache: if the
        object dies it re-runs xtables_init_all and loses loaded targets (MASQUERADE
        then "can't be found").  Keep both alive for the life of the process."""
        if not cls._xt_keep:
            import iptc.xtables as X
            cls._xt_keep = [X.xtables(X.NFPROTO_IPV4), X.xtables(X.NFPROTO_IPV6)]

    @classmethod
    def _expressible(cls, family: str, plan: dict[str, list[Op]]) -> bool:
        """Can python-iptables build every rule of the plan?  (It can't, e.g., find the
        IPv6 NAT targets on some builds.)  Jumps to chains that exist or that the plan
        creates count as fine."""
        import iptc

        cls._init_xtables()
        v6 = family == IPV6
        for table, ops in plan.items():
            t = (iptc.Table6 if v6 else iptc.Table)(table)
            t.refresh()
            new = {op.chain for op in ops if op.kind == "new"}
            for op in ops:
                if op.kind not in ("del", "ins", "app"):
                    continue
                try:
                    tokens_to_iptc(op.tokens, v6)
                except iptc.XTablesError as e:
                    toks = list(op.tokens)
                    target = toks[toks.index("-j") + 1] if "-j" in toks else None
                    if target and str(e) == f"can't find target {target}" and (
                            target in new or t.is_chain(target)):
                        continue
                    return False
                except (ValueError, AttributeError, iptc.IPTCError):
                    return False
        return True


_ADDR_ATTR = {"-s": "src", "-d": "dst", "-i": "in_interface", "-o": "out_interface", "-p": "protocol"}


def tokens_to_iptc(tokens, v6: bool = False):
    """Build a python-iptables Rule from canonical iptables-save tokens."""
    import iptc

    rule = iptc.Rule6() if v6 else iptc.Rule()
    toks = list(tokens)
    i, neg, cur = 0, False, None
    while i < len(toks):
        t = toks[i]
        if t == "!":
            neg = True
            i += 1
            continue
        if t in _ADDR_ATTR and cur is None:
            setattr(rule, _ADDR_ATTR[t], ("!" if neg else "") + toks[i + 1])
            neg, i = False, i + 2
            continue
        if t == "-m":
            cur = rule.create_match(toks[i + 1])
            i += 2
            continue
        if t in ("-j", "-g"):
            if t == "-g":
                raise ValueError("goto is not supported by the libiptc path")
            cur = rule.create_target(toks[i + 1])
            i += 2
            continue
        if t.startswith("--") and cur is not None:
            vals = []
            i += 1
            while i < len(toks) and not toks[i].startswith("-") and toks[i] != "!":
                vals.append(toks[i])
                i += 1
            val = vals[0] if len(vals) == 1 else (vals or "")
            if neg:
                val = "!" + val if isinstance(val, str) else ["!"] + val
            cur.set_parameter(t[2:], val)
            neg = False
            continue
        raise ValueError(f"can't translate token {t!r} in {' '.join(toks)}")
    return rule


BACKENDS = {"nft": NftBackend, "legacy": IptcBackend, "legacy-restore": LegacyRestoreBackend}


def detect(netns: str | None = None):
    """Pick the backend the host's ``iptables`` uses (once per Firewall)."""
    forced = os.environ.get("PYNET_IPTABLES_BACKEND")
    if forced:
        if forced not in BACKENDS:
            raise KernelError(f"PYNET_IPTABLES_BACKEND={forced!r}: want one of {', '.join(BACKENDS)}")
        return BACKENDS[forced](netns=netns)
    variant = _variant_of_binary()
    if variant == "nft":
        return NftBackend(netns=netns)
    if variant == "legacy":
        return IptcBackend(netns=netns)
    p = _run(["iptables", "--version"])
    out = (p.stdout + p.stderr).lower()
    if "nf_tables" in out:
        return NftBackend(netns=netns)
    if "legacy" in out:
        return IptcBackend(netns=netns)
    if shutil.which("iptables-nft-restore"):
        return NftBackend(netns=netns)
    return IptcBackend(netns=netns)


def _variant_of_binary() -> str:
    """``nft`` or ``legacy`` when ``iptables`` on PATH is a link to one of the
    xtables multi-call binaries (what ``--version`` would report), else ``""``."""
    exe = shutil.which("iptables")
    if not exe:
        return ""
    target = os.path.basename(os.path.realpath(exe))
    if target.startswith("xtables-nft-multi"):
        return "nft"
    if target.startswith("xtables-legacy-multi"):
        return "legacy"
    return ""


def make_backend(backend, netns: str | None = None):
    if backend is None:
        return detect(netns)
    if isinstance(backend, str):
        if backend not in BACKENDS:
            raise ValueError(f"unknown firewall backend {backend!r}")
        return BACKENDS[backend](netns=netns)
    return backend
