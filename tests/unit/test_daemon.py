"""The daemon's start-up (``pynet.daemon.run_daemon``) against fakes: what it
builds and in which order."""
from __future__ import annotations

import errno
import fcntl
import os

from tests.support.fakes import FakeDriver

import pynet.daemon as daemon  # noqa: E402
import pynet.root as root  # noqa: E402
from pynet.config import Config  # noqa: E402


class LockProbeFirewall:
    """Records, for every sync, whether the state dir's firewall lock was held
    (a second flock on it would block)."""

    def __init__(self, lock_path: str):
        self.lock_path = lock_path
        self.syncs: list[bool] = []

    def sync(self, networks=None, endpoints=None, force: bool = False) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            assert e.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
            self.syncs.append(True)
        else:
            self.syncs.append(False)
        finally:
            os.close(fd)


def test_startup_syncs_run_under_the_cross_process_firewall_lock(tmp_path, monkeypatch):
    config = Config(state_dir=str(tmp_path / "state"), socket_path=str(tmp_path / "p.sock"))
    fw = LockProbeFirewall(os.path.join(config.state_dir, "firewall.lock"))
    # the composition root builds the rest (store, IPAM, the serialising firewall)
    monkeypatch.setattr(root, "build_drivers", lambda config, netlink, sysctl, firewall: {"bridge": FakeDriver()})
    monkeypatch.setattr(root, "build_firewall", lambda config, store=None, sysctl=None: fw)
    monkeypatch.setattr(daemon, "refresh_foreign_bridges", lambda c: None)
    import pynet.plugin_api as plugin_api
    import pynet.plugin_api.docker_state as docker_state

    served = []
    monkeypatch.setattr(docker_state, "reconcile_with_docker", lambda c, name: None)
    monkeypatch.setattr(plugin_api, "serve", lambda app, path: served.append(path))
    monkeypatch.setenv(daemon.RECHECK_ENV, "0")
    import signal
    hup = signal.getsignal(signal.SIGHUP)
    try:
        # its own metrics socket: the default one may be a running daemon's
        daemon.run_daemon(config, metrics_socket=str(tmp_path / "m.sock"))
    finally:
        signal.signal(signal.SIGHUP, hup)  # the re-checker's handler
    assert served == [config.socket_path]
    # restore() synced at least once, and every sync held the lock
    assert fw.syncs and all(fw.syncs), fw.syncs
