"""Firewall data model: the desired state in, rules as data out.

A :class:`Rule` is one iptables rule in *canonical iptables-save form* (the
exact token order ``iptables-save`` prints: ``-s -d -i -o -p``, matches,
then ``-j``), without its owner comment.  Rendering adds
``-m comment --comment "pynet:<instance>:<owner>"`` as the last match, which
is where ``iptables-save`` prints it back, so desired and actual rules compare
as plain token tuples.

Ownership is instance-scoped: ``<instance>`` is the chain prefix of the
:class:`~pynet.firewall.Firewall` (``PYNET``, ``DOCKER``, a test run's own
prefix...).  An instance only ever deletes or moves rules carrying its own
``pynet:<instance>:`` tag; rules of other pynet instances are foreign to it
(except that its block in a built-in chain may sit below theirs, see
:func:`pynet.firewall.reconcile.target_chain`), so several pynet daemons with
different prefixes coexist on one host.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

COMMENT_PREFIX = "pynet:"
IPV4 = "ipv4"
IPV6 = "ipv6"
FAMILIES = (IPV4, IPV6)
BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
}
TABLE_ORDER = ("raw", "mangle", "filter", "nat")

_OWNER_RE = re.compile(r"[^A-Za-z0-9_.:@/-]")


@dataclass
class NetworkSpec:
    id: str
    bridge: str
    subnets_v4: list[str] = field(default_factory=list)
    subnets_v6: list[str] = field(default_factory=list)
    icc: bool = True
    internal: bool = False
    masquerade: bool = True
    host_ipv4: str | None = None
    spoof_check: bool = False


@dataclass
class PortMapping:
    proto: str  # 'tcp' | 'udp' | 'sctp'
    host_ip: str  # '' = all addresses; v4 or v6
    host_port: int
    container_port: int
    container_ip: str = ""  # '' = the endpoint's address of host_ip's family (both if host_ip is '')


@dataclass
class EndpointSpec:
    id: str
    network_id: str
    ipv4: str | None = None
    ipv6: str | None = None
    mac: str | None = None
    ports: list[PortMapping] = field(default_factory=list)
    host_veth: str | None = None


def owner_tag(owner: str, instance: str = "") -> str:
    """The comment text of a pynet rule, ``pynet:<instance>:<owner>``; owner reduced to a
    quote-free charset (the instance, a chain prefix, contains no ``:``)."""
    return f"{COMMENT_PREFIX}{instance}:" + (_OWNER_RE.sub("_", owner) or "_")


def split_tag(text: str) -> tuple[str, str] | None:
    """``pynet:<instance>:<owner>`` -> (instance, owner); None for a non-pynet comment.
    A pre-instance tag ``pynet:<owner>`` (no second ``:``) yields instance ``""``."""
    if not text.startswith(COMMENT_PREFIX):
        return None
    rest = text[len(COMMENT_PREFIX):]
    inst, sep, owner = rest.partition(":")
    return (inst, owner) if sep else ("", rest)


@dataclass(frozen=True)
class Rule:
    table: str
    chain: str
    spec: tuple[str, ...]  # canonical tokens, no comment
    owner: str
    instance: str = ""  # the owning Firewall's chain prefix

    def tokens(self) -> tuple[str, ...]:
        """Spec with the owner comment inserted as the last match (before -j)."""
        spec = list(self.spec)
        cm = ["-m", "comment", "--comment", owner_tag(self.owner, self.instance)]
        if "-j" in spec:
            k = spec.index("-j")
            return tuple(spec[:k] + cm + spec[k:])
        return tuple(spec + cm)


def quote(tok: str) -> str:
    """Quote a token for iptables-restore (which understands double quotes)."""
    if tok and not re.search(r"[\s\"'\\]", tok) and not tok.startswith(COMMENT_PREFIX):
        return tok
    return '"' + tok.replace("\\", "\\\\").replace('"', '\\"') + '"'


def join(tokens) -> str:
    return " ".join(quote(t) for t in tokens)


@dataclass
class Ruleset:
    """Desired pynet rules of one family: table -> chain -> ordered rules.

    ``chains`` lists the user-defined chains pynet creates, per table.
    """

    family: str
    instance: str = ""  # chain prefix of the owning Firewall, part of every rule's tag
    chains: dict[str, list[str]] = field(default_factory=dict)
    rules: dict[str, dict[str, list[Rule]]] = field(default_factory=dict)

    def declare(self, table: str, chain: str) -> None:
        lst = self.chains.setdefault(table, [])
        if chain not in lst:
            lst.append(chain)
        self.rules.setdefault(table, {}).setdefault(chain, [])

    def add(self, table: str, chain: str, spec, owner: str) -> None:
        self.rules.setdefault(table, {}).setdefault(chain, []).append(
            Rule(table, chain, tuple(spec), owner, self.instance))

    def tables(self) -> list[str]:
        names = set(self.rules) | set(self.chains)
        return [t for t in TABLE_ORDER if t in names] + sorted(names - set(TABLE_ORDER))

    def is_empty(self) -> bool:
        return not any(self.chains.values()) and not any(
            r for chains in self.rules.values() for r in chains.values())

    def to_restore(self) -> str:
        """Render as an iptables-restore file (the full desired pynet rule set)."""
        out = []
        for table in self.tables():
            out.append("*" + table)
            for chain in self.chains.get(table, []):
                out.append(f":{chain} - [0:0]")
            chains = self.rules.get(table, {})
            order = [c for c in BUILTIN_CHAINS.get(table, ()) if c in chains] + \
                [c for c in chains if c not in BUILTIN_CHAINS.get(table, ())]
            for chain in order:
                for r in chains[chain]:
                    out.append(f"-A {chain} {join(r.tokens())}")
            out.append("COMMIT")
        return "\n".join(out) + ("\n" if out else "")
