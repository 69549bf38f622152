"""Helpers of the scenario tests (tests/scenario): run ``python -m pynet.scenario`` as a
subprocess (the way users and CI run it) and list the machine's scenario namespaces and
root-namespace links (the ``snapshot`` fixture in tests/scenario/conftest.py proves with them
that nothing is left behind)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "scenarios"
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")


def netns_names() -> set[str]:
    try:
        return {n for n in os.listdir("/var/run/netns") if n.startswith("ps")}
    except FileNotFoundError:
        return set()


_OURS = re.compile(r"\bps[0-9a-f]{5}-")


def root_links() -> set[str]:
    """Root-namespace links that belong to a scenario run: named with a run
    prefix, or tagged (alias ``pynet:<instance>``) by a scenario host's pynet
    instance ``<prefix>-<host>``.  Other engineers' tests create pynet links
    in the root namespace in parallel; those are not ours."""
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    ours = set()
    for line in out.splitlines():
        if ":" not in line:
            continue
        name = line.split(":")[1].strip().split("@")[0]
        if _OURS.match(name + "-") or _OURS.search(line.split("alias", 1)[1] if "alias" in line else ""):
            ours.add(name)
    return ours


def run_cli(*args, timeout=170, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pynet.scenario", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_scenario_passes(path, tmp_path, min_tests: int = 1) -> None:
    """``pynet scenario run PATH`` passes: exit 0, every line PASS, a JUnit file without
    failures or errors (at least ``min_tests`` cases), and no pcap (pcaps are for failures)."""
    import xml.etree.ElementTree as ET

    junit = tmp_path / "junit.xml"
    r = run_cli("run", path, "--junit", junit, "--out-dir", tmp_path / "out")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAIL" not in r.stdout and "PASS" in r.stdout
    root = ET.parse(junit).getroot()
    assert root.get("failures") == "0" and root.get("errors") == "0"
    assert int(root.get("tests")) >= min_tests
    assert not (tmp_path / "out").exists()          # no failure, no pcap
