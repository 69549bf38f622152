"""``benchmarks/run --quick`` completes and writes a well-formed report (root, real dockerd,
namespaces, iptables, pynet daemons). Its figures are not asserted: this is a smoke run on a
shared machine; the committed full report under benchmarks/report/ is where the numbers are.

The run takes its own prefix (harness.RunLock, as every benchmark does), names every resource
with it and removes them at the end; the test checks nothing with that prefix is left.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from benchmarks import runner

ROOT = Path(__file__).resolve().parents[2]

# the run takes about a minute on a quiet machine, several under load: more than the default 240 s
pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    assert os.geteuid() == 0, "benchmarks/run needs root (run through ./scripts/test as root)"
    out = tmp_path_factory.mktemp("bench") / "report"
    p = subprocess.run([str(ROOT / "benchmarks" / "run"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, f"benchmarks/run --quick exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    return out, json.loads((out / "report.json").read_text())


def test_every_expected_comparison_is_reported(quick_report):
    _, rep = quick_report
    assert rep["errors"] == []
    assert set(rep["expected"]) == set(runner.EXPECTED)
    got = {c["id"] for c in rep["comparisons"]}
    assert got | set(rep["skipped"]) == set(runner.EXPECTED)
    assert not got & set(rep["skipped"])
    for c in rep["comparisons"]:
        assert c["pynet"]["n"] >= 1 and c["peer"]["n"] >= 1, c["id"]
        assert math.isfinite(c["ratio"]) and c["ratio"] > 0, c["id"]
        assert c["noise"] >= 0, c["id"]
        if c["goal"] is not None:
            assert isinstance(c["met"], bool), c["id"]
    assert rep["not_measured"] == []      # the overlay curve landed (issue 15)
    for key in ("cores", "kernel", "dockerd", "containerd", "iptables", "etcd", "python"):
        assert rep["machine"][key], key
    assert len(rep["load"]["start"]) == len(rep["load"]["end"]) == 3


def test_every_curve_has_both_series_and_a_png_named_in_the_markdown(quick_report):
    from PIL import Image

    out, rep = quick_report
    md = (out / "report.md").read_text()
    assert set(rep["curves"]) == set(runner.CURVES)
    for name, c in rep["curves"].items():
        assert c["series"]["pynet"] and c["series"]["peer"], name
        png = out / c["png"]
        with Image.open(png) as im:
            im.verify()  # a PNG that decodes
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200, name
        assert f"]({c['png']})" in md, name
    assert {p.name for p in out.glob("*.png")} == {c["png"] for c in rep["curves"].values()}
    assert "not yet measured" not in md


def test_the_run_left_nothing_behind(quick_report):
    _, rep = quick_report
    prefix = rep["prefix"]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert prefix not in netns
    assert prefix not in links


def test_compare_of_a_report_with_itself_moves_nothing(quick_report, capsys):
    out, _ = quick_report
    assert runner.compare(str(out), str(out / "report.json")) == 0
    assert "0 ratio(s) moved" in capsys.readouterr().out
