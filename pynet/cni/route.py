"""``POST /Pynet.CNI``: the daemon side of the CNI shim (``pynet.cni.shim``).

    in:  {"plugin": "bridge" | "macvlan" | "ipam", "env": {"CNI_COMMAND": ..., ...},
          "stdin": "<network configuration>", "stateDir": "/var/lib/pynet",
          "netns": "net:[...]", "mntns": "mnt:[...]"}
    out: 200 {"stdout": "<the plugin's stdout>", "code": <exit code>}
         400 {"Err": "..."}  -- not such an envelope (not JSON, too deep, fields of other types)
         421 {"Err": "..."}  -- not this daemon's request: another state directory, or a
                               caller in another network or mount namespace (the
                               kernel work would land in the wrong place); the shim
                               then works in-process

The request runs ``pynet.cni.dispatch.run`` with the daemon's own Controller,
so CNI and Docker share one store, one IPAM and one firewall layout, and the
binary skips every import but the shim's.

Loaded only by the daemon (``pynet.daemon`` hands ``register_cni`` to the
Docker app): Flask never reaches the CNI ADD path, and ``pynet.plugin_api``
never imports CNI.
"""
from __future__ import annotations

import json
import logging
import os
import time

from flask import Response, request

from pynet import jsonsafe

log = logging.getLogger("pynet.plugin_api.cni")  # the name the daemon's log always had

ROUTE = "/Pynet.CNI"


def _reply(body, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


def _done(plugin: str, env: dict, stdin: str, seconds: float, code: int, error, result: str,
          observer, known=frozenset()) -> None:
    """One line per request, its IDs (container, network, interface) and outcome; then the
    observer's count.  IDs are the caller's text (control characters, surrogates): anything but
    printable ASCII is logged escaped (``logfmt.printable``), so the line stays one ASCII line, and
    a failure to log or count is not the request's failure."""
    command = env.get("CNI_COMMAND") if isinstance(env, dict) else None
    try:
        from pynet import logfmt

        ids = {"plugin": plugin, "container_id": env.get("CNI_CONTAINERID"), "network": _network_name(stdin),
               "ifname": env.get("CNI_IFNAME"), "netns": _basename(env.get("CNI_NETNS"))} \
            if isinstance(env, dict) else {}
        if result:
            outcome = result                    # the route refused the request
        elif code == 0:
            outcome = "ok"
        elif error is not None and not isinstance(getattr(error, "code", None), int):
            outcome = type(error).__name__      # a typed error of the core
        else:
            outcome = f"code {getattr(error, 'code', code)}"   # CNI's own: the code says it
        logfmt.event(log, logging.INFO, f"CNI {logfmt.printable(command or '-', 16)}", ids, error, seconds,
                     result=outcome)
    except Exception:  # noqa: BLE001
        pass
    if observer is not None:
        try:
            observer.cni_request(plugin if plugin in known else "unknown", command, seconds, code,
                                 error=error, result=result)
        except Exception:  # noqa: BLE001
            log.debug("observer failed", exc_info=True)


def _basename(path) -> str:
    """The namespace's name (``cni-1a2b...`` of ``/var/run/netns/cni-1a2b...``), the pod's ID a
    runtime prints."""
    return path.rstrip("/").rsplit("/", 1)[-1] if isinstance(path, str) else ""


def _network_name(stdin: str) -> str:
    """The configuration's ``name`` (the CNI network), when it is one JSON object with one."""
    try:
        conf = json.loads(stdin)
    except (ValueError, RecursionError):
        return ""
    name = conf.get("name") if isinstance(conf, dict) else None
    return name if isinstance(name, str) else ""


def register_cni(app, controller, state_dir: str = "", observer=None) -> None:
    """Add the CNI route to the daemon's Flask app; firewall syncs of the
    daemon are serialised with those of CNI binaries working in-process.
    ``state_dir``: the one the daemon serves (the daemon hands it in, from its
    settings: the front end never looks into the store); requests for another
    are refused (421), and without one every request is.
    ``observer``: told of every request (``declare_cni(plugins)`` once,
    ``cni_request(plugin, command, seconds, code, error=, result=)`` each) --
    the daemon's metrics; this module never imports them."""
    from pynet.cni.dispatch import DRIVER_OF
    from pynet.cni.shim import namespace_ids
    from pynet.firewall.serial import SerialFirewall

    known = frozenset({*DRIVER_OF, "ipam"})  # the plugin label's values: never the caller's text
    if observer is not None:
        observer.declare_cni(sorted(known))

    state_dir = os.path.abspath(state_dir) if state_dir else ""
    own_ns = namespace_ids()
    bridge = (getattr(controller, "drivers", None) or {}).get("bridge")
    instance = getattr(bridge, "instance", "") or ""
    # the root's controllers come serialised; one built by hand (tests) is wrapped here
    if state_dir and controller.firewall is not None and not isinstance(controller.firewall, SerialFirewall):
        controller.firewall = SerialFirewall(controller.firewall, os.path.join(state_dir, "firewall.lock"),
                                             lambda: (controller.networks(), controller.endpoints()))

    def cni():
        t0 = time.monotonic()
        env, stdin, plugin = {}, "", "unknown"
        try:
            # the envelope's strings may hold surrogate escapes: the shim
            # carries stdin and the environment's raw bytes that way
            body = jsonsafe.loads(request.get_data(cache=False) or b"{}", surrogates=True)
            env, stdin, plugin = body["env"], body.get("stdin") or "", body["plugin"]
            fields = (stdin, plugin, body.get("stateDir") or "", body.get("netns") or "",
                      body.get("mntns") or "")
            if not isinstance(env, dict) or not all(isinstance(f, str) for f in fields):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            _done("unknown", {}, "", time.monotonic() - t0, 400, None, "InvalidRequest", observer, known)
            return _reply({"Err": "expected {plugin, env, stdin, stateDir, netns, mntns}: "
                                  "an object of strings, env an object"}, 400)
        if not state_dir or os.path.abspath(body.get("stateDir") or "") != state_dir:
            _done(plugin, env, stdin, time.monotonic() - t0, 421, None, "Misdirected", observer, known)
            return _reply({"Err": f"this daemon serves state dir {state_dir!r}"}, 421)
        if (body.get("netns"), body.get("mntns")) != own_ns:
            _done(plugin, env, stdin, time.monotonic() - t0, 421, None, "Misdirected", observer, known)
            return _reply({"Err": "caller is in another network or mount namespace"}, 421)
        from pynet.cni.dispatch import run

        try:
            raw_stdin = stdin.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            # a surrogate no byte maps to: the bytes it stands for are invalid
            # UTF-8 either way, and run() answers them as it would on a pipe
            raw_stdin = stdin.encode("utf-8", "surrogatepass")
        # env values of other types than str are run()'s to refuse (code 4), as
        # an unusable environment of the binary would be
        failure: list = []
        out, code = run(plugin, dict(env), raw_stdin, controller=controller, instance=instance,
                        on_error=failure.append)
        # the verb is done (an ADD's interface exists): nothing after this line
        # may turn its answer into an error
        _done(plugin, env, stdin, time.monotonic() - t0, code, failure[0] if failure else None, "", observer, known)
        return _reply({"stdout": out, "code": code})

    cni.__doc__ = __doc__
    app.add_url_rule(ROUTE, endpoint="Pynet.CNI", view_func=cni, methods=["POST"])
