"""Issue 13: the scenario library's firewall scenarios on the other firewall backends
(test_run.py runs the whole library on the default, iptables over nf_tables): legacy
iptables (``PYNET_IPTABLES_BACKEND=legacy``: libiptc in the scenario host's worker) and
pynet's native nftables tables (``PYNET_FIREWALL_BACKEND=nftables``, also handed to the
CNI plugins through the conflist's ``pynet`` section).

The CNI scenarios run on legacy iptables too (a CNI-only host: the scenario host is a
namespace of its own, so its legacy tables sit beside nobody's nf_tables rules): the
plugins run with the runtime's clean environment (``CNI_*`` only), so the scenario host
hands them the worker's backend in the conflist's ``pynet.iptablesBackend``."""
import os

import pytest

from tests.support.scenario import NEEDS_ROOT, SCENARIOS, run_cli

pytestmark = [NEEDS_ROOT, pytest.mark.netns]

FIREWALL_SCENARIOS = ["firewall.yaml", "spoofing.yaml", "network-isolation.yaml", "bridge-reachability.yaml",
                      "cni-bridge.yaml", "cni-mixed.yaml"]
BACKENDS = {"iptables-legacy": {"PYNET_IPTABLES_BACKEND": "legacy"},
            "nftables": {"PYNET_FIREWALL_BACKEND": "nftables"}}
CASES = [(b, s) for b in BACKENDS for s in FIREWALL_SCENARIOS]


@pytest.mark.parametrize("backend,name", CASES, ids=[f"{b}-{s}" for b, s in CASES])
def test_firewall_scenario_passes_on_backend(backend, name, tmp_path, snapshot):
    r = run_cli("run", SCENARIOS / name, "--out-dir", tmp_path / "out", env=BACKENDS[backend])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAIL" not in r.stdout and "PASS" in r.stdout
    assert not (tmp_path / "out").exists()


def test_bad_backend_is_one_line(tmp_path):
    r = run_cli("run", SCENARIOS / "firewall.yaml", "--out-dir", tmp_path / "out",
                env={"PYNET_FIREWALL_BACKEND": "ipfw"})
    assert r.returncode != 0
    assert "invalid PYNET_FIREWALL_BACKEND 'ipfw': want one of iptables, nftables" in r.stdout + r.stderr
