"""What Docker holds, read from dockerd's API, for reconciliation at start.

pynet answers every IPAM and driver call after writing it to its store, but a
caller may never receive the answer (pynet killed in between) or Docker may
remove a network while pynet is down.  Docker is the authority on what it
holds, so at start -- before the socket is served, when no call is in flight
-- the daemon asks dockerd and hands the controller plain sets: which pynet
networks and endpoints still exist and which pools and addresses are held.
Nothing is released by guessing: if dockerd does not answer, nothing happens.

Only the Docker front end knows Docker's wire names, so they stay here.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import socket
from typing import Optional

from pynet import errors, validate

log = logging.getLogger("pynet.docker_state")

DOCKER_SOCKET = "/var/run/docker.sock"


def docker_socket() -> str:
    """dockerd's socket: ``DOCKER_HOST=unix:///path`` as the docker CLI reads it, else the
    default.  A daemon serving a dockerd with its own socket (a second engine on the host, or
    in a network namespace of its own) must reconcile with that engine, never with another
    one that holds none of its networks (it would forget them all)."""
    host = os.environ.get("DOCKER_HOST", "")
    return host[len("unix://"):] if host.startswith("unix://") and len(host) > len("unix://") else DOCKER_SOCKET


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def _get(path: str, sock: str, timeout: float):
    conn = _UnixConnection(sock, timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise OSError(f"dockerd answered {r.status} to GET {path}")
        return json.loads(body)
    finally:
        conn.close()


def _bare(addr: str) -> str:
    return addr.split("/")[0] if addr else ""


def is_plugin_ref(driver, plugin_name: str) -> bool:
    """Is ``driver`` (a network's Driver or IPAM Driver as dockerd reports it) this plugin?

    A socket plugin is its bare name; a managed plugin is whatever reference it was created or
    installed under: ``pynet:latest``, ``pynet:0.2``, ``registry:5000/org/pynet:0.2``.  Any tag
    and any repository path whose last part is the instance name count: a network missed here
    would be deleted as "no longer held by Docker" on the next start (every ``docker plugin
    enable`` or upgrade), while one matched too many is only an id pynet does not have."""
    if not isinstance(driver, str) or not driver:
        return False
    last = driver.rsplit("/", 1)[-1]
    return last.split(":", 1)[0].split("@", 1)[0] == plugin_name


def docker_holdings(plugin_name: str, sock: Optional[str] = None, timeout: float = 5.0) -> Optional[dict]:
    """{"networks": {network id: set(endpoint ids)} for networks driven by the
    plugin, "pools": [(pool, sub_pool, set(bare addresses))] for networks whose
    IPAM is the plugin}; None when dockerd does not answer."""
    sock = sock or docker_socket()
    try:
        nets = _get("/networks", sock, timeout)
    except (OSError, ValueError, http.client.HTTPException) as e:
        log.info("dockerd not reachable (%s): no reconciliation with Docker", e)
        return None
    held_nets: dict[str, set[str]] = {}
    pools: list[tuple[str, str, set[str]]] = []
    for summary in nets:
        ours_driver = is_plugin_ref(summary.get("Driver"), plugin_name)
        ours_ipam = is_plugin_ref((summary.get("IPAM") or {}).get("Driver"), plugin_name)
        if not (ours_driver or ours_ipam):
            continue
        try:
            net = _get(f"/networks/{summary['Id']}", sock, timeout)
        except (OSError, ValueError, http.client.HTTPException) as e:
            log.warning("cannot inspect network %s (%s): no reconciliation with Docker", summary.get("Id"), e)
            return None
        containers = (net.get("Containers") or {}).values()
        if ours_driver:
            held_nets[net["Id"]] = {c.get("EndpointID", "") for c in containers}
        if ours_ipam:
            in_use = {_bare(c.get(k, "")) for c in containers for k in ("IPv4Address", "IPv6Address")}
            for cfg in (net.get("IPAM") or {}).get("Config") or []:
                held = set(in_use)
                held.add(_bare(cfg.get("Gateway", "")))
                held.update(_bare(a) for a in (cfg.get("AuxiliaryAddresses") or {}).values())
                held.discard("")
                pools.append((cfg.get("Subnet", ""), cfg.get("IPRange", "") or "", held))
    return {"networks": held_nets, "pools": pools}


BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
_COVERED = ("docker0", "br-")  # already matched by the firewall's default patterns


def _renderable(name: str) -> bool:
    """A name that may appear in a rule (``pynet.validate.ifname``: no ``+``
    wildcard, no leading ``-``); dockerd's bridge driver lets more through."""
    try:
        validate.ifname(name)
        return True
    except errors.InvalidParameter:
        log.warning("not isolating from Docker bridge %r: not a name pynet renders", name)
        return False


def docker_custom_bridges(sock: Optional[str] = None, timeout: float = 2.0) -> Optional[list[str]]:
    """Bridges of dockerd's own bridge networks that carry a custom name
    (``-o com.docker.network.bridge.name``), which the ``docker0``/``br-+``
    patterns do not catch; None when dockerd does not answer."""
    try:
        nets = _get("/networks", sock or docker_socket(), timeout)
    except (OSError, ValueError, http.client.HTTPException):
        return None
    names = set()
    for n in nets:
        if n.get("Driver") != "bridge":
            continue
        name = (n.get("Options") or {}).get(BRIDGE_NAME_OPTION, "")
        if name and not name.startswith(_COVERED) and _renderable(name):
            names.add(name)
    return sorted(names)


def reconcile_with_docker(controller, plugin_name: str, sock: Optional[str] = None) -> Optional[dict]:
    holdings = docker_holdings(plugin_name, sock)
    if holdings is None:
        return None
    done = controller.reconcile_runtime(holdings["networks"], holdings["pools"], requester="docker")
    if any(done.values()):
        log.info("reconciled with Docker: %s", {k: v for k, v in done.items() if v})
    return done
