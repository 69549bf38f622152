"""``POST /Pynet.CNI`` (pynet.cni.route, handed to the Docker app by the daemon) with envelopes the shim
never sends: a 4xx ``{"Err"}`` or a CNI error answer (code 4/6/7), never a
500, nothing changed; and a finished verb's answer survives its log line."""
from __future__ import annotations

import json

import pytest

from tests.support.contract import make_ipam, snapshot
from tests.support.fakes import FakeDriver, FakeFirewall


@pytest.fixture
def cni(tmp_path):
    from pynet.cni.shim import namespace_ids
    from pynet.cni.route import register_cni
    from pynet.cnm.controller import Controller
    from pynet.plugin_api.app import create_app
    from pynet.store.memory import MemoryStore

    store = MemoryStore()
    state = tmp_path / "state"
    state.mkdir()
    c = Controller(store, make_ipam(store), {"bridge": FakeDriver()}, firewall=FakeFirewall(),
                   port_allocator=None)
    app = create_app(c, routes=[lambda a, ctl: register_cni(a, ctl, state_dir=str(state))])
    app.testing = False
    client = app.test_client()
    net, mnt = namespace_ids()

    class Route:
        state_dir = str(state)

        def envelope(self, **over):
            body = {"plugin": "bridge", "env": {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1",
                                                "CNI_IFNAME": "eth0", "CNI_NETNS": "/proc/1/ns/net"},
                    "stdin": json.dumps({"cniVersion": "1.0.0", "name": "n1", "type": "pynet-bridge"}),
                    "stateDir": str(state), "netns": net, "mntns": mnt}
            body.update(over)
            return body

        def post(self, body=None, raw=None):
            data = raw if raw is not None else json.dumps(body).encode()
            resp = client.post("/Pynet.CNI", data=data, content_type="application/json")
            answer = json.loads(resp.get_data())
            return resp.status_code, answer

    r = Route()
    r.store = store
    return r


def _cni_code(answer):
    assert set(answer) == {"stdout", "code"} and answer["code"] == 1, answer
    return json.loads(answer["stdout"])["code"]


@pytest.mark.parametrize("raw", [b"[" * 1000 + b"]" * 1000,
                                 b'{"plugin": "bridge", "env": ' + b'{"a": ' * 1000 + b'1' + b'}' * 1000 + b'}'],
                         ids=["top", "env"])
def test_deep_envelope_is_a_400(cni, raw):
    before = snapshot(cni.store)
    status, answer = cni.post(raw=raw)
    assert status == 400 and set(answer) == {"Err"}, answer
    assert snapshot(cni.store) == before


@pytest.mark.parametrize("field,value", [("stateDir", 5), ("stateDir", ["/x"]), ("netns", 1),
                                         ("stdin", {"a": 1}), ("plugin", None), ("env", "x")])
def test_envelope_of_the_wrong_types_is_a_400(cni, field, value):
    before = snapshot(cni.store)
    status, answer = cni.post(cni.envelope(**{field: value}))
    assert status == 400 and set(answer) == {"Err"}, (status, answer)
    assert snapshot(cni.store) == before


@pytest.mark.parametrize("var,value", [("CNI_CONTAINERID", 5), ("CNI_CONTAINERID", None),
                                       ("CNI_IFNAME", ["eth0"]), ("CNI_NETNS", {"a": 1}),
                                       ("CNI_COMMAND", 1), ("CNI_CONTAINERID", "c\udfff"),
                                       ("CNI_IFNAME", "e\ud800")])
def test_bad_env_values_answer_code_4(cni, monkeypatch, var, value):
    import pynet.cni.dispatch as dispatch

    calls = []
    real = dispatch.run
    monkeypatch.setattr(dispatch, "run", lambda *a, **k: calls.append(a) or real(*a, **k))
    before = snapshot(cni.store)
    env = cni.envelope()["env"]
    env[var] = value
    status, answer = cni.post(cni.envelope(env=env))
    assert status == 200, answer
    assert _cni_code(answer) == 4
    assert snapshot(cni.store) == before


@pytest.mark.parametrize("stdin", ['{"cniVersion": "1.0.0", "name": "n\ud800"}',
                                   '{"cniVersion": "1.0.0", "name": "n", "bridge": "b\ud800"}'])
def test_stdin_with_a_surrogate_no_byte_maps_to_is_refused(cni, stdin):
    before = snapshot(cni.store)
    status, answer = cni.post(cni.envelope(stdin=stdin))
    assert status == 200, answer
    assert _cni_code(answer) in (6, 7)
    assert snapshot(cni.store) == before


def test_finished_add_is_answered_even_if_logging_fails(cni, monkeypatch):
    """The ADD is done (the interface exists): a failing log line must not make
    the answer a 500, which the shim reports as code 11 (try again)."""
    import pynet.cni.dispatch as dispatch
    import pynet.cni.route as route

    result = json.dumps({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.2/24"}]}) + "\n"
    monkeypatch.setattr(dispatch, "run", lambda *a, **k: (result, 0))

    class Broken:
        def info(self, *a, **k):
            raise RuntimeError("log handler failed")
        exception = error = warning = debug = info

    monkeypatch.setattr(route, "log", Broken())
    env = cni.envelope()["env"]
    env["CNI_CONTAINERID"] = "c1-\x1b[2J\u2028x"
    status, answer = cni.post(cni.envelope(env=env))
    assert (status, answer) == (200, {"stdout": result, "code": 0})


def test_odd_ids_are_logged_on_one_ascii_line(cni, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="pynet.plugin_api.cni")
    env = cni.envelope()["env"]
    env["CNI_CONTAINERID"] = "c1\nINFO forged\u2028"
    status, answer = cni.post(cni.envelope(env=env))
    assert status == 200 and _cni_code(answer) == 4, answer
    lines = [r.getMessage() for r in caplog.records if r.name == "pynet.plugin_api.cni"]
    assert len(lines) == 1 and lines[0].isascii() and "\n" not in lines[0], lines
