"""e2e fixtures: ``docker``, ``test_image``, ``pynet_daemon`` / ``pynet_daemon_factory`` /
``pynet_daemon_module``. The machinery lives in ``tests/support/harness.py`` (see its docstring).

    def test_x(docker, test_image, pynet_daemon, prefix):
        net = f"{prefix}-n1"
        docker.run("network", "create", "-d", pynet_daemon.name,
                   "--ipam-driver", pynet_daemon.name, "--subnet", "10.251.1.0/24", net)
        status, body = pynet_daemon.post("Plugin.Activate")

Every test here is marked ``e2e``; tests that use a daemon fixture also ``pynet_daemon``.
Teardown of a daemon removes every container and network named ``<prefix>...`` first (so do not
keep session-wide docker objects with the bare prefix beside function-scoped daemons).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import harness

_HERE = Path(__file__).resolve().parent
_DAEMON_FIXTURES = {"pynet_daemon", "pynet_daemon_factory", "pynet_daemon_module"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)
            if _DAEMON_FIXTURES & set(getattr(item, "fixturenames", ())):
                item.add_marker(pytest.mark.pynet_daemon)


@pytest.fixture(scope="session")
def docker(prefix) -> harness.Docker:
    """dockerd up (started like scripts/test does if needed); leftovers of dead runs removed.

    API: ``docker.run(*args, check=True, timeout=180, input=None) -> CompletedProcess`` (text,
    captured; raises harness.CommandError showing stdout/stderr), ``docker.inspect(name,
    kind=None) -> dict``, ``docker.container_names()``, ``docker.network_names()``,
    ``docker.binary`` (/usr/bin/docker)."""
    if not harness.is_root():
        pytest.fail("e2e tests need root (dockerd, netlink, iptables)")
    harness.ensure_dockerd()
    d = harness.Docker()
    removed = harness.cleanup_stale_docker(d, current=prefix)
    if removed:
        print(f"\n[pynet] removed docker leftovers of earlier runs: {' '.join(removed)}")
    yield d
    harness.cleanup_docker(d, [prefix])


@pytest.fixture(scope="session")
def test_image(docker) -> str:
    """``pynet-test:latest`` (busybox-static; built by scripts/lib/docker.sh if missing)."""
    return harness.ensure_test_image()


class DaemonFactory:
    """``factory(suffix="pynet", start=True, command=None, extra_args=(), state_dir=None,
    link_prefixes=()) -> harness.PynetDaemon`` named ``<prefix>-<suffix>`` on
    ``/run/docker/plugins/<prefix>-<suffix>.sock``. All are torn down by the fixture."""

    def __init__(self, prefix, docker, tmp_dir: Path, request):
        self.prefix = prefix
        self.docker = docker
        self.tmp_dir = tmp_dir
        self.request = request
        self.daemons: list[harness.PynetDaemon] = []

    def __call__(self, suffix: str = "pynet", start: bool = True, command=None, extra_args=(),
                 state_dir=None, link_prefixes=()) -> harness.PynetDaemon:
        name = f"{self.prefix}-{suffix}"
        if any(d.name == name for d in self.daemons):
            raise ValueError(f"daemon {name} already made in this scope")
        for other in _LIVE.values():
            if other.name == name and other.running:
                raise ValueError(f"daemon {name} is running in another scope")
        d = harness.PynetDaemon(
            name=name,
            socket_path=harness.PLUGIN_DIR / f"{name}.sock",
            state_dir=Path(state_dir) if state_dir else self.tmp_dir / f"state-{suffix}",
            command=command, extra_args=extra_args, link_prefixes=link_prefixes)
        self.daemons.append(d)
        _LIVE[id(d)] = d
        if start:
            d.start()
        return d

    def teardown(self):
        failed = False
        node = self.request.node
        for when in ("setup", "call"):
            rep = getattr(node, f"rep_{when}", None)
            failed = failed or bool(rep and rep.failed)
        errors = []
        for d in reversed(self.daemons):
            if failed and d.log_path:
                print(f"\n----- {d.name} log ({d.log_path}), last lines -----\n{d.log_tail()}")
            try:
                harness.teardown_daemon(d, self.docker, [self.prefix])
            except Exception as e:  # noqa: BLE001
                errors.append(str(e))
            _LIVE.pop(id(d), None)
        if errors:
            raise RuntimeError("; ".join(errors))


_LIVE: dict[int, harness.PynetDaemon] = {}


@pytest.fixture
def pynet_daemon_factory(prefix, docker, tmp_path, request):
    f = DaemonFactory(prefix, docker, tmp_path, request)
    yield f
    f.teardown()


@pytest.fixture
def pynet_daemon(pynet_daemon_factory) -> harness.PynetDaemon:
    """A started ``pynet daemon``: ``.name`` (use with ``-d NAME --ipam-driver NAME``), ``.socket``,
    ``.state_dir``, ``.stop()`` (SIGTERM+wait), ``.kill()`` (SIGKILL), ``.start()`` (same state
    dir), ``.post(method, body) -> (status, json)``, ``.log_path``, ``.log_tail()``."""
    return pynet_daemon_factory()


@pytest.fixture(scope="module")
def pynet_daemon_module(prefix, docker, tmp_path_factory, request):
    """Like ``pynet_daemon`` but one per test module (name ``<prefix>-pynetm``)."""
    f = DaemonFactory(prefix, docker, tmp_path_factory.mktemp("pynetd"), request)
    d = f(suffix="pynetm")
    yield d
    f.teardown()
