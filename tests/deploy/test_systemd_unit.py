"""deploy/systemd: the unit and its example drop-in pass ``systemd-analyze verify``.

This machine does not run systemd, so the unit is verified, not booted: in a temporary root
(``--root``) holding a copy of the distribution's units (verify resolves ``multi-user.target``,
``sysinit.target``... there), the unit under /etc/systemd/system, the example drop-in with every
option uncommented, and an executable where ExecStart points.  Any message counts as a failure:
verify exits 0 on "Unknown key ... ignoring", so its output is checked too.  Two negative
controls prove the harness really verifies (a bogus key and a missing binary are reported).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "pynet.service"
DROPIN = REPO / "deploy" / "systemd" / "pynet.service.d" / "10-options.conf.example"
ANALYZE = shutil.which("systemd-analyze")
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def exec_start(text: str) -> str:
    lines = [m.group(1) for m in re.finditer(r"^ExecStart=(\S+)", text, re.M)]
    assert len(lines) == 1, lines
    return lines[0]


def make_root(tmp_path: Path, unit_text: str, dropin_text: str | None, binary: bool = True) -> Path:
    root = tmp_path / "root"
    etc = root / "etc" / "systemd" / "system"
    (etc / "pynet.service.d").mkdir(parents=True)
    (etc / "pynet.service").write_text(unit_text)
    if dropin_text is not None:
        (etc / "pynet.service.d" / "10-options.conf").write_text(dropin_text)
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    shutil.copytree(SYSTEM_UNITS, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    (root / "lib").symlink_to("usr/lib")   # the units' own symlinks point into /lib/systemd
    if binary:
        exe = root / exec_start(unit_text).lstrip("/")
        exe.parent.mkdir(parents=True)
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
    return root


def verify(root: Path) -> tuple[int, str]:
    p = subprocess.run([ANALYZE, "verify", f"--root={root}", "pynet.service"], capture_output=True,
                       text=True, timeout=60)
    return p.returncode, (p.stdout + p.stderr).strip()


@pytest.fixture(autouse=True)
def _tools():
    if not ANALYZE:
        pytest.fail("systemd-analyze missing: scripts/test installs Debian's systemd package")
    if not SYSTEM_UNITS.is_dir():
        pytest.fail(f"{SYSTEM_UNITS} missing (Debian's systemd package provides it)")


def uncommented_dropin() -> str:
    # every example option switched on (the ExecStart override too), so each is verified
    return re.sub(r"^#(?=(Environment|ExecStart)=)", "", DROPIN.read_text(), flags=re.M)


def test_unit_and_example_dropin_verify_clean(tmp_path):
    root = make_root(tmp_path, UNIT.read_text(), uncommented_dropin(), binary=False)
    # the drop-in's ExecStart override is what runs: it must exist in the root
    override = [m.group(1) for m in re.finditer(r"^ExecStart=(\S+)", uncommented_dropin(), re.M)]
    assert override
    exe = root / override[-1].lstrip("/")
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert verify(root) == (0, "")


def test_unit_alone_verifies_clean(tmp_path):
    assert verify(make_root(tmp_path, UNIT.read_text(), None)) == (0, "")


def test_unit_says_what_the_issue_asks():
    text = UNIT.read_text()
    assert re.search(r"^Before=.*\bdocker\.service\b", text, re.M)
    assert re.search(r"^Restart=on-failure$", text, re.M)
    assert re.search(r"^StateDirectory=pynet$", text, re.M)
    assert exec_start(text).endswith("/bin/pynet") and re.search(r"^ExecStart=\S+ daemon$", text, re.M)
    caps = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M).group(1).split()
    assert {"CAP_NET_ADMIN", "CAP_SYS_ADMIN"} <= set(caps)
    # no option that gives the service its own mount namespace (see the unit's comment)
    for opt in ("ProtectSystem", "ProtectHome", "PrivateTmp", "ReadWritePaths", "ProtectKernelTunables",
                "PrivateDevices", "PrivateNetwork"):
        assert not re.search(rf"^{opt}=", text, re.M), opt


def test_negative_controls_verify_reports_bad_key_and_missing_binary(tmp_path):
    bad = UNIT.read_text().replace("Restart=on-failure", "Restart=on-failure\nRestartz=1")
    rc, out = verify(make_root(tmp_path / "a", bad, None))
    assert "Unknown key" in out and "Restartz" in out
    rc, out = verify(make_root(tmp_path / "b", UNIT.read_text(), None, binary=False))
    assert rc != 0 and "not executable" in out
