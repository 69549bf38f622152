"""Issue 2 acceptance: dockerd restarts, with and without live-restore.

These restart the machine's dockerd (the one scripts/test started), so they run last in
the e2e directory (file name order) and leave dockerd running with its defaults.
"""
from __future__ import annotations

import time

import pytest

from tests.support import harness
from tests.e2e.test_docker_bridge import addr_on, create_network, ping, pynet_cli, run_container


def restart_dockerd(*args: str) -> None:
    harness.sh("bash", harness.DOCKER_SH, "stop-dockerd", timeout=120)
    env = dict(harness.os.environ, PYNET_DOCKERD_ARGS=" ".join(args))
    log = harness.results_dir() / "dockerd-restarts.log"
    harness.sh("bash", harness.DOCKER_SH, "ensure-dockerd", str(log), timeout=240, env=env)


@pytest.fixture
def dockerd_defaults_after():
    yield
    if harness.sh(harness.DOCKER, "info", "--format", "{{.LiveRestoreEnabled}}",
                  check=False).stdout.strip() != "false":
        restart_dockerd()


def test_live_restore_keeps_connectivity(docker, test_image, pynet_daemon, prefix, dockerd_defaults_after):
    restart_dockerd("--live-restore")
    net = f"{prefix}-lr"
    create_network(docker, pynet_daemon, net, "--subnet", "10.231.40.0/24")
    a, b = f"{prefix}-a", f"{prefix}-b"
    run_container(docker, test_image, a, net)
    run_container(docker, test_image, b, net)
    ip_b = addr_on(docker, b, net)["IPAddress"]
    pid_before = docker.inspect(a, "container")["State"]["Pid"]
    restart_dockerd("--live-restore")
    assert docker.inspect(a, "container")["State"]["Pid"] == pid_before  # never stopped
    ping(docker, a, ip_b)
    ping(docker, b, a)
    eps = pynet_cli(pynet_daemon, "endpoint", "ls")
    assert len(eps) == 2


def test_dockerd_restart_defaults_restart_policy_rejoins(docker, test_image, pynet_daemon, prefix,
                                                         dockerd_defaults_after):
    net = f"{prefix}-rp"
    create_network(docker, pynet_daemon, net, "--subnet", "10.231.41.0/24")
    a, b = f"{prefix}-a", f"{prefix}-b"
    run_container(docker, test_image, a, net, "--restart", "always")
    run_container(docker, test_image, b, net, "--restart", "always")
    old_eps = {e["id"] for e in pynet_cli(pynet_daemon, "endpoint", "ls")}
    restart_dockerd()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(docker.inspect(c, "container")["State"]["Running"] for c in (a, b)):
            break
        time.sleep(0.5)
    ping(docker, a, b)
    ping(docker, b, a)
    eps = pynet_cli(pynet_daemon, "endpoint", "ls")
    # the containers came back with new endpoints; the old ones were cleaned up
    assert len(eps) == 2 and not ({e["id"] for e in eps} & old_eps), (eps, old_eps)
