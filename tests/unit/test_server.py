"""The plugin socket (pynet.plugin_api.server) under misbehaving clients: the
real Flask app and waitress, in a subprocess, on a socket in a temp dir."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SERVE = """
import sys, types
from pynet.plugin_api.app import create_app
from pynet.plugin_api.server import serve
c = types.SimpleNamespace(store=None, firewall=None, drivers={})
serve(create_app(c), sys.argv[1])
"""


@pytest.fixture
def plugin_socket(tmp_path):
    path = str(tmp_path / "p.sock")
    proc = subprocess.Popen([sys.executable, "-c", SERVE, path], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):   # bounded: the server binds within a few seconds
            if os.path.exists(path) or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert os.path.exists(path), "server did not bind"
        yield path
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def activate(path: str) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # a generous bound, not a timed assertion: on the old settings the answer
    # came only when waitress's channel_timeout (120 s) closed the stalled ones
    s.settimeout(30)
    try:
        s.connect(path)
        s.sendall(b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\n"
                  b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
    finally:
        s.close()


def test_half_sent_requests_do_not_starve_activate(plugin_socket):
    stalled = []
    try:
        for _ in range(64):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stalled.append(s)
            s.connect(plugin_socket)
            s.sendall(b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 40\r\n\r\n{\"half")
        answer = activate(plugin_socket)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b'"Implements":["NetworkDriver","IpamDriver"]' in answer
    finally:
        for s in stalled:
            s.close()
