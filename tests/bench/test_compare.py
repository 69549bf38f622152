"""``benchmarks/run --compare OLD NEW``: a ratio is reported as moved only beyond the noise its
two reports' spreads give it (no root, synthetic reports)."""
from __future__ import annotations

import json

from benchmarks import runner


def _report(tmp_path, name, ratios_noise):
    comps = []
    for cid, (ratio, noise) in ratios_noise.items():
        side = {"median": ratio, "q1": ratio, "q3": ratio, "min": ratio, "max": ratio, "n": 5}
        comps.append({"id": cid, "title": runner.EXPECTED[cid][1], "ratio": ratio, "noise": noise,
                      "goal_op": runner.EXPECTED[cid][2], "goal": runner.EXPECTED[cid][3], "pynet": side,
                      "peer": side})
    d = tmp_path / name
    d.mkdir()
    (d / "report.json").write_text(json.dumps({"date": name, "comparisons": comps}))
    return str(d)


def test_only_ratios_beyond_the_noise_are_printed(tmp_path, capsys):
    old = _report(tmp_path, "old", {"cni.direct.daemon": (0.9, 0.10), "docker.run.pynet_ipam": (1.0, 0.05),
                                    "ipam.daemon.allocator": (100.0, 0.05)})
    new = _report(tmp_path, "new", {"cni.direct.daemon": (0.95, 0.10),  # +5 %: inside 10 % noise
                                    "docker.run.pynet_ipam": (1.5, 0.05),  # +50 %: moved, worse
                                    "ipam.daemon.allocator": (150.0, 0.05)})  # rate up: moved, better
    assert runner.compare(old, new) == 0
    out = capsys.readouterr().out
    assert "2 ratio(s) moved by more than the noise, 1 within it" in out
    assert "docker run -d (API), pynet + pynet IPAM / bridge: 1.00 -> 1.50" in out and "worse" in out
    assert "allocator (Ipam+SqliteStore) calls/s / host-local exec: 100.00 -> 150.00" in out
    assert "better" in out
    assert "CNI ADD+DEL" not in out


def test_scale_option_is_checked_with_one_readable_line():
    import pytest

    assert runner.parse_scale("networks=10,leases=200", quick=False) == {
        "networks": 10, "endpoints": 1000, "ports": 1000, "leases": 200, "overlay": 200}
    with pytest.raises(SystemExit, match="--scale wants"):
        runner.parse_scale("hosts=3", quick=True)
