"""``--log-format json``: the daemon's log as one JSON object per line, for log shippers.

    {"ts": "2026-12-01T23:22:05.123+00:00", "level": "INFO", "logger": "pynet.daemon",
     "msg": "restored 2 network(s), 3 endpoint(s)", "network_id": "4f1c..."}

Fields given with ``log.info(..., extra={"network_id": ...})`` become keys of their own, so a
shipper can index the IDs of an event; an exception goes in ``exc`` (one string, still one
line).  Installed before :func:`pynet.daemon.setup_logging` runs, as the one pynet handler
(marked ``_pynet``), so the daemon keeps it instead of adding its text handler.
Format from ``--log-format`` or ``PYNET_LOG_FORMAT`` (``text``, the default, or ``json``).
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
