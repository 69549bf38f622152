"""Issue 13: the Docker firewall e2e on LEGACY iptables, on a host whose dockerd writes legacy
iptables too (the machine's dockerd writes iptables-nft: a legacy pynet beside it is no real
setup).

The "legacy host" is a network namespace ``<prefix>-lg`` (lo up, nothing toward the uplink)
with a private dockerd (harness.PrivateDockerd: its own mount namespace, /run/docker a tmpfs
there, data, exec root, socket and pidfile under a per-run directory) whose ``iptables`` and
``ip6tables`` are iptables-legacy and ip6tables-legacy: Debian's dockerd 20.10 execs those two
names from its PATH, and a shim directory first on it links them (and the ``-save`` and
``-restore`` tools) to the legacy binaries, as ``update-alternatives --set iptables
/usr/sbin/iptables-legacy`` would on a legacy host.  The test image is loaded into it from the
machine's dockerd.

Then tests/e2e/legacy_host_subset.py runs as a sub-pytest inside that mount and network
namespace, with the same PATH, ``DOCKER_HOST`` on the private dockerd (the harness then never
starts or cleans the machine's dockerd) and ``PYNET_IPTABLES_BACKEND=legacy`` for its pynet
daemon and CLI (the daemon's PATH starts with /usr/sbin: without it, it would detect nft).  The
sub-run has a run prefix of its own (harness.RunLock), so its stale cleanup leaves this run's
resources alone; its "outside" namespace and veths are made from inside the legacy host.

One item here per sub-run node id, passing only if that test passed there (as
tests/vm/test_kernel_lab.py does); a failure shows the test's output, the end of the sub-run's
console and of dockerd's log.  Everything goes at the end, even on failure: the private dockerd
(its containers first, then it stops its containerd), the namespace (the legacy rules with
it), the directory.  A killed run's private dockerd and namespace go at the next run's start
(harness.cleanup_stale_private_dockerds, cleanup_stale_host).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from tests.support import harness
from tests.support.junit import parse_junit

pytestmark = [pytest.mark.timeout(900)]

SUBSET = "tests/e2e/legacy_host_subset.py"
# the names dockerd (and the harness's iptables helpers) exec, and their legacy binaries
SHIM = {f"{fam}{tool}": f"/usr/sbin/{fam}-legacy{tool}"
        for fam in ("iptables", "ip6tables") for tool in ("", "-save", "-restore")}
SUBRUN_TIMEOUT = 600


def subset_nodeids() -> list[str]:
    """The sub-run's node ids, from the subset module's test functions (a parametrized one
    carries a single explicit id there)."""
    import tests.e2e.legacy_host_subset as sub

    out = []
    for name, fn in vars(sub).items():
        if not (name.startswith("test_") and callable(fn)):
            continue
        ids = [m.kwargs["ids"] for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
        assert len(ids) <= 1 and all(len(i) == 1 for i in ids), f"{name}: one explicit id, or none"
        out.append(f"{SUBSET}::{name}" + (f"[{ids[0][0]}]" if ids else ""))
    return out


NODEIDS = subset_nodeids()


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG, SIGKILL: a killed run's sub-run ends with it (nsenter and pytest exec,
    keeping it); what it leaves, the next run's stale cleanup removes."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, 9)


def _tail(text: str, n: int = 60) -> str:
    return "\n".join(text.splitlines()[-n:])


@pytest.fixture(scope="module")
def legacy_host(prefix, test_image):
    """The legacy host up, the sub-run done: ``.cases`` (node id -> junit.CaseResult),
    ``.rc``, ``.console``, ``.dockerd``, ``.tables_at_start`` (legacy, nft ``-save`` output
    in the namespace before the sub-run), ``.seconds`` (set-up, sub-run)."""
    t0 = time.monotonic()
    netns = f"{prefix}-lg"
    d = harness.private_dockerd_dir(prefix, "lg")
    shim = d / "bin"
    dockerd = harness.PrivateDockerd(d, f"/run/netns/{netns}", path_dir=shim,
                                     cgroup_parent=harness.registered_cgroup_parent(d))
    in_ns = ["ip", "netns", "exec", netns]
    try:
        harness.netns_add(netns)
        harness.sh(*in_ns, "ip", "link", "set", "lo", "up")
        shim.mkdir()
        for name, target in SHIM.items():
            (shim / name).symlink_to(target)
        dockerd.start()
        dockerd.load_image(test_image)
        tables = {v: harness.sh(*in_ns, f"iptables-{v}-save").stdout + harness.sh(*in_ns, f"ip6tables-{v}-save").stdout
                  for v in ("legacy", "nft")}
        setup_s = time.monotonic() - t0
        env = {**os.environ, "PATH": f"{shim}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
               "DOCKER_HOST": dockerd.host, "PYNET_IPTABLES_BACKEND": "legacy", "PYNET_LEGACY_HOST": "1",
               "PYNET_TEST_RESULTS": str(harness.results_dir() / f"legacy-host-{prefix}")}
        for var in ("PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST", "PYNET_FIREWALL_BACKEND"):
            env.pop(var, None)
        junit = d / "junit.xml"
        console = harness.results_dir() / f"legacy-host-{prefix}.log"
        argv = ["nsenter", f"--mount={dockerd.mount_ns}", f"--net=/run/netns/{netns}", f"--wd={harness.REPO}",
                sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE", "--durations=5",
                "-o", "junit_family=xunit2", "-o", "junit_logging=all", f"--junitxml={junit}",
                f"--basetemp={d / 'pytest'}", "--timeout=240", *NODEIDS]
        t1 = time.monotonic()
        with open(console, "w") as log:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 env=env, start_new_session=True, preexec_fn=_die_with_parent)
            try:
                rc = p.wait(SUBRUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                rc = p.wait(30)
                log.write(f"\n(killed: the sub-run took more than {SUBRUN_TIMEOUT}s)\n")
        yield SimpleNamespace(cases=parse_junit(junit), rc=rc, console=console.read_text(errors="replace"),
                              dockerd=dockerd, tables_at_start=tables,
                              seconds={"set-up": round(setup_s, 1), "sub-run": round(time.monotonic() - t1, 1)})
    finally:
        # a sub-run killed above left its daemons: their run prefix is dead now
        harness.stop_orphan_daemons()
        dockerd.remove_containers()
        dockerd.stop()
        harness.netns_del(netns)
        if dockerd.log_path.exists():  # kept beside the run's other logs
            shutil.copy(dockerd.log_path, harness.results_dir() / f"legacy-host-{prefix}-dockerd.log")
        shutil.rmtree(d, ignore_errors=True)


def _failure(legacy_host, what: str) -> str:
    return (f"{what}\n--- end of the sub-run's console (exit {legacy_host.rc}) ---\n"
            f"{_tail(legacy_host.console)}\n--- end of the private dockerd's log ---\n"
            f"{legacy_host.dockerd.log_tail()}")


def test_private_dockerd_writes_legacy_tables(legacy_host):
    """Before the sub-run: dockerd's chains in the legacy tables, none in nf_tables."""
    t = legacy_host.tables_at_start
    assert ":DOCKER " in t["legacy"] and ":DOCKER-USER " in t["legacy"], _failure(legacy_host, t["legacy"])
    assert "DOCKER" not in t["nft"], t["nft"]
    print(f"legacy host: {legacy_host.seconds}")


@pytest.mark.parametrize("nodeid", NODEIDS, ids=[n.split("::", 1)[1] for n in NODEIDS])
def test_on_legacy_host(nodeid, legacy_host):
    case = legacy_host.cases.get(nodeid)
    if case is None:
        pytest.fail(_failure(legacy_host, f"{nodeid}: no result from the sub-run"), pytrace=False)
    if case.outcome != "passed":  # a skip too: everything it needs is there
        pytest.fail(_failure(legacy_host, f"{nodeid} {case.outcome.upper()} on the legacy host:\n{case.message}\n"
                                          f"--- its output ---\n{_tail(case.output, 120)}"), pytrace=False)
