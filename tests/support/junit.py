"""The outcome of each test of a pytest sub-run, from its junit XML (``-o junit_family=xunit2
-o junit_logging=all``): used by the tests that run tests elsewhere and report one item per
node id (tests/vm/test_kernel_lab.py: in the kernel lab VM; tests/e2e/test_docker_legacy.py:
on a legacy-iptables host in a namespace)."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class CaseResult:
    nodeid: str
    outcome: str                      # passed | failed | error | skipped
    message: str = ""
    output: str = ""


def _nodeid(classname: str, name: str) -> str:
    """junit classname ``tests.netns.test_x`` (+ ``.Class``) and name -> a pytest node id."""
    parts = classname.split(".")
    for i in range(len(parts), 0, -1):
        path = Path(*parts[:i]).with_suffix(".py")
        if (REPO / path).exists():
            return "::".join([str(path), *parts[i:], name])
    return f"{classname}::{name}"


def parse_junit(path: Path) -> dict:
    cases = {}
    if not path.exists():
        return cases
    for tc in ET.parse(path).getroot().iter("testcase"):
        nid = _nodeid(tc.get("classname", ""), tc.get("name", ""))
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (el.get("message") or "") + "\n" + (el.text or "")
                break
        out = "\n".join((tc.findtext(t) or "") for t in ("system-out", "system-err")).strip()
        cases[nid] = CaseResult(nid, outcome, message.strip(), out)
    return cases
