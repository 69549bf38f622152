"""The test tree stays one package (tests/README.md): any set of test directories runs in one
pytest call because every module, conftest and helper is imported by its full name
(``tests.<dir>.<module>``), never through ``sys.path`` edits or bare sibling names."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
SELF = Path(__file__).resolve()

# any assignment to or mutation of sys.path, also inside the source of a child process
SYS_PATH_EDIT = re.compile(r"sys\.path\s*(\.\s*(insert|append|extend|remove)\s*\(|\[[^\]]*\]\s*=|\+=|=(?!=))")


def _py_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def _tree_names() -> set[str]:
    """Basenames of the modules and packages under tests/: importable only as tests.<...>."""
    names = {p.stem for p in _py_files() if p.stem != "__init__"}
    names |= {p.name for p in TESTS.rglob("*") if p.is_dir() and (p / "__init__.py").exists()}
    return names - {"tests"}


def test_every_test_directory_is_a_package():
    dirs = {p.parent for p in _py_files()}
    missing = sorted(_rel(d) for d in dirs if not (d / "__init__.py").exists())
    assert missing == [], f"directories with Python files but no __init__.py: {missing}"


@pytest.mark.parametrize("path", [p for p in _py_files() if p != SELF], ids=_rel)
def test_no_sys_path_edit(path):
    hits = [f"{_rel(path)}:{n}: {line.strip()}"
            for n, line in enumerate(path.read_text().splitlines(), 1) if SYS_PATH_EDIT.search(line)]
    assert hits == [], "sys.path edits (import by full name instead):\n" + "\n".join(hits)


@pytest.mark.parametrize("path", _py_files(), ids=_rel)
def test_imports_name_test_modules_in_full(path):
    """No ``from conftest import``, ``import harness``, ``from .x import``: a module of the test
    tree is imported as ``tests.<dir>.<module>``."""
    siblings = _tree_names()
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                bad.append(f"{node.lineno}: relative import from {'.' * node.level}{node.module or ''}")
            elif node.module.split(".")[0] in siblings:
                bad.append(f"{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            bad += [f"{node.lineno}: import {a.name}" for a in node.names
                    if a.name.split(".")[0] in siblings]
    assert bad == [], f"{_rel(path)}: imports of test-tree modules by a bare name:\n" + "\n".join(bad)


def test_the_guard_knows_the_bad_forms():
    # the checks above would pass vacuously if their patterns matched nothing
    assert SYS_PATH_EDIT.search('sys.path.insert(0, os.path.dirname(__file__))')
    assert SYS_PATH_EDIT.search('sys.path[:0] = [ROOT]')
    assert SYS_PATH_EDIT.search('sys.path = [ROOT] + sys.path')
    assert not SYS_PATH_EDIT.search('if root not in sys.path:')
    assert {"conftest", "harness", "fakes", "test_docker_bridge", "support"} <= _tree_names()


def test_directories_that_used_to_clash_collect_together():
    """tests/contract's tests imported ``conftest`` by its bare name and got another directory's
    when both were in one call; collect a set of directories (all light) in one process."""
    dirs = ["tests/store", "tests/contract", "tests/cni", "tests/scenario"]
    p = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        *dirs], cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    collected = {line.split("::")[0].split("/")[1] for line in p.stdout.splitlines() if "::" in line}
    assert collected == {d.split("/")[1] for d in dirs}, p.stdout[-3000:]
