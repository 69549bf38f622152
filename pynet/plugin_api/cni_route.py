"""``POST /Pynet.CNI``: the daemon side of the CNI shim (``pynet.cni.shim``).

    in:  {"plugin": "bridge" | "macvlan" | "ipam", "env": {"CNI_COMMAND": ..., ...},
          "stdin": "<network configuration>", "stateDir": "/var/lib/pynet",
          "netns": "net:[...]", "mntns": "mnt:[...]"}
    out: 200 {"stdout": "<the plugin's stdout>", "code": <exit code>}
         421 {"Err": "..."}  -- not this daemon's request: another state directory, or a
                               caller in another network or mount namespace (the
                               kernel work would land in the wrong place); the shim
                               then works in-process

The request runs ``pynet.cni.plugin.run`` with the daemon's own Controller,
so CNI and Docker share one store, one IPAM and one firewall layout, and the
binary skips every import but the shim's.
"""
from __future__ import annotations

import json
import logging
import os

from flask import Response, request

log = logging.getLogger("pynet.plugin_api.cni")

ROUTE = "/Pynet.CNI"


def _reply(body, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


def register_cni(app, controller) -> None:
    """Add the CNI route to the daemon's Flask app; firewall syncs of the
    daemon are serialised with those of CNI binaries working in-process."""
    from pynet.cni.plugin import SerialFirewall
    from pynet.cni.shim import namespace_ids

    store_path = getattr(controller.store, "path", "") or ""
    state_dir = os.path.dirname(os.path.abspath(store_path)) if store_path else ""
    own_ns = namespace_ids()
    bridge = (getattr(controller, "drivers", None) or {}).get("bridge")
    instance = getattr(bridge, "instance", "") or ""
    if state_dir and controller.firewall is not None and not isinstance(controller.firewall, SerialFirewall):
        controller.firewall = SerialFirewall(controller.firewall, os.path.join(state_dir, "firewall.lock"),
                                             lambda: (controller.networks(), controller.endpoints()))

    def cni():
        try:
            body = json.loads(request.get_data(cache=False) or b"{}")
            env = body["env"]
            stdin = body.get("stdin") or ""
            plugin = body["plugin"]
            if not isinstance(env, dict) or not isinstance(stdin, str) or not isinstance(plugin, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _reply({"Err": "expected {plugin, env, stdin, stateDir, netns, mntns}"}, 400)
        if not state_dir or os.path.abspath(body.get("stateDir") or "") != state_dir:
            return _reply({"Err": f"this daemon serves state dir {state_dir!r}"}, 421)
        if (body.get("netns"), body.get("mntns")) != own_ns:
            return _reply({"Err": "caller is in another network or mount namespace"}, 421)
        from pynet.cni.plugin import run
        out, code = run(plugin, {str(k): str(v) for k, v in env.items()},
                        stdin.encode("utf-8", "surrogateescape"), controller=controller,
                        instance=instance)
        log.info("CNI %s %s %s -> %d", plugin, env.get("CNI_COMMAND"), env.get("CNI_CONTAINERID", "")[:12], code)
        return _reply({"stdout": out, "code": code})

    cni.__doc__ = __doc__
    app.add_url_rule(ROUTE, endpoint="Pynet.CNI", view_func=cni, methods=["POST"])
