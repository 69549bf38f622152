"""The plugin daemon: the real implementations are built here, in one place,
and handed to the Controller; then the kernel is reconciled with the store and
the Docker front end is served on its unix socket.

Flask and waitress are imported only by ``run_daemon``; ``build_controller``
is also used by CLI commands that change the kernel (``pynet network rm``).
"""
from __future__ import annotations

import logging
import os
import sys

from pynet.config import Config

log = logging.getLogger("pynet.daemon")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def open_store(config: Config):
    from pynet.store.sqlite import SqliteStore

    os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
    return SqliteStore.in_state_dir(config.state_dir)


def build_drivers(config: Config) -> dict:
    """Driver name -> driver, with the real kernel interfaces."""
    from pynet.drivers.bridge import BridgeDriver
    from pynet.netlink.pyroute import PyrouteNetlink
    from pynet.sysctl import Sysctl

    bridge = BridgeDriver(PyrouteNetlink(), Sysctl(), instance=config.plugin_name)
    return {getattr(bridge, "name", "bridge") or "bridge": bridge}


def build_firewall(config: Config):
    """Docker's iptables layout for the bridge networks, under this instance's
    chain prefix (so a test daemon beside the main one never touches its rules)."""
    from pynet.drivers.bridge_firewall import BridgeFirewall
    from pynet.firewall import Firewall
    from pynet.sysctl import Sysctl

    return BridgeFirewall(Firewall(prefix=config.chain_prefix, sysctl=Sysctl()))


def build_controller(config: Config, store=None):
    """Store, IPAM, drivers and firewall, built once and handed in."""
    from pynet.cnm.controller import Controller
    from pynet.ipam import Ipam

    store = store if store is not None else open_store(config)
    ipam = Ipam(store, default_pools=config.default_pools)
    return Controller(store, ipam, build_drivers(config), firewall=build_firewall(config))


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


def run_daemon(config: Config) -> None:
    """Build, reconcile the kernel with the store, serve until SIGTERM."""
    setup_logging(logging.DEBUG if os.environ.get("PYNET_DEBUG") else logging.INFO)
    from pynet.plugin_api import create_app, serve
    from pynet.plugin_api.server import prepare_socket_path

    # Refuse early when another daemon serves this socket: it must not be
    # reconciled under a running daemon's feet.
    prepare_socket_path(config.socket_path)
    log.info("pynet daemon starting: plugin %s, state %s, socket %s",
             config.plugin_name, config.state_dir, config.socket_path)
    controller = build_controller(config)
    controller.restore()
    nets = controller.networks()
    log.info("restored %d network(s), %d endpoint(s)", len(nets), len(controller.endpoints()))
    app = create_app(controller)
    serve(app, config.socket_path)
    log.info("pynet daemon stopped")
