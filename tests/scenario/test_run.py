"""The runner end to end (root): the library passes, the deliberately wrong
scenarios fail with a clear report and a pcap, and nothing is left behind --
also when the run is interrupted (SIGINT) or killed (SIGKILL)."""
import glob
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from pynet.scenario import report
from tests.support.scenario import NEEDS_ROOT, REPO, SCENARIOS, assert_scenario_passes, netns_names, run_cli

pytestmark = [NEEDS_ROOT, pytest.mark.netns]

LIBRARY = sorted(glob.glob(str(SCENARIOS / "*.yaml")))
WRONG = sorted(glob.glob(str(SCENARIOS / "wrong" / "*.yaml")))


@pytest.mark.parametrize("path", LIBRARY, ids=[os.path.basename(p) for p in LIBRARY])
def test_library_scenario_passes(path, tmp_path, snapshot):
    assert_scenario_passes(path, tmp_path)


@pytest.mark.parametrize("path", WRONG, ids=[os.path.basename(p) for p in WRONG])
def test_wrong_scenario_fails_with_report_and_pcap(path, tmp_path, snapshot):
    junit = tmp_path / "junit.xml"
    out = tmp_path / "out"
    r = run_cli("run", path, "--junit", junit, "--out-dir", out)
    assert r.returncode == 1, r.stdout + r.stderr
    fail_lines = [x for x in r.stdout.splitlines() if x.rstrip().endswith("FAIL")]
    assert fail_lines, r.stdout
    assert "pcap of" in r.stdout
    pcaps = sorted(out.glob("*.pcap"))
    assert len(pcaps) == len(fail_lines)
    for p in pcaps:
        assert str(p) in r.stdout
        pk = report.read_pcap(str(p))
        assert pk, f"{p} is empty"
    root = ET.parse(junit).getroot()
    assert int(root.get("failures")) == len(fail_lines)


def test_wrong_isolation_report_says_what_was_seen(tmp_path, snapshot):
    r = run_cli("run", SCENARIOS / "wrong" / "isolation-on-shared-network.yaml",
                "--out-dir", tmp_path)
    line = next(x for x in r.stdout.splitlines() if "wrongly-expected-isolation" in x and "FAIL" in x)
    assert "blocked" in line and "echo-reply from" in line
    pcap = tmp_path / "wrong-isolation-on-shared-network-wrongly-expected-isolation.pcap"
    frames = report.read_pcap(str(pcap))
    # the echo request and the echo reply between a and b are in it
    icmp = [f for _, f in frames if len(f) > 34 and f[12:14] == b"\x08\x00" and f[23] == 1]
    assert {f[34] for f in icmp} >= {0, 8}


def _start(path, out):
    return subprocess.Popen([sys.executable, "-m", "pynet.scenario", "run", str(path),
                             "--out-dir", str(out)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_built(proc, prefix_holder, timeout=60):
    """Wait until the run printed its prefix and its sandboxes exist."""
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline()
    assert "prefix" in line, line
    prefix = line.split("prefix")[-1].strip()
    prefix_holder.append(prefix)
    while time.monotonic() < deadline:
        names = [n for n in netns_names() if n.startswith(prefix + "-")]
        if any(n.count("-") >= 2 for n in names):    # a sandbox namespace: build is far along
            return prefix
        time.sleep(0.05)
    raise AssertionError("topology was not built in time")


def test_sigint_mid_run_leaves_nothing(tmp_path, snapshot):
    proc = _start(SCENARIOS / "network-isolation.yaml", tmp_path)
    held = []
    try:
        prefix = _wait_built(proc, held)
        time.sleep(2.5)                      # into the probes
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out
    assert "interrupted" in out
    assert not [n for n in netns_names() if n.startswith(prefix + "-")]
    assert not os.path.exists(f"/run/pynet-scenario/{prefix}.pid")
    assert not os.path.exists(f"/tmp/pynet-scenario/{prefix}")


def test_sigkill_leftovers_are_cleaned_by_the_next_run(tmp_path, snapshot):
    proc = _start(SCENARIOS / "bridge-reachability.yaml", tmp_path)
    held = []
    try:
        prefix = _wait_built(proc, held)
        proc.kill()                          # no teardown at all
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    # the workers notice their runner is gone and undo their pynet objects;
    # the namespaces stay until the next run's start-up cleanup
    code = ("from pynet.scenario.topology import cleanup_stale; print(cleanup_stale())")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and [n for n in netns_names() if n.startswith(prefix + "-")]:
        time.sleep(0.1)
    assert not [n for n in netns_names() if n.startswith(prefix + "-")]
    assert not os.path.exists(f"/tmp/pynet-scenario/{prefix}")
    # no worker of the killed run survives
    time.sleep(0.5)
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert not [x for x in ps.splitlines() if "pynet.scenario.worker" in x and prefix in x]


def test_invalid_file_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("hosts: {h1: {}}\nexpect:\n  - reach: {from: h1, to: 198.51.100.1}\n")
    r = run_cli("run", bad)
    assert r.returncode == 2
    assert "outside the scenario's topology" in r.stdout
