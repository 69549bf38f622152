"""The CNI shim: the client side of the daemon's ``POST /Pynet.CNI`` --
standard library only, and no import of pynet (a leaf: a test parses its
imports against ``sys.stdlib_module_names``).

Every pynet CNI binary runs ``pynet.cni.main.main(plugin)``, which

1. reads the CNI_* environment and stdin; VERSION is answered at once;
2. otherwise hands the request to the running pynet daemon with
   ``via_daemon`` (here) and prints its answer;
3. when no daemon answers -- no socket, nobody listening, or a daemon that
   declines because it serves another state directory or lives in another
   network / mount namespace (``Declined``) -- does the work in that process
   (``pynet.cni.dispatch.run``), so the binaries stay standalone.

Shim <-> daemon protocol (HTTP/1.1 over the unix socket, one request per
connection)::

    POST /Pynet.CNI
    {"plugin": "bridge", "env": {"CNI_COMMAND": ..., ...}, "stdin": "<the config>",
     "stateDir": "/var/lib/pynet", "netns": "net:[4026531840]", "mntns": "mnt:[4026531841]"}
    200 {"stdout": "<what the plugin prints>", "code": <exit code>}
    421 {"Err": "..."}   the daemon declines (other state dir / namespace): work in-process

Where the daemon is (``settings["socket"]``, ``["state_dir"]``,
``["daemon"]``): ``pynet.cni.settings.pynet_settings``.
"""
from __future__ import annotations

import json
import os
import socket

ROUTE = "/Pynet.CNI"
CONNECT_TIMEOUT = 1.0
REPLY_TIMEOUT = 300.0


class Declined(Exception):
    """No daemon will do this request: work in-process."""


def namespace_ids() -> tuple[str, str]:
    try:
        return os.readlink("/proc/self/ns/net"), os.readlink("/proc/self/ns/mnt")
    except OSError:
        return "", ""


def _http_post(path: str, route: str, body: bytes, timeout: float) -> tuple[int, bytes]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(CONNECT_TIMEOUT)
        try:
            s.connect(path)
        except OSError as e:
            raise Declined(f"no daemon on {path}: {e}") from None
        s.settimeout(timeout)
        head = (f"POST {route} HTTP/1.1\r\nHost: pynet\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        s.sendall(head + body)
        raw = _read_answer(s)
    finally:
        s.close()
    header, _, payload = raw.partition(b"\r\n\r\n")
    lines = header.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise ConnectionError("malformed answer from the pynet daemon") from None
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        payload = _dechunk(payload)
    elif b"content-length" in headers:
        payload = payload[:int(headers[b"content-length"])]
    return status, payload


def _read_answer(s: socket.socket) -> bytes:
    """Read until the answer is complete (its Content-Length, or the end of a
    chunked body), not until the peer closes: a process that inherited the
    connection (a forked helper) must not keep the runtime waiting."""
    raw = b""
    while True:
        data = s.recv(65536)
        if not data:
            return raw
        raw += data
        header, sep, payload = raw.partition(b"\r\n\r\n")
        if not sep:
            continue
        lower = header.lower()
        if b"\r\ncontent-length:" in lower:
            n = int(lower.split(b"\r\ncontent-length:", 1)[1].split(b"\r\n", 1)[0])
            if len(payload) >= n:
                return raw
        elif b"chunked" in lower and payload.endswith(b"0\r\n\r\n"):
            return raw


def _dechunk(data: bytes) -> bytes:
    out, i = [], 0
    while i < len(data):
        j = data.index(b"\r\n", i)
        n = int(data[i:j].split(b";")[0], 16)
        if n == 0:
            break
        out.append(data[j + 2:j + 2 + n])
        i = j + 2 + n + 2
    return b"".join(out)


def via_daemon(plugin: str, env: dict, stdin: bytes, settings: dict) -> tuple[str, int]:
    """(stdout, exit code) from the daemon; Declined when it will not serve."""
    if not settings["daemon"]:
        raise Declined("daemon disabled")
    if not os.path.exists(settings["socket"]):
        raise Declined(f"no socket {settings['socket']}")
    net, mnt = namespace_ids()
    body = json.dumps({
        "plugin": plugin, "env": env, "stdin": stdin.decode("utf-8", "surrogateescape"),
        "stateDir": os.path.abspath(settings["state_dir"]), "netns": net, "mntns": mnt,
    }).encode()
    status, payload = _http_post(settings["socket"], ROUTE, body, REPLY_TIMEOUT)
    if status in (404, 405, 421):  # an older daemon without the route, or not ours
        raise Declined(f"daemon declined ({status})")
    try:
        answer = json.loads(payload or b"{}")
    except ValueError:
        answer = {}
    if status != 200 or "code" not in answer:
        raise ConnectionError(f"the pynet daemon answered {status}: {answer.get('Err') or payload[:200]!r}")
    return answer.get("stdout") or "", int(answer["code"])


def cni_env(environ=None) -> dict:
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith("CNI_") or k.startswith("PYNET_")}
