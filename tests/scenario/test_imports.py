"""scapy stays off the plugin's, the CLI's and the core's import paths, and
off the scenario runner process itself (only probe agents import it)."""
import subprocess
import sys

import pytest

from tests.support.scenario import REPO


@pytest.mark.parametrize("module", [
    "pynet.plugin_api.app", "pynet.cli", "pynet.cnm.controller", "pynet.drivers.bridge",
    "pynet.daemon", "pynet.scenario", "pynet.scenario.cli", "pynet.scenario.runner",
    "pynet.scenario.host", "pynet.scenario.graph",
])
def test_no_scapy(module):
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            "bad = sorted(m for m in sys.modules if m == 'scapy' or m.startswith('scapy.')); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, f"{module} imports scapy: {r.stdout} {r.stderr}"


def test_importtime_shows_no_scapy():
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pynet.plugin_api.app"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "scapy" not in r.stderr
