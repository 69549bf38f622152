"""``pynet daemon --log-format json``: one JSON object per log line, IDs from ``extra=`` as keys."""
from __future__ import annotations

import io
import json
import logging

import pytest

from pynet import cli, logfmt


def _record(msg, *args, exc=None, **extra):
    logger = logging.getLogger("pynet.test")
    return logger.makeRecord("pynet.test", logging.WARNING, __file__, 1, msg, args, exc, extra=extra)


def test_one_line_per_event_with_ids_and_exception():
    f = logfmt.JsonFormatter()
    line = f.format(_record("endpoint %s joined\nsecond line", "e1", network_id="n1", endpoint_id="e1"))
    assert "\n" not in line
    d = json.loads(line)
    assert d["level"] == "WARNING" and d["logger"] == "pynet.test"
    assert d["msg"] == "endpoint e1 joined\nsecond line"
    assert d["network_id"] == "n1" and d["endpoint_id"] == "e1"
    assert d["ts"].endswith("+00:00")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        line = f.format(_record("failed", exc=sys.exc_info(), obj=object()))
    d = json.loads(line)
    assert "\n" not in line and "ValueError: boom" in d["exc"] and d["obj"].startswith("<object")


def test_choose_from_flag_env_default(monkeypatch):
    monkeypatch.delenv("PYNET_LOG_FORMAT", raising=False)
    assert logfmt.choose(None) == "text"
    monkeypatch.setenv("PYNET_LOG_FORMAT", "json")
    assert logfmt.choose(None) == "json"
    assert logfmt.choose("text") == "text"
    monkeypatch.setenv("PYNET_LOG_FORMAT", "xml")
    with pytest.raises(Exception, match="PYNET_LOG_FORMAT"):
        logfmt.choose(None)


def test_daemon_flag_installs_the_json_handler_the_daemon_keeps(monkeypatch):
    from pynet import daemon

    buf = io.StringIO()
    real_install = logfmt.install
    monkeypatch.setattr(logfmt, "install", lambda fmt: real_install(fmt, stream=buf))

    def fake_run(config, **metrics_settings):
        daemon.setup_logging()       # what run_daemon does first: must keep the JSON handler
        logging.getLogger("pynet.daemon").info("pynet daemon starting", extra={"plugin": config.plugin_name})

    monkeypatch.setattr(daemon, "run_daemon", fake_run)
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        assert cli.main(["daemon", "--log-format", "json", "--plugin-name", "logtest"]) == 0
        lines = buf.getvalue().splitlines()
        assert [json.loads(x)["plugin"] for x in lines] == ["logtest"]
        assert sum(getattr(h, "_pynet", False) for h in root.handlers) == 1
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
    assert cli.main(["daemon", "--log-format", "yaml"]) == 1
