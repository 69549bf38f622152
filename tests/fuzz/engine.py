"""Mutations of one JSON request, shared by the bounded property tests
(hypothesis, in CI) and the long run (``python -m tests.fuzz.run``).

A mutation takes a decoded request and changes ONE thing in it: deletes a
field, gives it the wrong type, a huge or negative number, a hostile string
(IPv6 zones, newlines, NUL, lone surrogates, iptables wildcards, ``/``), or
nests it deep.  Choices go through a ``Chooser`` so the same code is driven by
``random.Random`` (the long run, reproducible from its seed) or by
hypothesis's ``data.draw`` (shrinkable counter-examples).
"""
from __future__ import annotations

import copy
import json
import random
from typing import Any, Sequence

HOSTILE_STRINGS = [
    "", " ", "x", "-j", "-", "+", "eth+", "*", "!", "/", "a/b", "../../etc", ".", "..",
    "a\nb", "a\rb", "\n", "x\nCOMMIT\n*filter\n-I INPUT 1 -j ACCEPT", "a\x00b", "\x00",
    "\ud800", "a\udfffb", "\udc80", "\u2028", "\u202e", "\U0001d518", "é", "\t",
    "::%lo", "fe80::1%eth0", "::%lo\nCOMMIT", "10.0.0.1%x", "10.0.0.1/24\n", "10.0.0.0/33",
    "0.0.0.0/0", "::/0", "255.255.255.255", "10.0.0.256", "1.2.3.4/-1", "fe80::/10", "::ffff:1.2.3.4",
    "00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff", "zz:zz", "$(id)", "`id`", "'\"", "%s%n", "{}", "[]",
    "null", "true", "1e309", "-1", "65536", "0x10", "A" * 300, "B" * 70000,
    "1" * 64 + "\n", "1" * 64 + "/x", "1" * 63, "g" * 64,
]
HOSTILE_SUFFIXES = ["\n", "\x00", "%lo", "%eth0\nCOMMIT", "/", "+", " -j ACCEPT", "\ud800", "\t", "x" * 5000]
HOSTILE_NUMBERS = [0, -1, 1, -2 ** 31, 2 ** 31, 2 ** 32, 2 ** 63, -2 ** 63, 2 ** 64, 10 ** 30, -10 ** 30,
                   65535, 65536, 70000, 4095, 4096, 1.5, -0.0, 1e308, float("inf"), float("-inf"),
                   float("nan")]
WRONG_TYPES = [None, True, False, 0, 1, -1, "", "x", [], {}, [None], {"x": 1}, [1, 2], 1.5]
KINDS = ("delete", "wrong-type", "number", "string", "suffix", "deep", "duplicate-list", "raw")


class Failure(Exception):
    """A case broke a property: ``kind`` groups the report."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


class Finding(Failure):
    """Accepted input that validation at the door should have refused
    (reported by the long run in strict mode; not a property of the CI tests)."""


def store_state(store) -> list:
    """The store's records, for "nothing changed".  A pool's ``cursor`` is left
    out: the allocator is next-fit, and an undone allocation moving the
    cursor is by design (a released address is not handed out again at once,
    as with Docker's IPAM); it holds nothing."""
    out = []
    for r in store.list(""):
        v = r.value
        if r.key.startswith(("ipam/pools/", "ipam/cursors/")) and isinstance(v, dict):
            v = {k: x for k, x in v.items() if k != "cursor"}
        out.append((r.key, v))
    return out


class Chooser:
    def choice(self, seq: Sequence, label: str = "") -> Any:
        raise NotImplementedError

    def integer(self, lo: int, hi: int, label: str = "") -> int:
        raise NotImplementedError


class RandomChooser(Chooser):
    def __init__(self, rnd: random.Random):
        self.rnd = rnd

    def choice(self, seq, label=""):
        return seq[self.rnd.randrange(len(seq))]

    def integer(self, lo, hi, label=""):
        return self.rnd.randint(lo, hi)


class DataChooser(Chooser):
    """Draws through hypothesis's ``st.data()``."""

    def __init__(self, data):
        from hypothesis import strategies as st
        self.data, self.st = data, st

    def choice(self, seq, label=""):
        return self.data.draw(self.st.sampled_from(list(seq)), label=label or None)

    def integer(self, lo, hi, label=""):
        return self.data.draw(self.st.integers(lo, hi), label=label or None)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into ``value`` (dict keys, list indices), the root included."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, prefix + (i,))
    return out


def _get(value, path):
    for p in path:
        value = value[p]
    return value


def _set(root, path, new):
    if not path:
        return new
    parent = _get(root, path[:-1])
    parent[path[-1]] = new
    return root


def deep(depth: int, leaf: Any = 1, kind: str = "list") -> Any:
    v = leaf
    for _ in range(depth):
        v = [v] if kind == "list" else {"a": v}
    return v


def mutate(request: Any, ch: Chooser) -> tuple[Any, bytes, str]:
    """(mutated request, its body as sent, a one-line description).  The body is
    what goes on the wire: json.dumps of the request, or raw bytes for ``raw``."""
    req = copy.deepcopy(request)
    kind = ch.choice(KINDS, "kind")
    if kind == "raw":
        text = json.dumps(request).encode()
        how = ch.choice(["truncate", "garbage", "bom", "nul", "deep-raw", "not-object"], "raw")
        if how == "truncate":
            cut = ch.integer(0, max(0, len(text) - 1), "cut")
            return None, text[:cut], f"raw: truncated at {cut}"
        if how == "garbage":
            return None, text + b"\xff\xfe}", "raw: trailing invalid UTF-8"
        if how == "bom":
            return None, b"\xef\xbb\xbf" + text, "raw: UTF-8 BOM"
        if how == "nul":
            return None, text.replace(b'"', b'"\x00', 1), "raw: NUL in the text"
        if how == "deep-raw":
            n = ch.choice([100, 999, 1000, 5000, 100000], "depth")
            return None, b"[" * n + b"]" * n, f"raw: {n} nested arrays"
        v = ch.choice([[], "x", 1, None, [request]], "top")
        return v, json.dumps(v).encode(), f"raw: top-level {type(v).__name__}"
    ps = paths(req)
    if kind == "delete":
        ps = [p for p in ps if p]
        if not ps:
            return req, json.dumps(req).encode(), "delete: nothing to delete"
        p = ch.choice(ps, "path")
        parent = _get(req, p[:-1])
        del parent[p[-1]]
        return req, json.dumps(req).encode(), f"delete {_fmt(p)}"
    p = ch.choice(ps, "path")
    if kind == "wrong-type":
        v = ch.choice(WRONG_TYPES, "value")
    elif kind == "number":
        v = ch.choice(HOSTILE_NUMBERS, "value")
    elif kind == "string":
        v = ch.choice(HOSTILE_STRINGS, "value")
    elif kind == "suffix":
        strs = [q for q in ps if isinstance(_get(req, q), str)]
        if strs:
            p = ch.choice(strs, "path")
        old = _get(req, p)
        v = (old if isinstance(old, str) else str(old)) + ch.choice(HOSTILE_SUFFIXES, "suffix")
    elif kind == "deep":
        v = deep(ch.choice([33, 64, 200, 990, 1000, 3000], "depth"), kind=ch.choice(["list", "dict"], "deep"))
    else:  # duplicate-list: a list entry twice (two pools, two port maps, ...)
        lists = [q for q in ps if isinstance(_get(req, q), list) and _get(req, q)]
        if not lists:
            return req, json.dumps(req).encode(), "duplicate-list: no list"
        p = ch.choice(lists, "path")
        old = _get(req, p)
        v = old + [copy.deepcopy(old[0])]
    req = _set(req, p, v)
    try:
        body = json.dumps(req).encode()
    except (RecursionError, ValueError):
        body = _dumps_deep(req)
    return req, body, f"{kind} {_fmt(p)} = {_short(v)}"


def _dumps_deep(v) -> bytes:
    """json.dumps for values nested past the recursion limit (iterative)."""
    out, stack = [], [v]
    while stack:
        x = stack.pop()
        if isinstance(x, _Tok):
            out.append(x.s)
        elif isinstance(x, list):
            out.append("[")
            stack.append(_Tok("]"))
            for i, item in reversed(list(enumerate(x))):
                stack.append(item)
                if i:
                    stack.append(_Tok(","))
        elif isinstance(x, dict):
            out.append("{")
            stack.append(_Tok("}"))
            items = list(x.items())
            for i, (k, item) in reversed(list(enumerate(items))):
                stack.append(item)
                stack.append(_Tok(json.dumps(k) + ":"))
                if i:
                    stack.append(_Tok(","))
        else:
            out.append(json.dumps(x))
    return "".join(out).encode()


class _Tok:
    def __init__(self, s):
        self.s = s


def _fmt(path) -> str:
    return "/" + "/".join(str(p) for p in path)


def _short(v) -> str:
    r = ascii(v) if not isinstance(v, (list, dict)) else _depth_repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _depth_repr(v) -> str:
    d, x = 0, v
    while isinstance(x, (list, dict)) and x:
        x = x[0] if isinstance(x, list) else next(iter(x.values()))
        d += 1
    return f"<{type(v).__name__} nested {d}>" if d > 3 else ascii(v)[:60]
