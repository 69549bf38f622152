"""requirements/*.lock: the hash-pinned locks that scripts/run, scripts/test and benchmarks/run
install from (scripts/lib/common.sh), and the check that they agree with pyproject.toml.

The check (scripts/lib/lockcheck.py) is what fails when someone edits pyproject's dependencies
without `scripts/lock`; the negative controls below make each kind of disagreement on a copy and
prove it is reported.  The venv this test runs in was made by scripts/test, so its installed
versions are compared with the test lock's pins: the lock is really the thing installed.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest
from packaging.markers import Marker

REPO = Path(__file__).resolve().parents[2]


def _load_lockcheck():
    spec = importlib.util.spec_from_file_location("pynet_lockcheck", REPO / "scripts" / "lib" / "lockcheck.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


lockcheck = _load_lockcheck()


def extras_the_scripts_install() -> set[str]:
    """Every `pynet_ensure_venv EXTRA` in the scripts ("" for the base install)."""
    found = set()
    for path in [REPO / "scripts" / "run", REPO / "scripts" / "test", REPO / "benchmarks" / "run"]:
        for m in re.finditer(r'^\s*pynet_ensure_venv\s+("?)([A-Za-z0-9_-]*)\1\s*$', path.read_text(), re.M):
            found.add(m.group(2))
    return found


def test_every_script_extra_has_a_lock():
    extras = extras_the_scripts_install()
    assert extras >= {"", "test", "bench"}, extras
    for extra in extras:
        assert lockcheck.lock_path(extra).is_file(), extra


@pytest.mark.parametrize("extra", ["", "test", "bench", lockcheck.BUILD_SYSTEM])
def test_lock_agrees_with_pyproject(extra):
    assert lockcheck.problems(extra) == [], "run scripts/lock"


def test_installed_versions_are_the_test_locks():
    pins = lockcheck.parse_lock(lockcheck.lock_path("test").read_text())
    wrong = []
    for name, alternatives in pins.items():
        pin = [p for p in alternatives if not p.marker or Marker(p.marker).evaluate()]
        if not pin:
            continue
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have != pin[0].version:
            wrong.append(f"{name}: installed {have}, locked {pin[0].version}")
    assert wrong == []


@pytest.fixture
def copy(tmp_path):
    """A copy of pyproject.toml and requirements/ to break on purpose."""
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "requirements", tmp_path / "requirements")
    assert lockcheck.problems("test", tmp_path) == []
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_a_dependency_added_without_relocking_is_reported(copy):
    _edit(copy / "pyproject.toml", '"pyyaml>=6.0",', '"pyyaml>=6.0", "six>=1.16",')
    for extra in ["", "test", "bench"]:
        assert any("six>=1.16 is declared" in p for p in lockcheck.problems(extra, copy)), extra


def test_a_dependency_removed_without_relocking_is_reported(copy):
    _edit(copy / "pyproject.toml", '"netaddr>=1.0",', "")
    assert any("netaddr" in p and "no longer declares" in p for p in lockcheck.problems("", copy))


def test_a_raised_floor_is_reported(copy):
    _edit(copy / "pyproject.toml", '"flask>=3.0"', '"flask>=99"')
    assert any("does not satisfy" in p and "flask>=99" in p for p in lockcheck.problems("", copy))


def test_a_pin_without_hashes_is_reported(copy):
    lock = copy / "requirements" / "base.lock"
    lock.write_text(re.sub(r"(?m)^\s*--hash=sha256:[0-9a-f]+\s*\\?\n", "", lock.read_text()))
    assert any("has no --hash" in p for p in lockcheck.problems("", copy))


def test_each_problem_is_one_line_naming_the_lock(copy):
    _edit(copy / "pyproject.toml", '"flask>=3.0"', '"flask>=99"')
    found = lockcheck.problems("test", copy)
    assert found and all(line.startswith("requirements/test.lock: ") for line in found)
    assert lockcheck.main(["test"]) == 0  # the real checkout agrees
