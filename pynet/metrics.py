"""The daemon's Prometheus metrics (``prometheus-client``), and where they are served.

    pynet_docker_requests_total{method, result}        Docker plugin calls, by verb and outcome
    pynet_docker_request_duration_seconds{method}      ... their latency (histogram)
    pynet_cni_requests_total{plugin, command, result}  CNI verbs served through the daemon's route
    pynet_cni_request_duration_seconds{plugin, command}
    pynet_ipam_pool_size{address_space, pool, sub_pool}   addresses a pool can hand out
    pynet_ipam_pool_used{address_space, pool, sub_pool}   ... held now (read at scrape time)
    pynet_firewall_syncs_total{trigger, result}        syncs of the desired rule set (most change nothing)
    pynet_firewall_sync_duration_seconds{trigger}
    pynet_firewall_applies_total{result}               rule sets applied to the kernel (read, compared,
                                                       the difference written)
    pynet_firewall_apply_duration_seconds
    pynet_store_errors_total{edge, error}              typed store errors that reached an edge
    process_*, python_gc_*, python_info                prometheus-client's own collectors

``method`` is the Docker method (``NetworkDriver.CreateEndpoint``, ``IpamDriver.RequestAddress``),
``command`` the CNI verb (ADD, DEL, CHECK, GC, STATUS, VERSION), ``result`` ``ok`` or the class of
the error the edge answered with (``NetworkNotFound``, ``PoolExhausted``, ``StoreUnavailable``; for
CNI's own errors the spec's name of the code, ``InvalidConfig``...).  Every label takes values from
a fixed set -- a caller's text never becomes a label (an unknown CNI plugin is ``unknown``), so a
client cannot grow the series without bound.

The front ends do not import this module: ``pynet.plugin_api.app`` and ``pynet.cni.route`` call
an *observer* the daemon hands them (:class:`Metrics` is one) -- so the Docker front end stays free
of Prometheus, and the CNI binaries never load it (contract ``cni-no-metrics``).  The IPAM gauges
are read at scrape time through the controller's IPAM (``list_pools``), never by the front end
from the store.

More sources later (overlay peers, watch lag): a part that has such a number registers a collector
of its own with :meth:`Metrics.register`, which reads the number when scraped; nothing here
exports a series before something real stands behind it.

Served by the daemon (:func:`serve`) on a unix socket, by default ``/run/pynet/<plugin>-metrics.sock``,
mode 0600 -- why there and why so: README "Operations"; on TCP only with ``--metrics-listen``.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from typing import Callable, Iterable, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily

from pynet import errors

log = logging.getLogger("pynet.metrics")

SOCKET_DIR = "/run/pynet"
SOCKET_ENV = "PYNET_METRICS_SOCKET"
LISTEN_ENV = "PYNET_METRICS_LISTEN"

# Seconds: a Docker verb is milliseconds, an ADD with a veth and a firewall sync tens to hundreds,
# an apply of a large rule set seconds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# The CNI verbs the spec defines (a caller's other text is "unknown").
CNI_COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
# The spec's well-known error codes, named for the result label.
CNI_CODES = {1: "IncompatibleVersion", 2: "UnsupportedField", 3: "UnknownContainer",
             4: "InvalidEnvironment", 5: "IOFailure", 6: "DecodeFailure", 7: "InvalidConfig",
             11: "TryAgainLater", 50: "NotAvailable", 51: "LimitedConnectivity", 999: "Internal"}
UNKNOWN = "unknown"


def default_socket(plugin_name: str) -> str:
    return os.path.join(SOCKET_DIR, f"{plugin_name}-metrics.sock")


def parse_listen(value: Optional[str], what: str = "--metrics-listen") -> Optional[tuple[str, int]]:
    """``HOST:PORT`` -> (host, port); None for no value.  HOST is an IP address (``[...]`` around
    IPv6) or ``localhost``: a name that resolves elsewhere must not decide where metrics go."""
    if value is None or value == "":
        return None
    bad = errors.InvalidParameter(
        f"invalid {what} {value!r}: want HOST:PORT, HOST an IP address (IPv6 in [ ]) or localhost, "
        f"PORT 1-65535, e.g. 127.0.0.1:9377")
    if not isinstance(value, str) or not value.isascii() or not value.isprintable() or len(value) > 64:
        raise bad
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535 or port != str(int(port)):
        raise bad
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if "%" in host:
            raise bad
        try:
            if ipaddress.ip_address(host).version != 6:
                raise bad
        except ValueError:
            raise bad from None
    elif host == "localhost":
        host = "127.0.0.1"
    else:
        try:
            if ipaddress.ip_address(host).version != 4:  # bare IPv6 is ambiguous with its colons
                raise bad
        except ValueError:
            raise bad from None
    return host, int(port)


def error_class(err: BaseException) -> str:
    """The result label of a failed request: the typed error's class name; an HTTP error of
    the web layer (body too large, ...) is ``InvalidRequest``; anything else ``Internal``."""
    if isinstance(err, errors.PynetError):
        return type(err).__name__
    code = getattr(err, "code", None)
    if isinstance(code, int) and 400 <= code < 500:
        return "InvalidRequest"
    return "Internal"


STORE_ERRORS = (errors.StoreUnavailable, errors.StoreConflict, errors.StoreCompacted)


class Metrics:
    """One registry of the daemon's metrics and the observer the front ends call."""

    def __init__(self, registry: Optional[CollectorRegistry] = None, process: bool = True):
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.controller = None  # set by the daemon once built: the IPAM collector reads through it
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.docker_requests = Counter("pynet_docker_requests", "Docker plugin API calls, by method and result",
                                       ["method", "result"], registry=r)
        self.docker_seconds = Histogram("pynet_docker_request_duration_seconds",
                                        "Latency of Docker plugin API calls", ["method"],
                                        buckets=BUCKETS, registry=r)
        self.cni_requests = Counter("pynet_cni_requests", "CNI verbs served through the daemon's CNI route",
                                    ["plugin", "command", "result"], registry=r)
        self.cni_seconds = Histogram("pynet_cni_request_duration_seconds",
                                     "Latency of CNI verbs served through the daemon", ["plugin", "command"],
                                     buckets=BUCKETS, registry=r)
        self.fw_syncs = Counter("pynet_firewall_syncs", "Syncs of the desired firewall rule set "
                                "(trigger change: a verb changed state; recheck: the periodic/SIGHUP "
                                "re-check); most write nothing", ["trigger", "result"], registry=r)
        self.fw_sync_seconds = Histogram("pynet_firewall_sync_duration_seconds",
                                         "Duration of a firewall sync (render, compare, apply when changed)",
                                         ["trigger"], buckets=BUCKETS, registry=r)
        self.fw_applies = Counter("pynet_firewall_applies", "Rule sets applied to the kernel (its tables "
                                  "read and compared, the difference written)", ["result"], registry=r)
        self.fw_apply_seconds = Histogram("pynet_firewall_apply_duration_seconds",
                                          "Duration of applying a rule set to the kernel", buckets=BUCKETS,
                                          registry=r)
        self.store_errors = Counter("pynet_store_errors", "Typed store errors (unavailable, conflict, "
                                    "compacted) that reached an edge", ["edge", "error"], registry=r)
        for cls in STORE_ERRORS:
            for edge in ("docker", "cni", "recheck", "metrics"):
                self.store_errors.labels(edge, cls.__name__)
        r.register(IpamCollector(self))

    def register(self, collector) -> None:
        """Another source of numbers read at scrape time (a ``collect()`` yielding metric
        families): the overlay's peers, the store's watch lag, once they exist."""
        self.registry.register(collector)

    # ----------------------------------------------------------- Docker front end
    def declare_docker(self, method: str) -> None:
        """A method the app serves: its series exist (at 0) before the first call."""
        self.docker_requests.labels(method, "ok")
        self.docker_seconds.labels(method)

    def docker_request(self, method: str, seconds: float, error: Optional[BaseException]) -> None:
        self.docker_requests.labels(method, "ok" if error is None else error_class(error)).inc()
        self.docker_seconds.labels(method).observe(seconds)
        if error is not None:
            self.store_error("docker", error)

    # -------------------------------------------------------------- CNI route
    def declare_cni(self, plugins: Iterable[str]) -> None:
        for plugin in plugins:
            for command in CNI_COMMANDS:
                self.cni_requests.labels(plugin, command, "ok")
                self.cni_seconds.labels(plugin, command)

    def cni_request(self, plugin: str, command: str, seconds: float, code: int,
                    error: Optional[BaseException] = None, result: str = "") -> None:
        """``code``: the verb's exit code; ``error``: the typed error behind a failure, when
        there was one; ``result``: a refusal of the route itself (``Misdirected``...)."""
        if command not in CNI_COMMANDS:
            command = UNKNOWN
        if not result:
            if code == 0:
                result = "ok"
            elif cni_code(error) is not None:       # CNI's own error: named by its code
                result = CNI_CODES.get(cni_code(error), "Error")
            elif error is not None:                 # a typed error of the core
                result = error_class(error)
            else:
                result = "Error"
        self.cni_requests.labels(plugin, command, result).inc()
        self.cni_seconds.labels(plugin, command).observe(seconds)
        if error is not None:
            self.store_error("cni", error)

    # ---------------------------------------------------------------- the store
    def store_error(self, edge: str, error: BaseException) -> None:
        if isinstance(error, STORE_ERRORS):
            self.store_errors.labels(edge, type(error).__name__).inc()

    # ----------------------------------------------------------------- firewall
    def observe_firewall(self, firewall):
        """``firewall`` (the bridge networks' rule set, as the composition root builds it)
        with its syncs and kernel applies counted and timed."""
        return ObservedFirewall(firewall, self)


def cni_code(error) -> Optional[int]:
    """The CNI code an error of the CNI front end carries (``CniError.code``); None for others."""
    if error is None or isinstance(error, errors.PynetError):
        return None
    c = getattr(error, "code", None)
    return c if isinstance(c, int) and not isinstance(c, bool) else None


class ObservedFirewall:
    """The firewall, its ``sync`` counted and timed; every other attribute is the firewall's.

    The kernel write (``apply`` of its rule-set engine, ``.firewall``) is timed by wrapping that
    one bound method on the instance: a proxy in its place would lose the attributes the bridge
    firewall sets on it (``isolate_from``)."""

    def __init__(self, inner, metrics: Metrics):
        self.__dict__["_inner"] = inner
        self.__dict__["_metrics"] = metrics
        engine = getattr(inner, "firewall", None)
        apply = getattr(engine, "apply", None)
        if callable(apply):
            engine.apply = _timed_apply(apply, metrics)

    def sync(self, networks, endpoints, force: bool = False, changed=None) -> None:
        m, trigger = self._metrics, "recheck" if force else "change"
        t0 = time.monotonic()
        try:
            # ``changed``: the owners a per-change sync touches (None: the full reconcile)
            if changed is None:
                self._inner.sync(networks, endpoints, force=force)
            else:
                self._inner.sync(networks, endpoints, force=force, changed=changed)
        except BaseException as e:
            m.fw_syncs.labels(trigger, error_class(e)).inc()
            raise
        else:
            m.fw_syncs.labels(trigger, "ok").inc()
        finally:
            m.fw_sync_seconds.labels(trigger).observe(time.monotonic() - t0)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):
        setattr(self._inner, name, value)


def _timed_apply(apply: Callable, m: Metrics) -> Callable:
    def timed(*args, **kwargs):
        t0 = time.monotonic()
        try:
            out = apply(*args, **kwargs)
        except BaseException as e:
            m.fw_applies.labels(error_class(e)).inc()
            raise
        finally:
            m.fw_apply_seconds.observe(time.monotonic() - t0)
        m.fw_applies.labels("ok").inc()
        return out
    timed.__wrapped__ = apply  # type: ignore[attr-defined]
    return timed


class IpamCollector:
    """Pool sizes and use, read through the controller's IPAM when scraped (no copy to go stale)."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self):
        return []  # the families depend on the pools: nothing to check at register time

    def collect(self):
        labels = ["address_space", "pool", "sub_pool"]
        size = GaugeMetricFamily("pynet_ipam_pool_size", "Addresses a pool can hand out", labels=labels)
        used = GaugeMetricFamily("pynet_ipam_pool_used", "Addresses of a pool held now", labels=labels)
        ipam = getattr(self.metrics.controller, "ipam", None)
        if ipam is not None:
            try:
                pools = ipam.list_pools()
            except errors.PynetError as e:
                self.metrics.store_error("metrics", e)
                log.warning("metrics: cannot read the IPAM pools: %s", e)
                pools = []
            for p in pools:
                key = [str(p.get("address_space") or ""), str(p.get("pool") or ""), str(p.get("sub_pool") or "")]
                size.add_metric(key, float(p.get("size") or 0))
                used.add_metric(key, float(p.get("used") or 0))
        yield size
        yield used


# ------------------------------------------------------------------ serving
class Server:
    """The metrics endpoint: a unix socket (mode 0600) and, when asked, one TCP address; each a
    waitress server of one thread in a thread of its own, beside the plugin socket's."""

    def __init__(self, metrics: Metrics, socket_path: str, listen: Optional[tuple[str, int]] = None):
        self.metrics = metrics
        self.socket_path = socket_path
        self.listen = listen
        self.servers: list = []

    def start(self) -> "Server":
        from prometheus_client import make_wsgi_app
        from waitress.server import create_server as waitress_server

        from pynet.plugin_api.server import create_server

        app = make_wsgi_app(self.metrics.registry)
        self.servers.append(create_server(app, self.socket_path, threads=1))
        log.info("metrics on unix:%s (mode 0600)", self.socket_path)
        if self.listen is not None:
            host, port = self.listen
            try:
                self.servers.append(waitress_server(app, host=host, port=port, threads=1,
                                                    ident="pynet-metrics", channel_timeout=30))
            except OSError as e:
                self.stop()
                raise errors.InvalidParameter(f"--metrics-listen {_addr(host, port)}: "
                                              f"{e.strerror or e}") from None
            if ipaddress.ip_address(host).is_loopback:
                log.info("metrics on http://%s/metrics", _addr(host, port))
            else:
                log.warning("metrics on http://%s/metrics -- not loopback: anyone who reaches this "
                            "address reads the node's subnets and pool use", _addr(host, port))
        for s in self.servers:
            threading.Thread(target=s.run, name="metrics", daemon=True).start()
        return self

    def stop(self) -> None:
        for s in self.servers:
            try:
                s.close()
            except OSError:
                pass
        self.servers = []
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove %s: %s", self.socket_path, e)


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
