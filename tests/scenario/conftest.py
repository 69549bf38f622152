"""Helpers of the scenario tests: run ``python -m pynet.scenario`` as a
subprocess (the way users and CI run it) and snapshot the machine's
namespaces and root-namespace links to prove nothing is left behind."""
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


@pytest.fixture
def snapshot():
    """Yields; afterwards asserts no scenario namespace, root link or work
    dir appeared."""
    ns0, links0 = netns_names(), root_links()
    yield
    assert netns_names() - ns0 == set(), "scenario namespaces left behind"
    assert root_links() - links0 == set(), "scenario links in the root namespace"
    work = Path("/tmp/pynet-scenario")
    assert not work.exists() or not [d for d in work.iterdir() if d.name not in _WORK0], \
        "scenario work dirs left behind"


_WORK0 = {d.name for d in Path("/tmp/pynet-scenario").iterdir()} if Path("/tmp/pynet-scenario").exists() else set()
