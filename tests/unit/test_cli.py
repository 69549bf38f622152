"""The ``pynet`` CLI against a state directory populated through a
Controller (SqliteStore, real IPAM, fake driver): tables, --json, errors,
and a real-socket run of ``python -m pynet daemon``."""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import uuid

import pytest

from tests.support.fakes import FakeDriver

from pynet import cli  # noqa: E402
from pynet.cnm.controller import Controller  # noqa: E402
from pynet.cnm.model import IPData, PortMapping  # noqa: E402
from pynet.root import open_state_dir  # noqa: E402
from pynet.store.sqlite import SqliteStore  # noqa: E402

N1, N2 = "4" * 64, "5" * 64
E1, E2 = "6" * 64, "7" * 64
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_controller(state_dir, driver=None):
    from pynet.ipam import Ipam

    store = open_state_dir(str(state_dir))
    return Controller(store, Ipam(store, host_routes=lambda: []),
                      {"bridge": driver or FakeDriver()})


@pytest.fixture
def state(tmp_path, monkeypatch):
    """n1 (named, two endpoints, one publishing ports), n2 (no name), one
    IPAM pool with a gateway and an address."""
    for var in ("PYNET_STATE_DIR", "PYNET_PLUGIN_NAME", "PYNET_SOCKET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cli, "_docker_network_names", lambda timeout=0: {N2: "from-docker"})
    monkeypatch.setattr(cli, "_docker_endpoint_ids", lambda c, timeout=0:
                        [E1] if c == "web" else [])
    c = make_controller(tmp_path)
    c.create_network(N1, [IPData("10.30.0.0/24", "10.30.0.1/24")], name="n1")
    c.create_network(N2, [IPData("10.31.0.0/24", "10.31.0.1/24")],
                     [IPData("fd00:31::/64", "fd00:31::1/64")])
    c.create_endpoint(N1, E1, address="10.30.0.2/24")
    c.create_endpoint(N1, E2, address="10.30.0.3/24", mac="02:00:00:00:00:03")
    c.join(N1, E1, "/var/run/docker/netns/abc")
    c.program_external_connectivity(N1, E1, ports=[PortMapping("tcp", 80, 18088),
                                                   PortMapping("udp", 81, 18094, host_ip="127.0.0.1")])
    pool_id, _, _ = c.request_pool("LocalDefault", "10.50.0.0/24")
    c.request_address(pool_id, "", {"RequestAddressType": "com.docker.network.gateway"})
    c.request_address(pool_id)
    c.store.close()
    return tmp_path


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_network_ls_table(state, capsys):
    rc, out, err = run(capsys, "--state-dir", str(state), "network", "ls")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "DRIVER", "SCOPE", "SUBNETS", "ENDPOINTS"]
    rows = {l.split()[0]: l.split() for l in lines[1:]}
    assert rows[N1[:12]] == [N1[:12], "n1", "bridge", "local", "10.30.0.0/24", "2"]
    assert rows[N2[:12]] == [N2[:12], "from-docker", "bridge", "local", "10.31.0.0/24,fd00:31::/64", "0"]
    # columns are aligned: every row starts its NAME at the same offset
    offsets = {l.index(l.split()[1]) for l in lines}
    assert len(offsets) == 1


def test_network_ls_json_and_flags_after_the_subcommand(state, capsys):
    rc, out, _ = run(capsys, "network", "ls", "--json", "--state-dir", str(state))
    assert rc == 0
    data = {n["id"]: n for n in json.loads(out)}
    assert data[N1]["name"] == "n1" and data[N1]["endpoints"] == 2
    assert data[N2]["subnets"] == ["10.31.0.0/24", "fd00:31::/64"]


def test_state_dir_from_environment(state, capsys, monkeypatch):
    monkeypatch.setenv("PYNET_STATE_DIR", str(state))
    rc, out, _ = run(capsys, "--json", "network", "ls")
    assert rc == 0 and len(json.loads(out)) == 2


def test_network_inspect(state, capsys):
    for ref in ("n1", N1[:6], N1):
        rc, out, err = run(capsys, "--state-dir", str(state), "network", "inspect", ref)
        assert rc == 0, err
        data = json.loads(out)
        assert data["id"] == N1 and data["ipv4"][0]["gateway"] == "10.30.0.1/24"
        assert sorted(e["id"] for e in data["endpoints"]) == [E1, E2]


def test_network_inspect_unknown_is_one_line_exit_1(state, capsys):
    rc, out, err = run(capsys, "--state-dir", str(state), "network", "inspect", "nope")
    assert rc == 1 and out == ""
    assert err == "pynet: error: network nope not found\n"


def test_endpoint_ls(state, capsys):
    rc, out, _ = run(capsys, "--state-dir", str(state), "endpoint", "ls")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ID", "NETWORK", "ADDRESS"]
    e1 = next(l for l in lines if l.startswith(E1[:12]))
    assert "10.30.0.2/24" in e1 and "/var/run/docker/netns/abc" in e1 and "80/tcp -> 0.0.0.0:18088" in e1
    rc, out, _ = run(capsys, "--state-dir", str(state), "--json", "endpoint", "ls", "--network", "n1")
    assert sorted(e["id"] for e in json.loads(out)) == [E1, E2]
    rc, out, _ = run(capsys, "--state-dir", str(state), "--json", "endpoint", "ls", "--network", N2[:5])
    assert json.loads(out) == []


def test_ipam_ls(state, capsys):
    rc, out, err = run(capsys, "--state-dir", str(state), "ipam", "ls")
    assert rc == 0, err
    header, row = out.splitlines()
    assert header.split() == ["POOL", "ID", "ADDRESS", "SPACE", "POOL", "SUB", "POOL", "V6",
                              "SIZE", "USED", "FREE"]
    assert "10.50.0.0/24" in row and row.split()[-3:] == ["254", "2", "252"]
    rc, out, _ = run(capsys, "--state-dir", str(state), "--json", "ipam", "ls")
    [pool] = json.loads(out)
    assert (pool["pool"], pool["used"], pool["free"]) == ("10.50.0.0/24", 2, 252)


def test_port(state, capsys):
    rc, out, _ = run(capsys, "--state-dir", str(state), "port", E1[:8])
    assert rc == 0
    assert out.splitlines() == ["80/tcp -> 0.0.0.0:18088", "81/udp -> 127.0.0.1:18094"]
    # a docker container name resolves to its endpoint IDs
    rc, out2, _ = run(capsys, "--state-dir", str(state), "port", "web")
    assert out2 == out
    rc, out, err = run(capsys, "--state-dir", str(state), "port", "nothing-here")
    assert rc == 1 and err.startswith("pynet: error: ") and err.count("\n") == 1
    rc, out, _ = run(capsys, "--state-dir", str(state), "port", E2[:8])
    assert rc == 0 and out == ""


def test_network_rm_goes_through_the_controller(state, capsys, monkeypatch):
    driver = FakeDriver()
    driver.restore([], [])
    import pynet.root

    def fake_build(config, store=None):
        from pynet.ipam import Ipam

        assert config.state_dir == str(state)
        return Controller(store, Ipam(store, host_routes=lambda: []), {"bridge": driver})
    monkeypatch.setattr(pynet.root, "build_controller", fake_build)
    rc, out, err = run(capsys, "--state-dir", str(state), "network", "rm", "n1")
    assert rc == 1 and "active endpoints" in err
    rc, out, err = run(capsys, "--state-dir", str(state), "network", "rm", N2[:10])
    assert (rc, out) == (0, N2 + "\n")
    assert ("DeleteNetwork", N2) in driver.calls
    rc, out, err = run(capsys, "--state-dir", str(state), "network", "rm", "--force", "n1")
    assert rc == 0
    rc, out, _ = run(capsys, "--state-dir", str(state), "--json", "network", "ls")
    assert json.loads(out) == []
    rc, out, _ = run(capsys, "--state-dir", str(state), "--json", "endpoint", "ls")
    assert json.loads(out) == []


def test_usage_errors_are_one_line_exit_1(capsys, tmp_path):
    rc, out, err = run(capsys, "network")
    assert rc == 1 and err.startswith("pynet: error: ") and err.count("\n") == 1
    rc, out, err = run(capsys, "frobnicate")
    assert rc == 1 and "invalid choice" in err
    rc, out, err = run(capsys, "--state-dir", str(tmp_path / "missing"), "network", "ls")
    assert rc == 1 and "does not exist" in err


def test_importing_the_cli_stays_light():
    code = ("import sys, pynet.cli; "
            "heavy = [m for m in ('flask', 'waitress', 'pyroute2', 'werkzeug', 'sqlite3') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------- real socket
def _post(path, method, body=b"", timeout=5.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    s.sendall(f"POST /{method} HTTP/1.1\r\nHost: plugin\r\n"
              f"Accept: application/vnd.docker.plugins.v1.2+json\r\n"
              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    headers = dict(l.split(": ", 1) for l in head.decode().split("\r\n")[1:])
    return status, headers, json.loads(payload)


def _tcp_listeners(pid: int) -> list[str]:
    try:
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("ss not available")
    return [l for l in out.splitlines() if f"pid={pid}," in l]


@pytest.mark.timeout(60)
def test_daemon_serves_on_a_0600_unix_socket_only(tmp_path):
    pytest.importorskip("pynet.drivers.bridge")
    name = "pt" + uuid.uuid4().hex[:8]
    sock = tmp_path / "run" / "x.sock"
    env = dict(os.environ, PYTHONPATH=ROOT)
    for var in ("PYNET_STATE_DIR", "PYNET_PLUGIN_NAME", "PYNET_SOCKET"):
        env.pop(var, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pynet", "daemon", "--state-dir", str(tmp_path / "state"),
         "--plugin-name", name, "--socket", str(sock)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120  # a bound, not a timing: start-up under a loaded CPU took >30 s once
        while not sock.exists():
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                out, err = proc.communicate()
                pytest.fail(f"daemon did not start (rc={proc.returncode}): {err[-2000:]}")
            time.sleep(0.05)
        st = os.stat(sock)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        status, headers, body = _post(str(sock), "Plugin.Activate")
        assert status == 200 and body == {"Implements": ["NetworkDriver", "IpamDriver"]}
        assert headers["Content-Type"] == "application/vnd.docker.plugins.v1+json"
        status, _, body = _post(str(sock), "NetworkDriver.GetCapabilities")
        assert body == {"Scope": "local", "ConnectivityScope": "local"}
        status, _, body = _post(str(sock), "IpamDriver.GetCapabilities")
        assert status == 200 and body["RequiresRequestReplay"] is False
        status, _, body = _post(str(sock), "NetworkDriver.CreateNetwork", b"{oops")
        assert status == 400 and "malformed JSON" in body["Err"]
        assert _tcp_listeners(proc.pid) == []
        # a second daemon on the same socket refuses to steal it
        second = subprocess.run(
            [sys.executable, "-m", "pynet", "daemon", "--state-dir", str(tmp_path / "state2"),
             "--plugin-name", name, "--socket", str(sock)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert second.stderr.splitlines()[-1].startswith("pynet: error: another process is serving")
        assert "Traceback" not in second.stderr
        assert sock.exists()
    finally:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert not sock.exists(), "socket removed on SIGTERM"
    assert "serving on unix:" in err


@pytest.mark.parametrize("flag,value", [
    ("--plugin-name", "a:b"), ("--plugin-name", "x\ny"), ("--chain-prefix", "P Y"),
    ("--chain-prefix", "PYNETPYNETPYNET"), ("--state-dir", "/tmp/a\x01b")])
def test_bad_settings_are_one_readable_line(flag, value, capsys):
    """Flags reach link aliases, chain names and paths: refused at the door."""
    assert cli.main(["network", "ls", flag, value]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("pynet: error: invalid") and "\n" not in err
