"""Does a requirements lock (requirements/<extra>.lock) agree with pyproject.toml?

    python scripts/lib/lockcheck.py EXTRA      exit 0 when it agrees, else 1 and one line per problem

"Agrees" means: every dependency pyproject.toml declares for EXTRA (the base dependencies, plus
the extra's) is pinned in the lock with `==` at a version its specifier allows and with hashes;
every pin the lock says pyproject asked for (`# via pynet (pyproject.toml)`) is still declared;
every pin has at least one hash. The transitive pins are the resolver's (scripts/lock), not checked.

Standard library plus `packaging` (pip's vendored copy when the venv has no packaging of its own),
since scripts/lib/common.sh runs it in a venv that holds only the locked packages.
"""
from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # a venv with the base lock only: pip's vendored copy is the same library
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]
    from pip._vendor.packaging.version import Version  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "pynet"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)\s*(?:;\s*([^\\]*?))?\s*\\?$")
_VIA_PROJECT = f"{PROJECT} (pyproject.toml)"
# the lock of pyproject's [build-system] requires: pynet itself installs with --no-build-isolation
# from it, so that step is hash-checked too
BUILD_SYSTEM = "build-system"


def lock_path(extra: str, root: Path = ROOT) -> Path:
    """requirements/<extra>.lock; the base install (no extra) is requirements/base.lock."""
    return root / "requirements" / f"{extra or 'base'}.lock"


@dataclass
class Pin:
    name: str
    version: str
    marker: str = ""   # a universal lock's environment marker ("" = everywhere)
    hashes: int = 0
    via: list[str] = field(default_factory=list)


def parse_lock(text: str) -> dict[str, list[Pin]]:
    """The pins of a `uv pip compile --generate-hashes` (or pip-compile) output, by canonical name
    (a universal lock may pin one name twice under exclusive markers)."""
    pins: dict[str, list[Pin]] = {}
    cur: Pin | None = None
    in_via = False
    for raw in text.splitlines():
        line = raw.strip()
        m = _PIN.match(raw)
        if m:
            cur = Pin(canonicalize_name(m.group(1)), m.group(3), (m.group(4) or "").strip())
            pins.setdefault(cur.name, []).append(cur)
            in_via = False
            cur.hashes += line.count("--hash=")
            continue
        if cur is None:
            continue
        if line.startswith("--hash="):
            cur.hashes += line.count("--hash=")
        elif line.startswith("# via"):
            rest = line[len("# via"):].strip()
            in_via = not rest
            if rest:
                cur.via.append(rest)
        elif in_via and line.startswith("#"):
            item = line.lstrip("#").strip()
            if item:
                cur.via.append(item)
        else:
            in_via = False
    return pins


def declared(extra: str, root: Path = ROOT) -> list[Requirement]:
    """pyproject.toml's requirements for EXTRA: the base dependencies plus the extra's; for
    BUILD_SYSTEM, what building pynet itself needs ([build-system] requires)."""
    data = tomllib.loads((root / "pyproject.toml").read_text())
    if extra == BUILD_SYSTEM:
        return [Requirement(r) for r in data["build-system"]["requires"]]
    project = data["project"]
    reqs = list(project.get("dependencies", []))
    if extra:
        extras = project.get("optional-dependencies", {})
        if extra not in extras:
            raise SystemExit(f"pyproject.toml has no extra {extra!r} (has: {', '.join(sorted(extras))})")
        reqs += extras[extra]
    return [Requirement(r) for r in reqs]


def problems(extra: str, root: Path = ROOT) -> list[str]:
    path = lock_path(extra, root)
    if not path.is_file():
        return [f"{path.relative_to(root)} is missing"]
    rel = path.relative_to(root)
    pins = parse_lock(path.read_text())
    out: list[str] = []
    wanted: dict[str, Requirement] = {}
    for req in declared(extra, root):
        name = canonicalize_name(req.name)
        wanted[name] = req
        got = pins.get(name)
        if not got:
            out.append(f"{rel}: {req} is declared in pyproject.toml but not pinned")
            continue
        for pin in got:
            if not req.specifier.contains(Version(pin.version), prereleases=True):
                out.append(f"{rel}: {name}=={pin.version} does not satisfy pyproject.toml's {req}")
    for name, got in pins.items():
        for pin in got:
            if pin.hashes == 0:
                out.append(f"{rel}: {name}=={pin.version} has no --hash")
            if (_VIA_PROJECT in pin.via or "-r -" in pin.via) and name not in wanted:
                out.append(f"{rel}: {name}=={pin.version} is pinned for pyproject.toml, which no longer declares it")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    found = problems(argv[0])
    for p in found:
        print(p, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
