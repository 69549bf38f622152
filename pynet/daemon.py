"""The plugin daemon: the implementations are built by the composition root
(``pynet.root.build_controller``); then the kernel is reconciled with the
store and the Docker front end is served on its unix socket, with the CNI
shim's route (``pynet.cni.route``) handed to the app here -- the Docker front
end knows nothing of CNI.  The daemon's Prometheus metrics (``pynet.metrics``)
are built here and handed to both front ends as their observer, and served on
a socket of their own.

Flask, waitress and prometheus-client are imported only by ``run_daemon``.
"""
from __future__ import annotations

import logging
import os
import sys

from pynet.config import Config

log = logging.getLogger("pynet.daemon")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_pynet", False) for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter(LOG_FORMAT))
        h._pynet = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level)
    # waitress logs every queue-depth warning at WARNING; keep it.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


RECHECK_ENV = "PYNET_FIREWALL_RECHECK"
DEFAULT_RECHECK = 10.0


def recheck_interval() -> float:
    """Seconds between firewall re-checks (env PYNET_FIREWALL_RECHECK; 0 = only on SIGHUP)."""
    try:
        return max(0.0, float(os.environ.get(RECHECK_ENV, DEFAULT_RECHECK)))
    except ValueError:
        return DEFAULT_RECHECK


def refresh_foreign_bridges(controller) -> None:
    """Learn dockerd's custom-named bridges, so pynet's networks stay isolated
    from them too (``docker0`` and ``br-*`` are matched by pattern)."""
    setter = getattr(controller.firewall, "set_foreign_bridges", None)
    if setter is None:
        return
    from pynet.plugin_api.docker_state import docker_custom_bridges
    names = docker_custom_bridges()
    if names is not None:
        setter(names)


class FirewallRechecker:
    """Re-applies the whole desired rule set every ``interval`` seconds and on SIGHUP.

    dockerd inserts its FORWARD rules on top when it creates a network and rewrites
    its chains when it restarts; an admin may ``iptables -F FORWARD``.  Firewall.apply
    compares and changes nothing when in sync (two iptables-save reads), so the
    re-check is cheap.  Runs under the controller's lock, like every other change.
    """

    def __init__(self, controller, interval: float, metrics=None):
        import threading

        self.controller = controller
        self.metrics = metrics
        self.interval = interval
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="firewall-recheck", daemon=True)

    def start(self) -> "FirewallRechecker":
        import signal

        if self.controller.firewall is None:
            return self
        signal.signal(signal.SIGHUP, lambda *_: self.wake.set())
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def recheck(self) -> None:
        c = self.controller
        refresh_foreign_bridges(c)
        c.recheck_firewall()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(self.interval or None)
            if self.stopping.is_set():
                return
            hup = self.wake.is_set()
            self.wake.clear()
            try:
                self.recheck()
                if hup:
                    log.info("firewall re-checked (SIGHUP)")
            except Exception as e:  # noqa: BLE001 -- keep serving; next round retries
                log.error("firewall re-check failed: %s", e)
                if self.metrics is not None:
                    self.metrics.store_error("recheck", e)


def run_daemon(config: Config, metrics_socket: str = "", metrics_listen=None) -> None:
    """Build, reconcile the kernel with the store, serve until SIGTERM.
    Metrics (``pynet.metrics``) on ``metrics_socket`` (default
    ``/run/pynet/<plugin>-metrics.sock``) and, when given, ``metrics_listen``
    (host, port) -- both checked by the CLI before this runs."""
    setup_logging(logging.DEBUG if os.environ.get("PYNET_DEBUG") else logging.INFO)
    from pynet import metrics as pm
    from pynet.plugin_api.server import prepare_socket_path

    metrics_socket = metrics_socket or pm.default_socket(config.plugin_name)
    # Refuse early when another daemon serves this socket (or its metrics
    # socket): it must not be reconciled under a running daemon's feet.
    prepare_socket_path(config.socket_path)
    prepare_socket_path(metrics_socket)
    log.info("pynet daemon starting: plugin %s, state %s, socket %s",
             config.plugin_name, config.state_dir, config.socket_path)
    metrics = pm.Metrics()
    # bound before anything is built: a busy --metrics-listen fails before the kernel is touched
    endpoint = pm.Server(metrics, metrics_socket, metrics_listen).start()
    try:
        _build_and_serve(config, metrics)
    finally:
        endpoint.stop()
    log.info("pynet daemon stopped")


def _build_and_serve(config: Config, metrics) -> None:
    """The controller (its firewall observed), reconciled; the plugin app served until SIGTERM."""
    from functools import partial

    from pynet import root
    from pynet.cni.route import register_cni
    from pynet.plugin_api import create_app, serve

    root.check_advertise_address(config)     # before the controller touches the kernel
    controller = root.build_controller(config, observe_firewall=metrics.observe_firewall)
    metrics.controller = controller
    refresh_foreign_bridges(controller)
    controller.restore()
    from pynet.plugin_api.docker_state import reconcile_with_docker
    reconcile_with_docker(controller, config.plugin_name)
    nets = controller.networks()
    log.info("restored %d network(s), %d endpoint(s)", len(nets), len(controller.endpoints()))
    # CNI shim -> daemon, for this state dir
    app = create_app(controller, routes=[partial(register_cni, state_dir=config.state_dir, observer=metrics)],
                     observer=metrics)
    rechecker = FirewallRechecker(controller, recheck_interval(), metrics=metrics).start()
    # the cluster (overlay networks): this host's lease and the control loop
    agent = root.start_cluster_agent(config, controller)
    try:
        serve(app, config.socket_path)
    finally:
        rechecker.stop()
        if agent is not None:
            agent.shutdown()       # the lease outlives a restart while containers run
