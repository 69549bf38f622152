"""``--log-format json``: the daemon's log as one JSON object per line, for log shippers.

    {"ts": "2026-12-01T23:22:05.123+00:00", "level": "INFO", "logger": "pynet.daemon",
     "msg": "restored 2 network(s), 3 endpoint(s)", "network_id": "4f1c..."}

Fields given with ``log.info(..., extra={"network_id": ...})`` become keys of their own, so a
shipper can index the IDs of an event; an exception goes in ``exc`` (one string, still one
line).  Installed before :func:`pynet.daemon.setup_logging` runs, as the one pynet handler
(marked ``_pynet``), so the daemon keeps it instead of adding its text handler.
Format from ``--log-format`` or ``PYNET_LOG_FORMAT`` (``text``, the default, or ``json``).

Events (a Docker verb, a CNI verb) are logged by :func:`event`: one line naming the IDs involved
the way Docker prints them (12 characters: ``docker network ls``, ``docker ps``), the outcome and
the duration; the same IDs are fields of their own in JSON:

    NetworkDriver.Join network_id=4f1c2a3b4c5d endpoint_id=9a8b7c6d5e4f sandbox_id=1a2b3c4d5e6f -> ok (3.1 ms)
    {"ts": ..., "msg": "NetworkDriver.Join network_id=...", "event": "NetworkDriver.Join",
     "network_id": "4f1c2a3b4c5d", "endpoint_id": "9a8b7c6d5e4f", "sandbox_id": "1a2b3c4d5e6f",
     "result": "ok", "duration_ms": 3.1}
"""
from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone

FORMATS = ("text", "json")
ENV = "PYNET_LOG_FORMAT"
# attributes every LogRecord has: anything else on a record came from ``extra=``
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        for k, v in vars(record).items():
            if k not in _STANDARD and not k.startswith("_") and k not in out:
                out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def choose(flag: str | None) -> str:
    value = flag or os.environ.get(ENV) or "text"
    if value not in FORMATS:
        from pynet.errors import InvalidParameter

        raise InvalidParameter(f"invalid log format {value!r}: want one of {', '.join(FORMATS)}"
                               + ("" if flag else f" ({ENV})"))
    return value


def install(fmt: str, stream=None) -> None:
    """For ``json``: put the JSON handler on the root logger as pynet's handler (``text``: leave
    it to the daemon's own setup)."""
    if fmt != "json":
        return
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_pynet", False)]:
        root.removeHandler(h)
    h = logging.StreamHandler(stream or sys.stderr)
    h.setFormatter(JsonFormatter())
    h._pynet = True  # type: ignore[attr-defined]
    root.addHandler(h)


# Fields holding Docker-style 64-hex IDs: shortened to the 12 characters Docker prints.
SHORT_IDS = {"network_id", "endpoint_id", "sandbox_id", "container_id"}
SHORT = 12


def printable(value, limit: int = 80) -> str:
    """A caller's text, fit for one log line: non-printable or non-ASCII escaped, cut at ``limit``."""
    s = str(value)[:limit]
    return s if s.isascii() and s.isprintable() and " " not in s else ascii(s)


def event(logger: logging.Logger, level: int, what: str, ids: dict, error: BaseException | None,
          seconds: float, result: str = "") -> None:
    """One line for one event: ``what`` (``NetworkDriver.CreateEndpoint``, ``CNI ADD``), its IDs
    (empty ones left out, Docker IDs short), the outcome (``ok``, or the error's class and message,
    or ``result`` when given) and the duration."""
    if not logger.isEnabledFor(level):
        return
    fields = {k: printable(v)[:SHORT] if k in SHORT_IDS else printable(v)
              for k, v in ids.items() if v not in (None, "")}
    if not result:
        result = "ok" if error is None else type(error).__name__
    outcome = result if error is None else f"{result}: {' '.join(str(error).split())}"
    ms = round(seconds * 1000, 1)
    text = " ".join([what, *(f"{k}={v}" for k, v in fields.items()), "->", outcome, f"({ms} ms)"])
    extra = {**fields, "event": what, "result": result, "duration_ms": ms}
    if error is not None:
        extra["error"] = " ".join(str(error).split())
    logger.log(level, "%s", text, extra=extra)
