"""JSON from the outside, decoded without surprises -- standard library only
(the CNI binaries import it).

``json.loads`` has two ways to fail that are not ``ValueError``:

* nesting: each level is a recursion of the C scanner, so ~1,000 nested
  ``[`` raise ``RecursionError`` -- and a body that decodes a little below the
  interpreter's limit still blows the stack later, in code that walks it
  (``json.dumps`` into the store, ``copy.deepcopy``), deeper in the call stack;
* lone surrogates: ``"\\ud800"`` decodes to a ``str`` that cannot be encoded
  as UTF-8, so the first ``.encode()`` -- SQLite storing an ID, a log line, a
  netlink attribute -- raises ``UnicodeEncodeError`` far from the request.

Docker's plugin client (Go's encoding/json) never sends either: it nests a few
levels and writes invalid UTF-8 as U+FFFD.  ``loads`` refuses both at the door
with ``Malformed`` (a ``ValueError``), which every front end already maps to
its "bad request" answer.
"""
from __future__ import annotations

import json
from typing import Any

# The deepest request pynet understands nests 5 levels (a CNI prevResult's
# interface list, Docker's port maps in Options); 32 leaves room for
# pass-through fields (CNI "args") and stays far below the recursion limit.
MAX_DEPTH = 32


class Malformed(ValueError):
    """The text is JSON, but not JSON pynet accepts (too deep, lone surrogate)."""


def loads(raw, max_depth: int = MAX_DEPTH, surrogates: bool = False) -> Any:
    """``json.loads(raw)``, then ``check``.  ``surrogates=True`` lets lone
    surrogates through (the CNI shim's envelope carries raw bytes of stdin and
    the environment as surrogate escapes)."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise Malformed(f"nested deeper than {max_depth} levels") from None
    check(value, max_depth, surrogates=surrogates)
    return value


def check(value: Any, max_depth: int = MAX_DEPTH, surrogates: bool = False) -> None:
    """Raise ``Malformed`` if ``value`` (decoded JSON) nests deeper than
    ``max_depth`` or holds a string (key or value) that is not valid Unicode.
    Iterative: the walk itself cannot overflow the stack."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            if not surrogates:
                _text(v)
        elif isinstance(v, dict):
            if depth > max_depth:
                raise Malformed(f"nested deeper than {max_depth} levels")
            for k, item in v.items():
                if not surrogates:
                    _text(k)
                stack.append((item, depth + 1))
        elif isinstance(v, list):
            if depth > max_depth:
                raise Malformed(f"nested deeper than {max_depth} levels")
            stack.extend((item, depth + 1) for item in v)


def _text(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise Malformed(f"string {s[:40]!a} holds a lone surrogate (\\u{ord(s[e.start]):04x}), "
                        "not valid Unicode") from None
