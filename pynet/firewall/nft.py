"""The native nftables backend: the guarantees of Docker's bridge layout
(:mod:`pynet.firewall.render`) as pynet's own nft tables, whose rules never
change and whose sets and verdict maps hold everything per network and per
published port, so a packet costs one lookup per stage however many networks
and ports there are, and a change is a handful of set elements.

Tables: ``ip <prefix>`` (IPv4) and ``ip6 <prefix>`` (IPv6), named after the
instance's chain prefix, so two pynet instances (or a test run beside the
daemon) coexist; nothing else is touched in nft (the iptables-nft tables are
``filter``/``nat``...).  Per family (``a`` = the family's address type):

=============  ======================================  =====================================
set/map        key (: value)                           what, whose elements
=============  ======================================  =====================================
nets           bridge                                  non-internal networks
same           bridge . bridge                         every network (traffic inside it)
icc_off        bridge . bridge                         networks with ICC off
internal       bridge                                  internal networks
internal_subs  bridge . a (interval)                   their subnets
published      bridge . a . proto . port               a published container port (filter)
dnat_any       proto . port : a . port                 a port bound to every host address
dnat_addr      a . proto . port : a . port             a port bound to one host address
hairpin        a . a . proto . port                    a container reaching itself (masquerade)
local_masq     bridge                                  from the host into a bridge: masquerade
local_snat     bridge : a                              ... SNAT (``host_binding_ipv4``)
sub_own        a (interval) . bridge                   a subnet staying on its bridge
masq_subs      a (interval)                            subnets masqueraded on the way out
snat_subs      a (interval) : a                        ... SNATed to the network's host address
spoof_nets     bridge                                  spoof-checked networks (IPv6 link-local)
spoof_ip       bridge . a                              an endpoint's address ...
spoof_mac      bridge . mac                            ... its MAC ...
spoof_ok       bridge . mac . a                        ... and the one pairing allowed
=============  ======================================  =====================================

The chains (``forward``/``input`` filter, ``nat_prerouting``/``nat_output``/
``nat_postrouting`` nat, and ``user``, ``isolation``, ``antispoof``,
``ports``, ``published`` below them) are the same whatever the state; only
the foreign bridge patterns (``docker0``, ``br-*``, ``pn-*``, learned names)
are rules.  Differences from the iptables layout, on purpose: the relative
order of networks' blocks does not exist (a set has no order; the iptables
order only mattered for packets that no two networks' rules both match);
``userland_proxy`` is not offered (Docker's hairpin mode only); SCTP
checksum filling (iptables' CHECKSUM target) has no nft statement, so those rules
stay in iptables' mangle POSTROUTING (tagged like the FORWARD openings below,
through the same iptables backend);
anti-spoofing binds addresses to MACs (pynet's bridge endpoints always have
one; the iptables layout's physdev variant for MAC-less endpoints is not
rendered).

Applying: one ``nft -f -`` transaction per change.  A full apply (``changed``
None: start-up, the periodic re-check) reads the table back (``nft list
table``), compares it with the desired one and, when they differ, replaces
the whole table in one transaction (add, delete, declare again: atomic, no
moment without rules); it rewrites the ledger (:mod:`pynet.firewall.ledger`:
per owner and family, the elements applied; a base entry with the skeleton's
digest and the number of networks).  A change (``changed`` = owner ids)
screens and renders only the changed owners, checks their host ports against
every other endpoint's, reads the changed owners' old elements from the ledger
and sends the element difference (``delete element``/``add element``) without
reading the kernel -- in every process, so a CNI binary's first change is a
delta too (the ledger is a file per owner beside the state).  If the kernel
refuses it (someone flushed the ruleset, a stale entry) it is a full apply
instead.  nft transactions are all-or-nothing, so there is no rollback to do:
a refused batch changed nothing.  What still grows with the host: nft 1.0.6 (Debian 12)
fetches the elements of every interval set in the ruleset for any element
command, so each change's ``nft -f`` costs more CPU the more subnets there are
(measured alone: +2.4 ms per call at 1,000 /24 subnets; benchmarks/bench_nft.py).

``nft -f`` was chosen over libnftables' JSON API (Debian's python3-nftables):
the binding lives in the system's site-packages, which pynet's venv (and the
managed plugin's image) does not see, and one fork per change is what the
iptables backends pay too; the text is built only from values checked here
(:func:`pynet.firewall.render.screen` and the checks below), never from raw
input.

The limit: an ``accept`` in pynet's table is not the last word -- every
table hooked at forward must accept a packet, so a DROP policy (or drop rule)
in iptables' FORWARD chain, as dockerd sets it, still drops what pynet's
table lets through.  So where iptables' FORWARD has policy DROP or anybody's
rules (dockerd's), this backend opens it for its own bridges only
(``-i <bridge> -j ACCEPT``, ``-o <bridge> -j ACCEPT`` at the top of FORWARD,
tagged ``pynet:<prefix>:<network>`` like every iptables rule of pynet, through
the host's iptables backend); pynet's own table still drops what must be
dropped.  ``iptables_forward="refuse"`` refuses instead, with one line.
"""
from __future__ import annotations

import difflib
import hashlib
import ipaddress
import re
import subprocess
from dataclasses import dataclass, field

from pynet.errors import InvalidParameter, KernelError

from .firewall import Firewall, set_bridge_sysctl
from .ledger import MemoryLedger
from .model import FAMILIES, IPV4, IPV6, EndpointSpec, NetworkSpec, Ruleset
from .render import PortIndex, expand_ports, route_localnet_sysctls, screen

NFT_FAMILY = {IPV4: "ip", IPV6: "ip6"}
_TABLE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,27}")
IPTABLES_FORWARD = ("open", "refuse")


def _pattern(p: str) -> str:
    """iptables' ``br-+`` is nft's ``br-*``."""
    return p[:-1] + "*" if p.endswith("+") else p


def _q(name: str) -> str:
    return f'"{name}"'


def _sets(fam: str) -> list[tuple[str, str, str]]:
    """(kind, name, declaration body) of every set and map, in listing order."""
    a = "ipv4_addr" if fam == IPV4 else "ipv6_addr"
    s = [
        ("set", "nets", "type ifname"),
        ("set", "same", "type ifname . ifname"),
        ("set", "icc_off", "type ifname . ifname"),
        ("set", "internal", "type ifname"),
        ("set", "internal_subs", f"type ifname . {a}\n\t\tflags interval"),
        ("set", "published", f"type ifname . {a} . inet_proto . inet_service"),
        ("map", "dnat_any", f"type inet_proto . inet_service : {a} . inet_service"),
        ("map", "dnat_addr", f"type {a} . inet_proto . inet_service : {a} . inet_service"),
        ("set", "hairpin", f"type {a} . {a} . inet_proto . inet_service"),
        ("set", "local_masq", "type ifname"),
    ]
    if fam == IPV4:
        s.append(("map", "local_snat", f"type ifname : {a}"))
    s += [
        ("set", "sub_own", f"type {a} . ifname\n\t\tflags interval"),
        ("set", "masq_subs", f"type {a}\n\t\tflags interval"),
    ]
    if fam == IPV4:
        s.append(("map", "snat_subs", f"type {a} : {a}\n\t\tflags interval"))
    s += [
        ("set", "spoof_nets", "type ifname"),
        ("set", "spoof_ip", f"type ifname . {a}"),
        ("set", "spoof_mac", "type ifname . ether_addr"),
        ("set", "spoof_ok", f"type ifname . ether_addr . {a}"),
    ]
    return s


def _chains(fam: str, foreign: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """(name, lines) of every chain, in listing form (``nft list table`` prints them
    back exactly so, which is what :meth:`NftFirewall.diff` compares)."""
    ip = "ip" if fam == IPV4 else "ip6"
    pats = [_q(_pattern(p)) for p in foreign]
    iso = [
        f"oifname @internal oifname . {ip} saddr != @internal_subs drop",
        f"iifname @internal iifname . {ip} daddr != @internal_subs drop",
        "iifname . oifname @same return",
        "iifname @nets oifname @nets drop",
    ]
    iso += [f"iifname @nets oifname {p} drop" for p in pats]
    iso += [f"iifname {p} oifname != {p} oifname @nets drop" for p in pats]
    iso += [f"iifname {p} oifname != {p} oifname {q} drop" for p in pats for q in pats if q != p]
    spoof = [f"{ip} saddr {{ ::, fe80::/10 }} iifname @spoof_nets return"] if fam == IPV6 else []
    spoof += [
        f"iifname . {ip} saddr @spoof_ip iifname . ether saddr . {ip} saddr != @spoof_ok drop",
        f"iifname . ether saddr @spoof_mac iifname . ether saddr . {ip} saddr != @spoof_ok drop",
    ]
    out = ([f"{ip} daddr != ::1 fib daddr type local jump published"] if fam == IPV6
           else ["fib daddr type local jump published"])
    post = [
        f"{ip} saddr . {ip} daddr . meta l4proto . th dport @hairpin masquerade",
        "oifname @local_masq fib saddr type local masquerade",
    ]
    if fam == IPV4:
        post.append("fib saddr type local snat to oifname map @local_snat")
    post += [f"{ip} saddr . oifname @sub_own return", f"{ip} saddr @masq_subs masquerade"]
    if fam == IPV4:
        post.append(f"snat to {ip} saddr map @snat_subs")
    return [
        ("forward", ["type filter hook forward priority filter; policy accept;",
                     "jump user", "jump isolation", "jump antispoof",
                     "oifname @nets ct state established,related accept",
                     "oifname @nets jump ports",
                     "iifname . oifname @icc_off drop",
                     "iifname . oifname @same accept",
                     "iifname @nets accept"]),
        ("input", ["type filter hook input priority filter; policy accept;", "jump antispoof"]),
        ("user", []),
        ("isolation", iso),
        ("antispoof", spoof),
        ("ports", ["iifname . oifname @same return",
                   f"oifname . {ip} daddr . meta l4proto . th dport @published accept",
                   "drop"]),
        ("published", [f"dnat {ip} to {ip} daddr . meta l4proto . th dport map @dnat_addr",
                       f"dnat {ip} to meta l4proto . th dport map @dnat_any"]),
        ("nat_prerouting", ["type nat hook prerouting priority dstnat; policy accept;",
                            "fib daddr type local jump published"]),
        ("nat_output", ["type nat hook output priority -100; policy accept;"] + out),
        ("nat_postrouting", ["type nat hook postrouting priority srcnat; policy accept;"] + post),
    ]


@dataclass
class NftTable:
    """The desired table of one family: fixed declarations and chains, and per set
    its elements (element text, as ``nft list`` prints it -> owner id)."""

    family: str
    name: str
    foreign: tuple[str, ...] = ()
    elements: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def nft_family(self) -> str:
        return NFT_FAMILY[self.family]

    def add(self, set_name: str, element: str, owner: str) -> None:
        self.elements.setdefault(set_name, {}).setdefault(element, owner)

    @property
    def empty(self) -> bool:
        """No network of this family: no table at all (as the iptables layout renders
        nothing then)."""
        return not self.elements.get("same")

    def skeleton(self) -> str:
        """The table without elements (declarations and chains)."""
        return self._text(with_elements=False)

    def to_nft(self) -> str:
        """The whole table as ``nft -f`` input and as ``nft list table`` prints it
        ('' when :attr:`empty`)."""
        return "" if self.empty else self._text(with_elements=True)

    def skeleton_digest(self) -> str:
        """What the ledger's base entry checks before a change: a table of other chains
        or other foreign patterns (another pynet version, another isolate_from) is not
        the one the recorded elements went into."""
        return hashlib.sha256(self._text(with_elements=False, always=True).encode()).hexdigest()[:32]

    def _text(self, with_elements: bool, always: bool = False) -> str:
        if self.empty and not always:
            return ""
        out = [f"table {self.nft_family} {self.name} {{"]
        blocks = []
        for kind, name, body in _sets(self.family):
            lines = [f"\t{kind} {name} {{"] + [f"\t\t{b}" for b in body.split("\n\t\t")]
            els = sorted(self.elements.get(name, {}))
            if with_elements and els:
                lines.append("\t\telements = { " + ",\n\t\t\t     ".join(els) + " }")
            blocks.append(lines + ["\t}"])
        for name, rules in _chains(self.family, self.foreign):
            blocks.append([f"\tchain {name} {{"] + [f"\t\t{r}" for r in rules] + ["\t}"])
        for i, b in enumerate(blocks):
            if i:
                out.append("")
            out.extend(b)
        out.append("}")
        return "\n".join(out) + "\n"

    def element_batch(self, sets: dict[str, list[str]], verb: str = "add") -> list[str]:
        return [f"{verb} element {self.nft_family} {self.name} {name} {{ {', '.join(els)} }}"
                for name, els in sets.items() if els]


# --- rendering ----------------------------------------------------------------
def _a(text: str, ver: int):
    a = ipaddress.ip_address(text.split("/")[0])
    if a.version != ver:
        raise InvalidParameter(f"address {text} is not IPv{ver}")
    return a


def _sub(text: str) -> str:
    """A subnet as nft prints an interval element (a host route without ``/32``)."""
    n = ipaddress.ip_network(text, strict=False)
    return str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)


def render_table(name: str, networks: list[NetworkSpec], endpoints: list[EndpointSpec],
                 family: str, foreign=()) -> NftTable:
    """The desired table of ``family`` from screened specs (render.screen)."""
    ver = 4 if family == IPV4 else 6
    t = NftTable(family, name, tuple(foreign))
    nets = {}
    for n in networks:
        subs = n.subnets_v4 if ver == 4 else n.subnets_v6
        if not subs:
            continue
        nets[n.id] = n
        br, o = _q(n.bridge), n.id
        t.add("same", f"{br} . {br}", o)
        if not n.icc:
            t.add("icc_off", f"{br} . {br}", o)
        if n.internal:
            t.add("internal", br, o)
            for s in subs:
                t.add("internal_subs", f"{br} . {_sub(s)}", o)
        else:
            t.add("nets", br, o)
            hip = str(_a(n.host_ipv4, 4)) if n.host_ipv4 and ver == 4 else None
            if hip:
                t.add("local_snat", f"{br} : {hip}", o)
            else:
                t.add("local_masq", br, o)
            if n.masquerade:
                for s in subs:
                    t.add("sub_own", f"{_sub(s)} . {br}", o)
                    if hip:
                        t.add("snat_subs", f"{_sub(s)} : {hip}", o)
                    else:
                        t.add("masq_subs", _sub(s), o)
        if n.spoof_check and ver == 6:
            t.add("spoof_nets", br, o)
    for ep in endpoints:
        n = nets.get(ep.network_id)
        if n is None:
            continue
        br, o = _q(n.bridge), ep.id
        ip = ep.ipv4 if ver == 4 else ep.ipv6
        if n.spoof_check and ip and ep.mac:
            h, mac = str(_a(ip, ver)), ep.mac.lower().replace("-", ":")
            t.add("spoof_ip", f"{br} . {h}", o)
            t.add("spoof_mac", f"{br} . {mac}", o)
            t.add("spoof_ok", f"{br} . {mac} . {h}", o)
        rows = expand_ports(ep)
        if n.internal:
            continue  # Docker ignores port bindings on internal networks
        for v, pm, cip in rows:
            if v != ver:
                continue
            ca, p = str(ipaddress.ip_address(cip)), pm.proto
            to = f"{ca} . {pm.container_port}"
            if pm.host_ip and pm.host_ip not in ("0.0.0.0", "::"):
                hip = _a(pm.host_ip, ver)
                if ver == 6 and hip.is_loopback:
                    continue  # no route_localnet for IPv6
                t.add("dnat_addr", f"{hip} . {p} . {pm.host_port} : {to}", o)
            else:
                t.add("dnat_any", f"{p} . {pm.host_port} : {to}", o)
            t.add("published", f"{br} . {ca} . {p} . {pm.container_port}", o)
            t.add("hairpin", f"{ca} . {ca} . {p} . {pm.container_port}", o)
    _check_keys(t)
    return t


def _check_keys(t: NftTable) -> None:
    """A map key given two values would make nft refuse the whole batch: name the owner."""
    for name in ("dnat_any", "dnat_addr", "local_snat", "snat_subs"):
        seen: dict[str, str] = {}
        for el, owner in t.elements.get(name, {}).items():
            key = el.split(" : ")[0]
            if key in seen and seen[key] != owner:
                raise InvalidParameter(f"{key} is claimed twice in {name} (also by {seen[key]})",
                                       owner=owner)
            seen[key] = owner


# --- reading a listing back -------------------------------------------------------
_ELEMENTS_RE = re.compile(r"^\s*elements = \{(.*?)\}\s*$", re.S | re.M)


def parse_listing(text: str) -> tuple[str, dict[str, set[str]]]:
    """``nft list table`` output -> (skeleton text, set name -> elements)."""
    skeleton, els, current, in_user = [], {}, None, False
    lines = iter(text.splitlines())
    for line in lines:
        m = re.match(r"\s*(set|map) (\S+) \{$", line)
        if m:
            current = m.group(2)
        s = line.strip()
        if in_user:  # the administrator's rules: kept, never compared
            if s == "}":
                in_user = False
                skeleton.append(line)
            continue
        in_user = s == "chain user {"
        if s.startswith("elements = {"):
            body = s[len("elements = {"):]
            while not body.rstrip().endswith("}"):
                body += " " + next(lines).strip()
            body = body.rstrip()[:-1]
            els[current] = {e.strip() for e in _split_elements(body) if e.strip()}
            continue
        skeleton.append(line)
    return "\n".join(skeleton).strip() + "\n", els


def user_rules(text: str) -> list[str]:
    """The rules in the ``user`` chain of a listing (the administrator's, kept across
    a table replace like the iptables layout keeps ``<prefix>-USER``)."""
    m = re.search(r"^\tchain user \{\n(.*?)^\t\}", text, re.S | re.M)
    return [ln.strip() for ln in m.group(1).splitlines() if ln.strip()] if m else []


def _split_elements(body: str) -> list[str]:
    out, depth, cur = [], 0, []
    for ch in body:
        if ch in "{(":
            depth += 1
        elif ch in "})":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [" ".join(e.split()) for e in out]


# --- the firewall -----------------------------------------------------------------
class NftFirewall:
    """Same contract as :class:`pynet.firewall.Firewall` (what BridgeFirewall uses),
    on pynet's own nft tables."""

    backend_name = "nftables"

    def __init__(self, prefix: str = "PYNET", *, userland_proxy: bool = False, sysctl=None,
                 netns: str | None = None, families=FAMILIES, isolate_from=(),
                 iptables_forward: str = "open", iptables=None, ledger=None):
        """``iptables``: the Firewall (iptables backend) that opens iptables' FORWARD
        where needed; None builds one on first need, False never opens.
        ``ledger``: what each owner's elements were (:mod:`pynet.firewall.ledger`; a
        FileLedger beside the state makes a fresh process's first change a delta too);
        default: this object's memory only."""
        if not isinstance(prefix, str) or not _TABLE_RE.fullmatch(prefix):
            raise InvalidParameter(f"invalid chain prefix {prefix!r} for the nftables backend: it names "
                                   "pynet's nft tables, which must start with a letter (then letters, "
                                   "digits, '_' or '-', at most 28)")
        if userland_proxy:
            raise ValueError("the nftables backend implements hairpin mode only (userland_proxy off)")
        if iptables_forward not in IPTABLES_FORWARD:
            raise ValueError(f"iptables_forward {iptables_forward!r}: want one of {', '.join(IPTABLES_FORWARD)}")
        self.prefix = prefix
        self.netns = netns
        self.userland_proxy = False
        self.families = tuple(families)
        self.isolate_from = tuple(isolate_from)
        self.iptables_forward = iptables_forward
        self._sysctl = sysctl
        self._iptables = iptables
        self.ledger = ledger if ledger is not None else MemoryLedger()
        self._opened: frozenset | None = None  # the bridges opened in iptables' FORWARD last
        self.last_path = None  # "delta" | "replace" | "in-sync": how the last apply went (tests, benchmarks)
        self.last_batch = ""  # the nft -f text the last apply sent ('' when nothing)

    # --- rendering -----------------------------------------------------------
    def _render(self, networks, endpoints, foreign) -> dict[str, NftTable]:
        return {fam: render_table(self.prefix, networks, endpoints, fam, foreign)
                for fam in self.families}

    # ``(tables, networks rendered)``, refused owners skipped and recorded in ``problems``:
    # the iptables Firewall's loop over render.screen and self._render, shared
    screened = Firewall.screened

    def desired(self, networks, endpoints, problems: dict | None = None) -> dict[str, NftTable]:
        """The table per family; ``problems`` None: refused input raises."""
        if problems is None:
            probs: dict = {}
            tables, _ = self.screened(networks, endpoints, probs)
            if probs:
                owner, why = sorted(probs.items())[0]
                raise InvalidParameter(why, owner=owner)
            return tables
        return self.screened(networks, endpoints, problems)[0]

    def render(self, networks, endpoints, problems: dict | None = None) -> dict[str, str]:
        """The desired ``nft -f`` text per family."""
        return {fam: t.to_nft() for fam, t in self.desired(networks, endpoints, problems).items()}

    def sysctls(self, networks) -> list[tuple[str, str]]:
        return route_localnet_sysctls(list(networks), False)

    # --- kernel --------------------------------------------------------------
    def _nft(self, args, stdin: str | None = None) -> subprocess.CompletedProcess:
        argv = ["nft", *args]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns] + argv
        try:
            return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            raise KernelError("nft not found: the nftables backend needs Debian's nftables package") from None
        except subprocess.TimeoutExpired:
            raise KernelError("nft timed out after 60s") from None

    def _run_batch(self, text: str) -> None:
        p = self._nft(["-f", "-"], stdin=text)
        if p.returncode != 0:
            msg = " ".join(p.stderr.split())[:400] or f"exit status {p.returncode}"
            raise KernelError(f"nft refused the transaction: {msg}", batch=text, stderr=p.stderr)

    def _listing(self, t: NftTable) -> str | None:
        """The kernel's table as ``nft list table`` prints it; None if there is none."""
        p = self._nft(["list", "table", t.nft_family, t.name])
        if p.returncode != 0:
            if "No such file" in p.stderr or "does not exist" in p.stderr:
                return None
            raise KernelError(f"nft list table {t.nft_family} {t.name}: {' '.join(p.stderr.split())}")
        return p.stdout

    def _replace_text(self, t: NftTable) -> str:
        # add (so that delete never fails), delete, declare: one transaction
        text = self._listing(t)
        if t.empty:
            return f"delete table {t.nft_family} {t.name}\n" if text is not None else ""
        keep = user_rules(text) if text else []
        body = t.to_nft()
        if keep:
            body = body.replace("\tchain user {\n", "\tchain user {\n" + "".join(
                f"\t\t{r}\n" for r in keep), 1)
        return f"table {t.nft_family} {t.name}\ndelete table {t.nft_family} {t.name}\n" + body

    def _in_sync(self, t: NftTable) -> bool:
        text = self._listing(t)
        if text is None:
            return t.empty
        if t.empty:
            return False
        skel, els = parse_listing(text)
        want_skel, _ = parse_listing(t.skeleton())
        return skel == want_skel and els == {k: set(v) for k, v in t.elements.items() if v}

    def apply(self, networks, endpoints, problems: dict | None = None, *, changed=None) -> None:
        """Make the kernel match the desired state.  ``changed``: None for a full
        reconcile (read back, replace if different); else the owner ids whose rules
        changed: only they are screened and rendered, their old elements come from the
        ledger, and only the element difference is sent (one transaction, nothing read
        from the kernel) -- in a fresh process too, when the ledger is a file."""
        networks, endpoints = list(networks), list(endpoints)
        if changed is not None and self._apply_change(networks, endpoints, problems, set(changed)):
            return
        if problems is None:
            tables = self.desired(networks, endpoints)
            nets = networks
        else:
            tables, nets = self.screened(networks, endpoints, problems)
        ok = {n.id for n in nets}
        eps = [e for e in endpoints if e.network_id in ok and not (problems and e.id in problems)]
        self.apply_desired(tables, nets, changed=changed, endpoints=eps)

    def _apply_change(self, networks, endpoints, problems, changed: set) -> bool:
        """The per-change path: the changed owners (and the endpoints of changed networks)
        screened and rendered alone, their host ports checked against every other
        endpoint's (what is applied was screened when it changed), their old elements
        read from the ledger (one small entry per owner and family), the difference sent.
        False: not possible here (no ledger base, a skeleton or foreign pattern that
        differs, a family's table appearing or going, the kernel refused the delta):
        the caller does a full apply, which rewrites the ledger."""
        changed = changed | {e.id for e in endpoints if e.network_id in changed}
        sub_eps = [e for e in endpoints if e.id in changed]
        need = changed | {e.network_id for e in sub_eps}
        probs: dict = {}
        nets, eps, iso = screen([n for n in networks if n.id in need], sub_eps, self.isolate_from, probs)
        if iso != self.isolate_from:
            return False
        want = {(pm.proto, pm.host_port) for e in eps for pm in e.ports}
        seen = PortIndex(o for o in endpoints if o.id not in changed and want
                         and any((pm.proto, pm.host_port) in want for pm in o.ports))
        for ep in list(eps):
            err = seen.conflict(ep)
            if err is not None:
                probs[ep.id] = f"endpoint {ep.id}: {err}"
                eps.remove(ep)
        if problems is None and probs:
            owner, why = sorted(probs.items())[0]
            raise InvalidParameter(why, owner=owner)
        sub, _ = self.screened(nets, eps, probs)
        if problems is not None:
            problems.update(probs)
        batch, entries, bases, sctp, bridged = [], {}, {}, False, False
        for fam in self.families:
            base = self.ledger.get(fam, "base")
            t = sub[fam]
            if not base or base.get("skeleton") != t.skeleton_digest():
                return False
            new: dict[str, list] = {}
            for name, els in t.elements.items():
                for el, o in els.items():
                    if o in changed:
                        new.setdefault(o, []).append([name, el])
            dels: dict[str, list[str]] = {}
            adds: dict[str, list[str]] = {}
            count = base.get("networks", 0)
            for o in sorted(changed):
                had = {tuple(x) for x in (self.ledger.get(fam, o) or {}).get("elements", ())}
                has = {tuple(x) for x in new.get(o, ())}
                sctp = sctp or any(" sctp " in el for name, el in had | has if name == "published")
                bridged = bridged or any(name == "same" for name, _ in had ^ has)  # a network came or went
                for name, el in sorted(had - has):
                    dels.setdefault(name, []).append(el)
                for name, el in sorted(has - had):
                    adds.setdefault(name, []).append(el)
                count += sum(1 for name, _ in has if name == "same") - sum(1 for name, _ in had if name == "same")
                if had != has:
                    entries.setdefault(fam, {})[o] = {"kind": "nft", "elements": sorted(map(list, has))} \
                        if has else None
            if (count > 0) != (base.get("networks", 0) > 0):
                return False  # the first network of the family came, or the last went: full path
            if count != base.get("networks", 0):
                bases[fam] = dict(base, networks=count)
            batch += t.element_batch(dels, "delete") + t.element_batch(adds, "add")
        text = "\n".join(batch) + "\n" if batch else ""
        if text:
            try:
                self._run_batch(text)
            except KernelError:
                return False  # not what the ledger says (flushed, a stale entry): a full apply
        for fam, es in entries.items():
            for o, entry in es.items():
                self.ledger.put(fam, o, entry)
        for fam, base in bases.items():
            self.ledger.put(fam, "base", base)
        self.last_path, self.last_batch = ("delta" if text else "in-sync"), text
        if bridged or any(n.id in changed for n in nets) or sctp:
            # the bridges to open change with networks only; SCTP checksums with SCTP ports
            ok = [n for n in networks if n.id not in probs]
            ids = {n.id for n in ok}
            self._open_iptables(ok, [e for e in endpoints if e.network_id in ids and e.id not in probs])
        if IPV4 in self.families:
            for path, value in self.sysctls([n for n in nets if n.id in changed]):
                self._set_sysctl(path, value)
        return True

    def _ledger_entries(self, t: NftTable) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for name, els in t.elements.items():
            for el, o in els.items():
                out.setdefault(o, {"kind": "nft", "elements": []})["elements"].append([name, el])
        for e in out.values():
            e["elements"].sort()
        out["base"] = {"kind": "base", "skeleton": t.skeleton_digest(),
                       "networks": len(t.elements.get("same", {}))}
        return out

    def apply_desired(self, tables: dict[str, NftTable], networks, *, changed=None, endpoints=()) -> None:
        net_ids = {n.id for n in networks}
        if changed is not None:
            changed = set(changed)
        full = []
        for fam in self.families:
            self.ledger.put(fam, "base", None)  # unknown until this apply succeeds
            if not self._in_sync(tables[fam]):
                full.append(tables[fam])
        text = "".join(self._replace_text(t) for t in full)
        if text:
            self._run_batch(text)
        self.last_path, self.last_batch = ("replace" if text else "in-sync"), text
        for fam in self.families:
            self.ledger.replace(fam, self._ledger_entries(tables[fam]))
        if changed is None or net_ids & set(changed) or self._opened != self._bridges(networks) \
                or _sctp(endpoints):
            self._open_iptables(networks, endpoints)
        if IPV4 in self.families:
            # a change sets its own networks' sysctls only (the full apply sets them all)
            mine = networks if changed is None else [n for n in networks if n.id in changed]
            for path, value in self.sysctls(mine):
                self._set_sysctl(path, value)

    def remove_all(self) -> None:
        """Remove this instance's tables (and its FORWARD openings in iptables)."""
        p = self._nft(["list", "tables"])
        have = set(p.stdout.split("\n")) if p.returncode == 0 else set()
        text = "".join(f"delete table {NFT_FAMILY[f]} {self.prefix}\n" for f in self.families
                       if f"table {NFT_FAMILY[f]} {self.prefix}" in have)
        if text:
            self._run_batch(text)
        self.ledger.clear()
        opener = self._opener()
        if opener is not None:
            opener.remove_all()
            self._opened = frozenset()

    def diff(self, networks, endpoints, problems: dict | None = None) -> str:
        """Desired vs the kernel's tables (elements compared as sets); '' when in sync."""
        out = []
        nets = networks
        if problems is not None:
            tables, nets = self.screened(networks, endpoints, problems)
        else:
            tables = self.desired(networks, endpoints)
        for fam, t in tables.items():
            text = self._listing(t)
            have = _normal(text) if text is not None else []
            want = _normal(t.to_nft()) if not t.empty else []
            if have != want:
                out.append("".join(difflib.unified_diff(
                    [x + "\n" for x in have], [x + "\n" for x in want],
                    f"kernel {t.nft_family} {t.name}", f"desired {t.nft_family} {t.name}", n=1)))
        opener = self._opener()
        if opener is not None:
            opener.open_forward = self._needs_opener()
            out.append(opener.diff(list(nets), _sctp(endpoints)))
        return "".join(out)

    # --- iptables' FORWARD -----------------------------------------------------
    @staticmethod
    def _bridges(networks) -> frozenset:
        return frozenset(n.bridge for n in networks)

    def _opener(self):
        if self._iptables is False:
            return None
        if self._iptables is None:
            self._iptables = _ForwardOpener(self.prefix, netns=self.netns, families=self.families)
        return self._iptables

    def _needs_opener(self) -> bool:
        """Whether iptables' filter FORWARD would drop what pynet's table accepts:
        policy DROP, or anybody's rules there (dockerd's)."""
        return self._iptables_state()[0]

    def _iptables_state(self) -> tuple[bool, bool]:
        """(FORWARD would drop, iptables holds rules tagged by this instance), from one
        iptables-save per family."""
        opener = self._opener()
        if opener is None:
            return False, False
        blocks = tagged = False
        for fam in self.families:
            try:
                text = opener.backend.save(fam)
            except KernelError:
                continue
            blocks = blocks or _forward_blocks(text, self.prefix)
            tagged = tagged or f'"pynet:{self.prefix}:' in text
        return blocks, tagged

    def _open_iptables(self, networks, endpoints=()) -> None:
        opener = self._opener()
        if opener is None:
            return
        needed, tagged = self._iptables_state()
        if needed and self.iptables_forward == "refuse":
            raise KernelError("iptables' FORWARD chain drops what pynet's nftables table accepts "
                              "(policy DROP or dockerd's rules): run dockerd with --iptables=false, "
                              "or use --firewall-backend iptables")
        sctp = _sctp(endpoints)
        if needed or tagged or sctp:  # else nothing to open, keep or remove there: no second read
            opener.open_forward = needed
            opener.apply(list(networks), sctp)
        self._opened = self._bridges(networks)

    def _set_sysctl(self, path: str, value: str) -> None:
        if set_bridge_sysctl(self._sysctl, path, value):
            return
        argv = ["sh", "-c", f'[ ! -e "/proc/sys/{path}" ] || echo {value} > "/proc/sys/{path}"']
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns] + argv
        p = subprocess.run(argv, capture_output=True, text=True)
        if p.returncode != 0:
            raise KernelError(f"sysctl {path}={value}: {p.stderr.strip()}")


def _normal(text: str) -> list[str]:
    """A listing as comparable lines: the skeleton, then each set's sorted elements."""
    skel, els = parse_listing(text)
    lines = [ln.strip() for ln in skel.splitlines() if ln.strip()]
    for name in sorted(els):
        lines += [f"element {name} {e}" for e in sorted(els[name])]
    return lines


def _forward_blocks(save_text: str, prefix: str) -> bool:
    """An iptables-save text's filter FORWARD: policy DROP, or rules not of this instance."""
    table, tag = None, f"pynet:{prefix}:"
    for line in save_text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif table == "filter" and line.startswith(":FORWARD ") and line.split()[1] != "ACCEPT":
            return True
        elif table == "filter" and line.startswith("-A FORWARD ") and tag not in line:
            return True
    return False


def _sctp(endpoints) -> list:
    """The endpoints with an SCTP port mapping (their checksum rules live in iptables)."""
    return [e for e in endpoints if any(pm.proto == "sctp" for pm in e.ports)]


def _open_rules(prefix: str, networks, family: str, endpoints=(), open_forward: bool = True) -> Ruleset:
    """What the nftables backend keeps in iptables: FORWARD opened for its bridges
    (``open_forward``: where iptables' FORWARD would drop), and the SCTP checksum rules
    of Docker's layout (mangle POSTROUTING ``-p sctp --sport <container port> -j
    CHECKSUM --checksum-fill``: checksums a virtio guest left to offload filled in on the
    way out), which nft has no statement for."""
    rs = Ruleset(family, prefix)
    ver = 4 if family == IPV4 else 6
    usable = set()
    for n in networks:
        if not (n.subnets_v4 if family == IPV4 else n.subnets_v6):
            continue
        if not n.internal:
            usable.add(n.id)
        if open_forward:
            rs.add("filter", "FORWARD", ["-i", n.bridge, "-j", "ACCEPT"], n.id)
            rs.add("filter", "FORWARD", ["-o", n.bridge, "-j", "ACCEPT"], n.id)
    for ep in endpoints:
        if ep.network_id not in usable:
            continue  # Docker ignores port bindings on internal networks
        for v, pm, _ in expand_ports(ep):
            if v == ver and pm.proto == "sctp":
                rs.add("mangle", "POSTROUTING", ["-p", "sctp", "-m", "sctp", "--sport", str(pm.container_port),
                                                 "-j", "CHECKSUM", "--checksum-fill"], ep.id)
    return rs


class _ForwardOpener(Firewall):
    """The iptables backend rendering only the FORWARD openings of the nftables
    backend's bridges (same tag, so it also removes what the iptables backend of
    the same prefix left when the backend was switched)."""

    open_forward = True  # set by the NftFirewall before each apply/diff

    def sysctls(self, networks):
        return []  # the NftFirewall sets its networks' sysctls itself

    def _render(self, networks, endpoints, isolate_from):
        return {fam: _open_rules(self.prefix, networks, fam, endpoints, self.open_forward)
                for fam in self.families}
