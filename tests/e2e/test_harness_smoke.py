"""Smoke tests of the e2e harness itself: what exists without the pynet daemon.

The real-daemon path (``pynet_daemon`` fixtures with ``pynet daemon``) is exercised by the e2e
tests that use it (marked ``pynet_daemon``); here the same process machinery runs a stub plugin.
"""
from __future__ import annotations

import http.server
import json
import re
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

from tests.support import harness


def test_prefix_shape_and_lock(prefix):
    assert re.fullmatch(r"pt[0-9a-f]{4}", prefix)
    assert len(f"{prefix}-br-12345".encode()) <= 15
    assert harness.prefix_alive(prefix), "the run must hold its prefix lock"
    assert harness.stale_prefixes([f"{prefix}-x"]) == set()  # a live run is never stale


def test_dockerd_up(docker):
    assert docker.binary == "/usr/bin/docker"
    info = json.loads(docker.run("info", "--format", "{{json .}}").stdout)
    assert info["ServerVersion"].startswith("20.10"), info["ServerVersion"]


def test_image_runs(docker, test_image, prefix):
    name = f"{prefix}-smoke"
    out = docker.run("run", "--rm", "--network", "none", "--name", name, test_image, "ip", "addr").stdout
    assert re.search(r"^\d+: lo: ", out, re.M), out
    for applet in ("sh", "ping", "nc", "httpd", "wget", "nslookup", "hostname", "ifconfig", "route"):
        docker.run("run", "--rm", "--network", "none", test_image, "sh", "-c", f"command -v {applet}")
    assert docker.inspect(test_image, "image")["RepoTags"] == ["pynet-test:latest"]


class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status = 404 if self.path == "/Missing" else 200
        out = json.dumps({"path": self.path, "accept": self.headers.get("Accept"),
                          "body": body.decode(), "Err": "nope" if status != 200 else ""}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def address_string(self):
        return "unix"

    def log_message(self, *a):
        pass


def test_unix_http_connection(tmp_path):
    sock = tmp_path / "echo.sock"
    server = socketserver.ThreadingUnixStreamServer(str(sock), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        status, body = harness.post(sock, "NetworkDriver.CreateNetwork", {"NetworkID": "abc"})
        assert status == 200
        assert body["path"] == "/NetworkDriver.CreateNetwork"
        assert body["accept"] == "application/vnd.docker.plugins.v1.2+json"
        assert json.loads(body["body"]) == {"NetworkID": "abc"}
        assert harness.post(sock, "/Plugin.Activate")[1]["body"] == ""          # empty body, like dockerd
        assert harness.post(sock, "X", '{"raw": 1}')[1]["body"] == '{"raw": 1}'  # raw JSON passes as is
        status, body = harness.post(sock, "Missing", {})
        assert (status, body["Err"]) == (404, "nope")
        conn = harness.UnixHTTPConnection(sock, timeout=5)
        conn.request("POST", "/Y", body=b"{}")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        server.shutdown()
        server.server_close()


def _stub_argv(name, sock, state_dir):
    return [sys.executable, harness.__file__, "stub-plugin", str(sock)]


def test_daemon_machinery_with_stub_plugin(pynet_daemon_factory, docker, test_image, prefix):
    """Start / post / kill / restart / teardown of harness.PynetDaemon, and docker using the
    plugin by name, with the stub plugin in place of `pynet daemon`."""
    d = pynet_daemon_factory(suffix="stub", command=_stub_argv)
    assert d.name == f"{prefix}-stub" and d.running
    assert d.socket == Path(f"/run/docker/plugins/{prefix}-stub.sock") and d.socket.exists()
    assert d.state_dir.is_dir()
    assert d.post("Plugin.Activate") == (200, {"Implements": ["NetworkDriver", "IpamDriver"]})

    net = f"{prefix}-stubnet"
    docker.run("network", "create", "-d", d.name, net)
    assert docker.inspect(net, "network")["Driver"] == d.name

    d.kill()
    assert not d.running and d.socket.exists()   # a crash leaves the socket behind
    d.start(remove_stale_socket=True)
    assert d.running and d.post("Plugin.Activate")[0] == 200
    assert d.stop() is not None and not d.running
    # teardown finds the network, restarts the daemon to let dockerd remove it, then cleans up


def test_teardown_removed_previous_daemon_objects(docker, prefix):
    # Runs after the test above (file order): its network and socket must be gone.
    assert f"{prefix}-stubnet" not in docker.network_names()
    assert not Path(f"/run/docker/plugins/{prefix}-stub.sock").exists()


def test_stale_cleanup_removes_dead_runs_only(docker, prefix):
    """Leftovers of a crashed run (no lock held) go; a live run's (lock held) stay."""
    dead_lock = harness.RunLock.acquire_new()
    live_lock = harness.RunLock.acquire_new()
    dead, live = dead_lock.prefix, live_lock.prefix
    dead_lock.release()  # as if that run had crashed
    try:
        for p in (dead, live):
            docker.run("network", "create", "--internal", f"{p}-net")
            subprocess.run(["ip", "link", "add", f"{p}-d0", "type", "bridge"], check=True)
            subprocess.run(["ip", "netns", "add", f"{p}-ns"], check=True)
        removed = harness.cleanup_stale_host(current=prefix) + harness.cleanup_stale_docker(docker, prefix)
        assert f"{dead}-net" in removed and f"{dead}-d0" in removed and f"{dead}-ns" in removed
        assert f"{dead}-net" not in docker.network_names()
        assert f"{live}-net" in docker.network_names()
        assert f"{live}-d0" in harness.list_links() and f"{live}-ns" in harness.list_netns()
    finally:
        harness.cleanup_docker(docker, [dead, live])
        harness.cleanup_links([dead, live])
        harness.cleanup_netns([dead, live])
        live_lock.release()
    assert not any(n.startswith((dead, live)) for n in harness.list_links() + harness.list_netns())
