"""The architecture's rules, checked on every ``./scripts/test`` run:

* the import contracts of ``[tool.importlinter]`` in pyproject.toml (layers,
  Docker and CNI front ends independent, the shim a leaf, the CNI ADD path
  lean, driver modules named only by the composition root) -- run with the
  venv's ``lint-imports``, its report shown when one breaks;
* no import cycle anywhere in ``pynet/``, imports inside functions included
  (grimp's graph, the one import-linter builds, records those too);
* the CNI shim imports the standard library only;
* front ends never touch the store object (they call the core's verbs).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[2]

# Edges a cycle may use, each with the change that removes it: none today.
ALLOWED_CYCLE_EDGES: set[tuple[str, str]] = set()


def test_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    assert lint.exists(), f"{lint} missing: install the test extra (pip install -e '.[test]')"
    r = subprocess.run([str(lint), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"lint-imports failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
    assert ", 0 broken" in r.stdout, r.stdout


def _cycles(graph, skip: set) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module
    importing itself), by Tarjan's algorithm, iteratively (no recursion limit)."""
    def deps(m):
        return sorted(d for d in graph.find_modules_directly_imported_by(m) if (m, d) not in skip)

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(deps(start)))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(deps(w))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1 or v in deps(v):
                    found.append(sorted(comp))
    return found


def _describe(graph, comp: list[str], skip: set) -> str:
    members = set(comp)
    lines = [f"cycle of {len(comp)} modules: {', '.join(comp)}"]
    for m in comp:
        for d in sorted(graph.find_modules_directly_imported_by(m)):
            if d in members and (m, d) not in skip:
                where = graph.get_import_details(importer=m, imported=d)
                at = ", ".join(f"l.{x['line_number']}" for x in where)
                lines.append(f"  {m} -> {d} ({at})")
    return "\n".join(lines)


def test_no_import_cycles_in_pynet():
    graph = grimp.build_graph("pynet", cache_dir=None)
    cycles = _cycles(graph, ALLOWED_CYCLE_EDGES)
    assert not cycles, "import cycles in pynet/:\n" + "\n".join(
        _describe(graph, c, ALLOWED_CYCLE_EDGES) for c in cycles)


def test_the_cycle_finder_names_a_cycle():
    """The finder itself: a cycle through a function-level import is found and named."""
    class Graph:
        modules = {"a", "b", "c", "d"}
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

        def find_modules_directly_imported_by(self, m):
            return self.edges[m]

        def get_import_details(self, importer, imported):
            return [{"line_number": 7}]

    g = Graph()
    assert _cycles(g, set()) == [["a", "b", "c"]]
    assert "a -> b (l.7)" in _describe(g, ["a", "b", "c"], set())
    assert _cycles(g, {("c", "a")}) == []


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level name) of every import statement, inside functions too;
    a relative import is named ``.``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.lineno, "." if node.level else (node.module or "").split(".")[0]))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "__import__", "import_module"):
            out.append((node.lineno, "<dynamic import>"))
    return out


def test_cni_shim_imports_only_the_standard_library():
    shim = REPO / "pynet" / "cni" / "shim.py"
    found = _imports(shim)
    assert found, "no imports found: the parser is not reading the shim"
    bad = [(line, name) for line, name in found if name not in sys.stdlib_module_names]
    assert not bad, f"{shim} must import only the standard library: {bad}"


FRONT_ENDS = ["pynet/cli.py", "pynet/daemon.py", "pynet/doctor.py", "pynet/cni", "pynet/plugin_api",
              "pynet/scenario"]


def _front_end_files():
    for entry in FRONT_ENDS:
        p = REPO / entry
        yield from (sorted(p.rglob("*.py")) if p.is_dir() else [p])


def test_front_ends_never_reach_into_the_controllers_store():
    """The import contract keeps ``pynet.store`` out of the front ends; this keeps them from
    the store object too (``controller.store.get(...)``): they call the core's verbs, and pass
    a txn they got from ``Controller.txn`` down without looking inside."""
    found = []
    for path in _front_end_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "store" and \
                    isinstance(node.value, (ast.Name, ast.Attribute)):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not found, "front ends touching the store: " + ", ".join(found)
