"""Firewall data model: the desired state in, rules as data out.

A :class:`Rule` is one iptables rule in *canonical iptables-save form* (the
exact token order ``iptables-save`` prints: ``-s -d -i -o -p``, matches,
then ``-j``), without its owner comment.  Rendering adds
``-m comment --comment "pynet:<instance>:<owner>"`` as the last match, which
is where ``iptables-save`` prints it back, so desired and actual rules compare
as plain token tuples.

Safety by construction: a :class:`Rule` cannot be made from a token that could
end a rule or a batch or change its meaning.  Every token is printable ASCII
without whitespace, quotes or backslash; each option's value is checked for
its kind (interface names are real, non-wildcard names except pynet's own
isolation patterns :data:`ISOLATION_PATTERNS`; addresses parse and carry no
IPv6 zone; ports are numbers...) and unknown tokens are refused
(:func:`check_spec`, a whitelist of the grammar the renderer speaks).  So
whatever reaches a front end, a rendered batch line is one well-formed rule:
a refusal is an :class:`~pynet.errors.InvalidParameter` naming the owner.

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

from pynet import validate
from pynet.errors import InvalidAddress, InvalidParameter

COMMENT_PREFIX = "pynet:"
NETWORK, ENDPOINT = "network", "endpoint"  # the kinds of owners besides "base"
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

# pynet's deliberate interface wildcards (isolation from dockerd's ``br-<id>`` and other
# pynet instances' ``pn-<id>`` bridges): the only tokens with an iptables ``+`` allowed
ISOLATION_PATTERNS = frozenset({"br-+", "pn-+"})
IFNAMSIZ = 15
_TOKEN_RE = re.compile(r"[!#-&(-\[\]-~]+")  # printable ASCII minus space, '"', "'" and '\\'
CHAIN_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,28}")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_PORT_RE = re.compile(r"[1-9][0-9]{0,4}")
_WORD_RE = re.compile(r"[A-Z]+(,[A-Z]+)*")
TARGETS = frozenset({"ACCEPT", "DROP", "RETURN", "DNAT", "SNAT", "MASQUERADE", "CHECKSUM"})
MATCHES = frozenset({"conntrack", "addrtype", "tcp", "udp", "sctp", "mac", "physdev"})
PROTOCOLS = frozenset({"tcp", "udp", "sctp"})


def _refuse(what: str, tok, owner: str):
    raise InvalidParameter(f"firewall rule of {owner or 'pynet'}: {what} {tok!r} refused", owner=owner)


def check_token(tok, owner: str = "") -> str:
    """Any token: a non-empty string of printable ASCII, no whitespace, quote or backslash
    (so it can neither end the rule or the batch nor change how it is split)."""
    if not isinstance(tok, str) or not _TOKEN_RE.fullmatch(tok):
        _refuse("token", tok, owner)
    return tok


def check_ifname_token(name, owner: str = "", patterns: bool = True) -> str:
    """An interface token (``-i``/``-o``/``--physdev-in``): a name iptables matches
    literally (:func:`pynet.validate.ifname`: ≤ 15 bytes, no ``+``, no leading ``-``),
    or one of pynet's own :data:`ISOLATION_PATTERNS` when ``patterns``."""
    if patterns and name in ISOLATION_PATTERNS:
        return name
    try:
        return validate.ifname(name)
    except InvalidParameter as e:
        raise InvalidParameter(str(e), owner=owner) from None


def check_address_token(tok, owner: str = "", network: bool = True) -> str:
    """An address (``10.0.0.1``) or, with ``network``, a prefix (``10.0.0.0/24``), in the
    canonical form iptables-save prints, without an IPv6 zone (``%eth0``): Python's
    ipaddress accepts any text after ``%``, :mod:`pynet.validate` does not."""
    check_token(tok, owner)
    try:
        canon = str(validate.ip_network(tok, strict=True, err=InvalidAddress) if network and "/" in tok
                    else validate.ip_address(tok, err=InvalidAddress))
    except InvalidAddress as e:
        raise InvalidAddress(f"{e} in a firewall rule", owner=owner) from None
    if canon != tok:
        raise InvalidAddress(f"address {tok!r} is not in canonical form ({canon})", owner=owner)
    return tok


def _check_nat_to(tok: str, owner: str) -> None:
    """``--to-destination``/``--to-source``: ``ip``, ``ip:port`` or ``[ip6]:port``."""
    check_token(tok, owner)
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([0-9.]+)(?::(\d+))?|([0-9a-fA-F:]+)", tok)
    if not m:
        _refuse("NAT address", tok, owner)
    addr = m.group(1) or m.group(3) or m.group(5)
    port = m.group(2) or m.group(4)
    check_address_token(addr, owner, network=False)
    if (m.group(1) and ":" not in addr) or (m.group(3) and ":" in addr):
        _refuse("NAT address", tok, owner)
    if port is not None and (not _PORT_RE.fullmatch(port) or int(port) > 65535):
        _refuse("NAT port", tok, owner)


def _check_port(tok, owner: str) -> None:
    if not isinstance(tok, str) or not _PORT_RE.fullmatch(tok) or int(tok) > 65535:
        _refuse("port", tok, owner)


def _check_chain(name, owner: str = "") -> str:
    if not isinstance(name, str) or not CHAIN_RE.fullmatch(name):
        _refuse("chain name", name, owner)
    return name


# option -> check of its value
_VALUE = {
    "-s": lambda t, o: check_address_token(t, o),
    "-d": lambda t, o: check_address_token(t, o),
    "-i": lambda t, o: check_ifname_token(t, o),
    "-o": lambda t, o: check_ifname_token(t, o),
    "--physdev-in": lambda t, o: check_ifname_token(t, o, patterns=False),
    "--physdev-out": lambda t, o: check_ifname_token(t, o, patterns=False),
    "-p": lambda t, o: t in PROTOCOLS or _refuse("protocol", t, o),
    "-m": lambda t, o: t in MATCHES or _refuse("match", t, o),
    "--ctstate": lambda t, o: _WORD_RE.fullmatch(t or "") or _refuse("conntrack state", t, o),
    "--src-type": lambda t, o: _WORD_RE.fullmatch(t or "") or _refuse("address type", t, o),
    "--dst-type": lambda t, o: _WORD_RE.fullmatch(t or "") or _refuse("address type", t, o),
    "--dport": _check_port,
    "--sport": _check_port,
    "--mac-source": lambda t, o: _MAC_RE.fullmatch(t or "") or _refuse("MAC address", t, o),
    "--to-destination": _check_nat_to,
    "--to-source": _check_nat_to,
    "-j": lambda t, o: t in TARGETS or _check_chain(t, o),
}
_FLAGS = frozenset({"--checksum-fill"})
_NEGATABLE = frozenset({"-s", "-d", "-i", "-o", "-p", "--mac-source", "--physdev-in", "--physdev-out"})


def check_spec(spec, owner: str = "") -> tuple[str, ...]:
    """The grammar of a pynet rule (its tokens without the owner comment): every token
    a known option, its checked value, ``!`` before a negatable option, or a flag."""
    toks = tuple(spec)
    for t in toks:
        check_token(t, owner)
    if "-j" not in toks:
        _refuse("rule without target", " ".join(toks), owner)
    i = 0
    while i < len(toks):
        t = toks[i]
        if t == "!":
            if i + 1 >= len(toks) or toks[i + 1] not in _NEGATABLE:
                _refuse("negation", " ".join(toks[i:i + 2]), owner)
            i += 1
            continue
        if t in _FLAGS:
            i += 1
            continue
        check = _VALUE.get(t)
        if check is None:
            _refuse("option", t, owner)
        if i + 1 >= len(toks):
            _refuse("option without value", t, owner)
        check(toks[i + 1], owner)
        i += 2
    return toks


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


_OWNER_MAX = 160  # iptables' comment match holds 255 bytes; the prefix part is short


def owner_tag(owner: str, instance: str = "") -> str:
    """The comment text of a pynet rule, ``pynet:<instance>:<owner>``; owner reduced to a
    quote-free charset (the instance, a chain prefix, contains no ``:``) and, when very
    long, cut and suffixed with a digest of the whole (so it fits the comment match)."""
    text = _OWNER_RE.sub("_", str(owner)) or "_"
    if len(text) > _OWNER_MAX:
        import hashlib
        text = text[:_OWNER_MAX - 17] + "~" + hashlib.sha256(str(owner).encode(
            "utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{COMMENT_PREFIX}{instance}:" + text


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

    def __post_init__(self):
        # the one way a rule comes to exist, so the one place it is checked
        if self.table not in BUILTIN_CHAINS:
            _refuse("table", self.table, self.owner)
        _check_chain(self.chain, self.owner)
        if self.instance:
            _check_chain(self.instance, self.owner)
        object.__setattr__(self, "spec", check_spec(self.spec, self.owner))

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
    # owner -> NETWORK | ENDPOINT: in pynet's own chains the rules of owners of one kind
    # that stand next to each other may come in any order (their matches are disjoint, or
    # their verdicts equal), which is what lets a change insert its owner's rules at the
    # top or the end of its section without knowing the others' (reconcile.settle_order)
    kinds: dict[str, str] = field(default_factory=dict)

    def declare(self, table: str, chain: str) -> None:
        if table not in BUILTIN_CHAINS:
            _refuse("table", table, "")
        _check_chain(chain)
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
