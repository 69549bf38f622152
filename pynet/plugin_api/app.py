"""The Docker remote NetworkDriver + IpamDriver front end (Flask).

dockerd sends ``POST /<Method>`` with ``Accept:
application/vnd.docker.plugins.v1.2+json``, no Content-Type, and an empty body
for Activate / GetCapabilities / GetDefaultAddressSpaces.  Each route below
parses the body (``translate``), calls one Controller verb, and renders the
answer; its docstring shows the JSON in and out.

Errors: a PynetError answers its ``http_status`` with ``{"Err": str(err)}``
(Docker shows ``Err`` from a non-200 answer to the user for both plugin
types); anything else is a 500 ``{"Err": "internal error: ..."}``, logged with
its traceback.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Iterable

from flask import Flask, Response, request

from pynet import errors, jsonsafe, logfmt
from pynet.plugin_api import translate as wire

log = logging.getLogger("pynet.plugin_api")

CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
DOCKER = "docker"  # the IPAM holder and requester of every call dockerd makes

# IpamDriver capabilities.
#  * RequiresMACAddress false: addresses are allocated from the pool bitmap,
#    never derived from the MAC, so Docker need not send it.
#  * RequiresRequestReplay false: every allocation is committed to the
#    store (SQLite, WAL) before the answer leaves, and the store survives both
#    a pynet restart and a dockerd restart, so PoolIDs Docker persisted stay
#    valid.  A replay on dockerd start would re-request pools and addresses we
#    still hold -- each one a duplicate (PoolOverlap / AddressInUse warnings in
#    dockerd's log) or, worse, a second pool ID for the same subnet.  The
#    kernel side is reconciled by ``Controller.restore()`` from the same store.
IPAM_CAPABILITIES = {"RequiresMACAddress": False, "RequiresRequestReplay": False}
NETWORK_CAPABILITIES = {"Scope": "local", "ConnectivityScope": "local"}


def _reply(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status,
                    content_type=CONTENT_TYPE)


def create_app(controller, routes: Iterable[Callable] = (), observer=None) -> Flask:
    """The Flask app serving ``controller`` to dockerd.  ``routes``: more routes
    from the caller, each ``register(app, controller)`` -- the daemon hands in
    the CNI shim's (``pynet.cni.route``), so this package never imports CNI.
    ``observer``: told of every call (``declare_docker(method)`` once per route,
    ``docker_request(method, seconds, error)`` per call) -- the daemon's metrics
    (``pynet.metrics``), so this package never imports Prometheus either."""
    app = Flask("pynet.plugin_api")
    app.config["MAX_CONTENT_LENGTH"] = 4 * 1024 * 1024
    c = controller

    def route(method: str) -> Callable:
        def register(fn: Callable[[dict], Any]) -> Callable:
            def view():
                t0 = time.monotonic()
                body = answer = err = None
                try:
                    body = _body(request.get_data(cache=False))
                    answer = fn(body)
                    return _reply(answer)
                except BaseException as e:
                    err = e
                    raise
                finally:
                    _done(method, time.monotonic() - t0, body, answer, err, observer)
            if observer is not None:
                observer.declare_docker(method)
            view.__name__ = fn.__name__
            view.__doc__ = fn.__doc__
            app.add_url_rule(f"/{method}", endpoint=method, view_func=view, methods=["POST"])
            return fn
        return register

    # ------------------------------------------------------------ handshake
    @route("Plugin.Activate")
    def activate(body):
        """in: (empty)  out: {"Implements": ["NetworkDriver", "IpamDriver"]}"""
        return {"Implements": ["NetworkDriver", "IpamDriver"]}

    # -------------------------------------------------------- NetworkDriver
    @route("NetworkDriver.GetCapabilities")
    def net_capabilities(body):
        """in: (empty)  out: {"Scope": "local", "ConnectivityScope": "local"}"""
        return NETWORK_CAPABILITIES

    @route("NetworkDriver.CreateNetwork")
    def create_network(body):
        """in: {"NetworkID", "IPv4Data": [{"AddressSpace", "Pool", "Gateway",
        "AuxAddresses": {name: "a.b.c.d/len"}}], "IPv6Data": [...],
        "Options": {"com.docker.network.generic": {-o options},
        "com.docker.network.enable_ipv6": bool, "com.docker.network.internal": bool}}
        out: {}"""
        c.create_network(**wire.create_network_args(body))
        return {}

    @route("NetworkDriver.DeleteNetwork")
    def delete_network(body):
        """in: {"NetworkID"}  out: {} (an unknown network is already deleted)"""
        (network_id,) = wire.ids(body, "NetworkID")
        c.delete_network(network_id, requester=DOCKER)
        return {}

    @route("NetworkDriver.CreateEndpoint")
    def create_endpoint(body):
        """in: {"NetworkID", "EndpointID", "Interface": {"Address": "a.b.c.d/len",
        "AddressIPv6", "MacAddress"}, "Options": {"com.docker.network.endpoint.macaddress":
        base64, "com.docker.network.portmap": [{"Proto", "IP", "Port", "HostIP",
        "HostPort", "HostPortEnd"}], "com.docker.network.endpoint.exposedports":
        [{"Proto", "Port"}]}}
        out: {} or {"Interface": {"MacAddress": ...}} -- only fields Docker left empty"""
        kwargs, sent = wire.create_endpoint_args(body)
        # The port map is validated here but handed over only by
        # ProgramExternalConnectivity, which carries it again: the controller
        # counts the ports stored on *every* endpoint as held (controller.py,
        # _reserve_host_ports), so requested-but-unprogrammed ports of a
        # container's second network would block its own first network.
        kwargs["ports"] = ()
        ep = c.create_endpoint(**kwargs)
        return wire.render_create_endpoint(ep, sent)

    @route("NetworkDriver.EndpointOperInfo")
    def endpoint_oper_info(body):
        """in: {"NetworkID", "EndpointID"}  out: {"Value": {...}}"""
        network_id, endpoint_id = wire.ids(body, "NetworkID", "EndpointID")
        return {"Value": c.endpoint_oper_info(network_id, endpoint_id) or {}}

    @route("NetworkDriver.DeleteEndpoint")
    def delete_endpoint(body):
        """in: {"NetworkID", "EndpointID"}  out: {} (unknown endpoint: already deleted)"""
        network_id, endpoint_id = wire.ids(body, "NetworkID", "EndpointID")
        c.delete_endpoint(network_id, endpoint_id)
        return {}

    @route("NetworkDriver.Join")
    def join(body):
        """in: {"NetworkID", "EndpointID", "SandboxKey": "/var/run/docker/netns/…",
        "Options": {portmap, exposedports}}
        out: {"InterfaceName": {"SrcName", "DstPrefix"}, "Gateway", "GatewayIPv6",
        "StaticRoutes": [{"Destination", "RouteType", "NextHop"}],
        "DisableGatewayService": bool}  (empty gateways omitted)"""
        network_id, endpoint_id = wire.ids(body, "NetworkID", "EndpointID")
        sandbox_key = wire.sandbox_key(body)
        info = c.join(network_id, endpoint_id, sandbox_key)
        return wire.render_join(info)

    @route("NetworkDriver.Leave")
    def leave(body):
        """in: {"NetworkID", "EndpointID"}  out: {}"""
        network_id, endpoint_id = wire.ids(body, "NetworkID", "EndpointID")
        c.leave(network_id, endpoint_id)
        return {}

    @route("NetworkDriver.ProgramExternalConnectivity")
    def program_external_connectivity(body):
        """in: {"NetworkID", "EndpointID", "Options": {"com.docker.network.portmap":
        [...], "com.docker.network.endpoint.exposedports": [...]}}
        out: {}   (host port 0 / HostPort..HostPortEnd: pynet picks the port)"""
        network_id, endpoint_id = wire.ids(body, "NetworkID", "EndpointID")
        options = wire.get_dict(body, "Options")
        c.program_external_connectivity(network_id, endpoint_id,
                                        ports=wire.port_mappings(options),
                                        exposed=wire.exposed_ports(options))
        return {}

    @route("NetworkDriver.RevokeExternalConnectivity")
    def revoke_external_connectivity(body):
        """in: {"NetworkID", "EndpointID"}  out: {}"""
        network_id, endpoint_id = wire.ids(body, "NetworkID", "EndpointID")
        c.revoke_external_connectivity(network_id, endpoint_id)
        return {}

    @route("NetworkDriver.DiscoverNew")
    def discover_new(body):
        """in: {"DiscoveryType", "DiscoveryData"}  out: {}  (local scope: nothing to learn)"""
        return {}

    @route("NetworkDriver.DiscoverDelete")
    def discover_delete(body):
        """in: {"DiscoveryType", "DiscoveryData"}  out: {}"""
        return {}

    @route("NetworkDriver.AllocateNetwork")
    def allocate_network(body):
        """in: {"NetworkID", "Options", "IPv4Data", "IPv6Data"} (swarm managers only)
        out: {"Options": {...}}  -- ``{}`` for a local-scope driver, which allocates
        nothing cluster-wide; a global driver's allocation (once per network)"""
        return wire.render_allocate(controller.allocate_network(**wire.allocate_network_args(body)))

    @route("NetworkDriver.FreeNetwork")
    def free_network(body):
        """in: {"NetworkID"}  out: {}"""
        (network_id,) = wire.ids(body, "NetworkID")
        controller.free_network(network_id)
        return {}

    # ------------------------------------------------------------ IpamDriver
    @route("IpamDriver.GetCapabilities")
    def ipam_capabilities(body):
        """in: (empty)  out: {"RequiresMACAddress": false, "RequiresRequestReplay": false}"""
        return IPAM_CAPABILITIES

    @route("IpamDriver.GetDefaultAddressSpaces")
    def address_spaces(body):
        """in: (empty)  out: {"LocalDefaultAddressSpace", "GlobalDefaultAddressSpace"}"""
        return wire.render_address_spaces(c.address_spaces())

    @route("IpamDriver.RequestPool")
    def request_pool(body):
        """in: {"AddressSpace", "Pool": "" | CIDR, "SubPool": "" | CIDR (--ip-range),
        "Options": {...}, "V6": bool}
        out: {"PoolID", "Pool": CIDR, "Data": {...}}"""
        pool_id, pool, data = c.request_pool(**wire.request_pool_args(body), requester=DOCKER)
        return wire.render_pool(pool_id, pool, data)

    @route("IpamDriver.ReleasePool")
    def release_pool(body):
        """in: {"PoolID"}  out: {}"""
        (pool_id,) = wire.ids(body, "PoolID")
        c.release_pool(pool_id, holder=DOCKER)
        return {}

    @route("IpamDriver.RequestAddress")
    def request_address(body):
        """in: {"PoolID", "Address": "" | "a.b.c.d", "Options": null |
        {"RequestAddressType": "com.docker.network.gateway"} | {mac option}}
        out: {"Address": "a.b.c.d/len", "Data": {}}"""
        address = c.request_address(**wire.request_address_args(body), holder=DOCKER)
        return {"Address": address, "Data": {}}

    @route("IpamDriver.ReleaseAddress")
    def release_address(body):
        """in: {"PoolID", "Address": "a.b.c.d" (bare)}  out: {}"""
        (pool_id,) = wire.ids(body, "PoolID")
        c.release_address(pool_id, wire.get_str(body, "Address", required=True), holder=DOCKER)
        return {}

    for register_routes in routes:
        register_routes(app, c)

    # ---------------------------------------------------------------- errors
    @app.errorhandler(errors.PynetError)
    def pynet_error(err: errors.PynetError):
        status = getattr(err, "http_status", 500) or 500  # logged by the verb's event line (_done)
        return _reply({"Err": _one_line(str(err))}, status)

    @app.errorhandler(404)
    def not_found(err):
        return _reply({"Err": f"unknown plugin method {request.path.lstrip('/')!r}"}, 404)

    @app.errorhandler(405)
    def not_allowed(err):
        return _reply({"Err": f"{request.method} not allowed: plugin methods are POST"}, 405)

    @app.errorhandler(413)
    def too_large(err):
        return _reply({"Err": "request body too large"}, 413)

    @app.errorhandler(Exception)
    def internal_error(err: Exception):
        if hasattr(err, "code") and hasattr(err, "get_response"):  # other HTTP errors
            return _reply({"Err": _one_line(str(err))}, err.code)
        log.exception("%s %s failed", request.method, request.path)
        return _reply({"Err": _one_line(f"internal error: {type(err).__name__}: {err}")}, 500)

    return app


def _body(raw: bytes) -> dict:
    """The request body as a dict, refused (400) when it nests too deeply or
    holds a lone surrogate (``pynet.jsonsafe``): either would surface later as
    a 500 from code that walks, stores or logs it."""
    try:
        body = wire.parse_body(raw)
        jsonsafe.check(body)
    except RecursionError:
        raise errors.InvalidRequest(f"malformed JSON request body: nested deeper than "
                                    f"{jsonsafe.MAX_DEPTH} levels") from None
    except jsonsafe.Malformed as e:
        raise errors.InvalidRequest(f"malformed JSON request body: {e}") from None
    return body


# Docker's calls that change nothing: logged at DEBUG (dockerd repeats them), the rest at INFO.
_QUIET = {"Plugin.Activate", "NetworkDriver.GetCapabilities", "IpamDriver.GetCapabilities",
          "IpamDriver.GetDefaultAddressSpaces", "NetworkDriver.EndpointOperInfo",
          "NetworkDriver.DiscoverNew", "NetworkDriver.DiscoverDelete"}
# request/answer field -> the event's field: the IDs a person greps the log for
_ID_FIELDS = (("NetworkID", "network_id"), ("EndpointID", "endpoint_id"), ("SandboxKey", "sandbox_id"),
              ("PoolID", "pool_id"), ("Pool", "pool"), ("Address", "address"))


def _done(method: str, seconds: float, body, answer, err, observer) -> None:
    """The call's one event line (IDs, outcome, duration) and the observer's count.  Neither
    may turn an answer into an error: a failure here is swallowed."""
    try:
        ids = {}
        for source in (body, answer):
            if isinstance(source, dict):
                for key, field in _ID_FIELDS:
                    if source.get(key) not in (None, "") and field not in ids:
                        ids[field] = source[key]
        if "sandbox_id" in ids:  # the netns file is named by the sandbox's short ID
            ids["sandbox_id"] = str(ids["sandbox_id"]).rstrip("/").rsplit("/", 1)[-1]
        level = logging.DEBUG if method in _QUIET and err is None else logging.INFO
        status = getattr(err, "http_status", None) or getattr(err, "code", None)
        if err is not None and not (isinstance(status, int) and status < 500):
            level = logging.ERROR  # ours to fix (a 4xx is the caller's), as the error handlers answer
        logfmt.event(log, level, method, ids, err, seconds)
    except Exception:  # noqa: BLE001
        pass
    if observer is not None:
        try:
            observer.docker_request(method, seconds, err)
        except Exception:  # noqa: BLE001
            log.debug("observer failed", exc_info=True)


def _one_line(s: str) -> str:
    return " ".join(s.split())
