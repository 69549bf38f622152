"""The entry point every pynet CNI binary runs -- standard library only.

    pynet-bridge / pynet-macvlan / pynet-ipam  ->  main("bridge" | "macvlan" | "ipam")

1. read the CNI_* environment and stdin;
2. VERSION is answered here, at once;
3. otherwise hand the request to the running pynet daemon over its unix
   socket (``POST /Pynet.CNI``, below) and print its answer;
4. when no daemon answers -- no socket, nobody listening, or a daemon that
   declines because it serves another state directory or lives in another
   network / mount namespace -- do the work in this process
   (``pynet.cni.plugin.run``), so the binaries stay standalone.

Shim <-> daemon protocol (HTTP/1.1 over the unix socket, one request per
connection)::

    POST /Pynet.CNI
    {"plugin": "bridge", "env": {"CNI_COMMAND": ..., ...}, "stdin": "<the config>",
     "stateDir": "/var/lib/pynet", "netns": "net:[4026531840]", "mntns": "mnt:[4026531841]"}
    200 {"stdout": "<what the plugin prints>", "code": <exit code>}
    421 {"Err": "..."}   the daemon declines (other state dir / namespace): work in-process

Where things are (the conflist's ``pynet`` object wins, then the environment,
then the defaults shared with the daemon)::

    "pynet": {"stateDir": ..., "socket": ..., "chainPrefix": ..., "instance": ..., "daemon": true}
    PYNET_STATE_DIR  PYNET_SOCKET  PYNET_CHAIN_PREFIX  PYNET_PLUGIN_NAME  PYNET_CNI_DAEMON=0
    /var/lib/pynet   /run/docker/plugins/<instance>.sock
"""
from __future__ import annotations

import json
import os
import socket
import sys

DEFAULT_STATE_DIR = "/var/lib/pynet"
ROUTE = "/Pynet.CNI"
CONNECT_TIMEOUT = 1.0
REPLY_TIMEOUT = 300.0


class Declined(Exception):
    """No daemon will do this request: work in-process."""


def pynet_settings(conf: dict, env: dict) -> dict:
    """State dir, socket, chain prefix, instance and whether to use the daemon,
    from the conflist's ``pynet`` object (top level or inside ``ipam``), the
    environment, then the defaults.

    Each value is checked here, at the door (``pynet.validate``), by content
    and not only by type: the chain prefix names iptables chains and tags
    every rule, the instance is part of every link alias, the socket's name
    and the IPAM holders, and the paths reach every os call (a NUL in one
    raises ValueError there).  A bad conflist value is code 7, a bad
    PYNET_* variable code 4."""
    from pynet import errors, validate
    from pynet.cni import spec

    own = {}
    if isinstance(conf, dict):
        ipam = conf.get("ipam") if isinstance(conf.get("ipam"), dict) else {}
        for src in (ipam.get("pynet"), conf.get("pynet")):
            if src is not None and not isinstance(src, dict):
                raise spec.CniError(spec.INVALID_CONFIG, "the pynet section must be an object")
            if isinstance(src, dict):
                own.update(src)
    if not isinstance(own.get("daemon", True), bool):
        raise spec.CniError(spec.INVALID_CONFIG, "pynet.daemon must be true or false")
    checks = {"stateDir": (validate.abs_path, "PYNET_STATE_DIR"),
              "socket": (validate.abs_path, "PYNET_SOCKET"),
              "chainPrefix": (validate.chain_prefix, "PYNET_CHAIN_PREFIX"),
              "instance": (validate.instance_name, "PYNET_PLUGIN_NAME")}
    got = {}
    for key, (check, var) in checks.items():
        value, code, what = own.get(key), spec.INVALID_CONFIG, f"pynet.{key}"
        if value is None or value == "":
            value, code, what = env.get(var), spec.INVALID_ENVIRONMENT, var
        if value is None or value == "":
            continue
        try:
            got[key] = check(value, what)
        except errors.InvalidParameter as e:
            raise spec.CniError(code, str(e)) from None
    instance = got.get("instance") or "pynet"
    daemon = own.get("daemon", True)
    if str(env.get("PYNET_CNI_DAEMON", "1")).lower() in ("0", "false", "no", "off"):
        daemon = False
    return {
        "state_dir": got.get("stateDir") or DEFAULT_STATE_DIR,
        "socket": got.get("socket") or f"/run/docker/plugins/{instance}.sock",
        "chain_prefix": got.get("chainPrefix"),
        "instance": instance,
        "daemon": bool(daemon),
    }


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


def handle(plugin: str, env: dict, stdin: bytes) -> tuple[str, int]:
    from pynet.cni import spec

    try:
        command = env.get("CNI_COMMAND", "")
        if command == "VERSION":
            return spec.dumps(spec.version_result(stdin)), 0
        try:
            conf = json.loads(stdin or b"{}")
        except (ValueError, RecursionError):
            conf = {}   # run() answers it in CNI terms (code 6)
        try:
            settings = pynet_settings(conf, env)
        except spec.CniError as e:
            version = conf.get("cniVersion") if isinstance(conf, dict) else None
            return spec.dumps(spec.error_result(e.code, e.msg, version if isinstance(version, str) else None)), 1
        try:
            return via_daemon(plugin, env, stdin, settings)
        except Declined:
            pass
        except (OSError, ConnectionError) as e:
            # the daemon died mid-request or answered nonsense: the request may
            # be half done there, so do not repeat it here -- the runtime retries
            version = conf.get("cniVersion") if isinstance(conf, dict) else None
            return spec.dumps(spec.error_result(spec.TRY_AGAIN_LATER, f"pynet daemon: {e}",
                                                version if isinstance(version, str) else None)), 1
    except Exception as e:  # noqa: BLE001 -- the shim must always answer in CNI terms
        return spec.dumps(spec.error_result(spec.INTERNAL, f"pynet shim: {type(e).__name__}: {e}")), 1
    from pynet.cni.plugin import run

    return run(plugin, env, stdin)


def main(plugin: str) -> None:
    stdin = b""
    try:
        if not sys.stdin.isatty():
            stdin = sys.stdin.buffer.read()
    except (OSError, ValueError):
        pass
    out, code = handle(plugin, cni_env(), stdin)
    if out:
        sys.stdout.write(out)
        sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":  # python -m pynet.cni.shim <plugin>
    main(sys.argv[1] if len(sys.argv) > 1 else "bridge")
