"""pynet.cni.spec, pynet.cni.settings and the entry (pynet.cni.main + shim): versions, result conversion, errors,
environment checks, and the shim <-> daemon protocol over a real unix socket."""
from __future__ import annotations

import json
import os
import socket
import threading

import pytest

from pynet.cni import main as entry
from pynet.cni import spec
from pynet.cni.settings import pynet_settings
from pynet.cni.spec import CniError

RESULT = {"interfaces": [{"name": "br0", "mac": "aa:bb:cc:dd:ee:ff"},
                         {"name": "eth0", "mac": "02:42:0a:00:00:02", "sandbox": "/var/run/netns/x", "mtu": 1400}],
          "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 1},
                  {"address": "fd00::2/64", "gateway": "fd00::1", "interface": 1}],
          "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}], "dns": {}}


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_pre_1_0_results_carry_ip_versions(version):
    out = spec.to_version(RESULT, version)
    assert out["cniVersion"] == version
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert "mtu" not in out["interfaces"][1]
    assert spec.from_any(out)["ips"] == RESULT["ips"]


def test_1_x_results():
    assert all("version" not in ip for ip in spec.to_version(RESULT, "1.0.0")["ips"])
    assert "mtu" not in spec.to_version(RESULT, "1.0.0")["interfaces"][1]
    assert spec.to_version(RESULT, "1.1.0")["interfaces"][1]["mtu"] == 1400


def test_versions_and_errors():
    assert spec.check_version("1.1.0") == "1.1.0"
    for bad in ("0.2.0", "2.0.0", "", None, 3, "x.y"):
        with pytest.raises(CniError) as e:
            spec.check_version(bad)
        assert e.value.code == 1
    assert spec.version_result(b"") == {"cniVersion": "1.1.0", "supportedVersions": list(spec.SUPPORTED_VERSIONS)}
    err = spec.error_result(7, "a\n  b", "9.9.9")
    assert err == {"cniVersion": "1.1.0", "code": 7, "msg": "a b"}
    with pytest.raises(CniError) as e:
        spec.from_any({"ip4": {}})
    assert e.value.code == 1


@pytest.mark.parametrize("env,code", [
    ({"CNI_CONTAINERID": "a/b", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"}, 4),
    ({"CNI_CONTAINERID": "ok", "CNI_IFNAME": "x" * 16, "CNI_NETNS": "/x"}, 4),
    ({"CNI_CONTAINERID": "ok", "CNI_IFNAME": "eth0"}, 4),
    ({"CNI_CONTAINERID": "ok", "CNI_IFNAME": "eth0", "CNI_NETNS": "relative"}, 4),
    ({"CNI_CONTAINERID": "", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"}, 4),
    ({"CNI_CONTAINERID": "ok", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x", "CNI_ARGS": "novalue"}, 4),
])
def test_environment_checks(env, code):
    with pytest.raises(CniError) as e:
        spec.Args(env, "ADD")
    assert e.value.code == code


def test_del_needs_no_netns_and_args_parse():
    a = spec.Args({"CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "",
                   "CNI_ARGS": "IgnoreUnknown=1;IP=10.0.0.9;K8S_POD_NAME=p"}, "DEL")
    assert a.args == {"IgnoreUnknown": "1", "IP": "10.0.0.9", "K8S_POD_NAME": "p"}
    spec.Args({}, "GC")
    spec.Args({}, "STATUS")


def test_capabilities_case_insensitive():
    conf = {"runtimeConfig": {"PortMappings": [{"HostPort": 1, "containerport": 2}]}}
    pm = spec.capability(conf, "portMappings")[0]
    assert spec.ci_get(pm, "hostPort") == 1 and spec.ci_get(pm, "containerPort") == 2


def test_settings_precedence():
    s = pynet_settings({"pynet": {"stateDir": "/a"}}, {"PYNET_STATE_DIR": "/b", "PYNET_SOCKET": "/s"})
    assert s["state_dir"] == "/a" and s["socket"] == "/s" and s["daemon"]
    s = pynet_settings({"ipam": {"pynet": {"socket": "/i"}}}, {"PYNET_CNI_DAEMON": "0"})
    assert s["socket"] == "/i" and s["state_dir"] == "/var/lib/pynet" and not s["daemon"]
    assert pynet_settings({}, {})["socket"] == "/run/docker/plugins/pynet.sock"


# -- the shim <-> daemon protocol ---------------------------------------------------
class FakeDaemon:
    def __init__(self, path, status=200, answer=None):
        self.path, self.status, self.answer = path, status, answer
        self.requests = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            n = int([line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0])
            while len(body) < n:
                body += conn.recv(65536)
            self.requests.append((head.split(b"\r\n")[0].decode(), json.loads(body)))
            payload = json.dumps(self.answer or {}).encode()
            conn.sendall(f"HTTP/1.1 {self.status} X\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
            conn.close()

    def close(self):
        self.sock.close()


CONF = {"cniVersion": "1.0.0", "name": "n1", "type": "pynet-bridge"}


def _env(sock, state="/tmp/st"):
    return {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x",
            "PYNET_SOCKET": sock, "PYNET_STATE_DIR": state}


def test_shim_hands_the_request_to_the_daemon(tmp_path):
    d = FakeDaemon(str(tmp_path / "d.sock"), answer={"stdout": "{\"ok\": 1}\n", "code": 0})
    try:
        out, code = entry.handle("bridge", _env(d.path), json.dumps(CONF).encode())
    finally:
        d.close()
    assert (out, code) == ("{\"ok\": 1}\n", 0)
    line, body = d.requests[0]
    assert line == "POST /Pynet.CNI HTTP/1.1"
    assert body["plugin"] == "bridge" and body["env"]["CNI_CONTAINERID"] == "c1"
    assert json.loads(body["stdin"]) == CONF and body["stateDir"] == "/tmp/st"
    assert body["netns"].startswith("net:[") and body["mntns"].startswith("mnt:[")


def test_shim_falls_back_in_process_when_declined_or_absent(tmp_path, monkeypatch):
    import pynet.cni.dispatch as dispatch
    calls = []
    monkeypatch.setattr(dispatch, "run", lambda p, env, stdin: calls.append(p) or ("local", 0))
    d = FakeDaemon(str(tmp_path / "d.sock"), status=421, answer={"Err": "not mine"})
    try:
        assert entry.handle("bridge", _env(d.path), json.dumps(CONF).encode()) == ("local", 0)
    finally:
        d.close()
    assert entry.handle("ipam", _env(str(tmp_path / "none.sock")), json.dumps(CONF).encode()) == ("local", 0)
    # a socket file nobody listens on
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(tmp_path / "dead.sock"))
    dead.close()
    assert entry.handle("bridge", _env(str(tmp_path / "dead.sock")), json.dumps(CONF).encode()) == ("local", 0)
    assert calls == ["bridge", "ipam", "bridge"]


def test_shim_does_not_repeat_a_request_the_daemon_failed(tmp_path, monkeypatch):
    import pynet.cni.dispatch as dispatch
    monkeypatch.setattr(dispatch, "run", lambda *a: pytest.fail("must not run in-process"))
    d = FakeDaemon(str(tmp_path / "d.sock"), status=500, answer={"Err": "boom"})
    try:
        out, code = entry.handle("bridge", _env(d.path), json.dumps(CONF).encode())
    finally:
        d.close()
    assert code == 1 and json.loads(out)["code"] == 11


def test_version_needs_nothing(tmp_path):
    out, code = entry.handle("bridge", {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "0.3.1"}')
    assert code == 0 and json.loads(out)["cniVersion"] == "0.3.1"


def test_install_writes_executable_wrappers(tmp_path):
    from pynet.cni.install import install, uninstall
    written = install(str(tmp_path / "bin"), str(tmp_path / "conf"), state_dir="/srv/pynet")
    names = sorted(os.path.basename(p) for p in written)
    assert {"pynet-bridge", "pynet-ipam", "pynet-macvlan"} <= set(names)
    w = (tmp_path / "bin" / "pynet-ipam").read_text()
    assert w.startswith("#!") and " -S\n" in w.splitlines()[0] + "\n" and "main('ipam')" in w
    assert os.access(tmp_path / "bin" / "pynet-ipam", os.X_OK)
    ex = json.loads((tmp_path / "conf" / "10-pynet-bridge.conflist.example").read_text())
    assert ex["plugins"][0]["pynet"]["stateDir"] == "/srv/pynet"
    assert len(uninstall(str(tmp_path / "bin"))) == len(__import__("pynet.cni").cni.PLUGINS)
