"""What pynet last applied, per owner: the memory that lets a change touch only its own rules.

A change (a network, an endpoint, a published port) is applied by deleting its owner's
old rules by their exact spec and inserting the new ones (:meth:`Firewall.apply` with
``changed``).  The old rules of an owner whose record is gone can't be rendered again,
and a CNI binary working in-process is a fresh process each time, so the rules applied
per owner are written down here, beside the state, under the same ``firewall.lock`` as
the change itself.  One small file per owner and family: a change reads and writes only
its own owners' entries, whatever else exists.

The ledger is a cache of the kernel, never the truth: when it is stale (someone flushed
the tables, a run died between its batch and its entry) a delete it asks for is refused,
the change is undone and a full reconcile from the kernel's own tables takes over; the
periodic re-check and daemon start rewrite it from scratch.  Entry: ``{"owner", "kind",
"rules": [[table, chain, [tokens...]], ...]}``; the base entry (owner ``base``) also has
``"chains"``, the chains declared per table.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os


class MemoryLedger:
    """The ledger of one process (a Firewall built without a state directory)."""

    def __init__(self):
        self._data: dict[str, dict[str, dict]] = {}

    def get(self, family: str, owner: str) -> dict | None:
        return self._data.get(family, {}).get(owner)

    def put(self, family: str, owner: str, entry: dict | None) -> None:
        fam = self._data.setdefault(family, {})
        if entry is None:
            fam.pop(owner, None)
        else:
            fam[owner] = entry

    def replace(self, family: str, entries: dict[str, dict]) -> None:
        self._data[family] = dict(entries)

    def clear(self) -> None:
        self._data.clear()


class FileLedger:
    """The ledger in ``root/<family>/<digest of the owner>.json`` (shared by every process
    of one state directory and chain prefix)."""

    def __init__(self, root: str):
        self.root = root

    def _path(self, family: str, owner: str) -> str:
        digest = hashlib.sha256(owner.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        return os.path.join(self.root, family, digest + ".json")

    def get(self, family: str, owner: str) -> dict | None:
        try:
            with open(self._path(family, owner), encoding="utf-8") as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return None  # unknown: a full reconcile or the re-check puts it right
        if not isinstance(entry, dict) or entry.pop("owner", None) != owner:
            return None
        return entry

    def put(self, family: str, owner: str, entry: dict | None) -> None:
        path = self._path(family, owner)
        if entry is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        self._write(path, dict(entry, owner=owner))

    @staticmethod
    def _write(path: str, entry: dict) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(entry, f, separators=(",", ":"))
        os.replace(tmp, path)  # readers see the old entry or the new one, never half

    def replace(self, family: str, entries: dict[str, dict]) -> None:
        """The whole family's ledger (after a full reconcile); unchanged files stay."""
        folder = os.path.join(self.root, family)
        wanted = {}
        for owner, entry in entries.items():
            wanted[os.path.basename(self._path(family, owner))] = dict(entry, owner=owner)
        try:
            present = set(os.listdir(folder))
        except FileNotFoundError:
            present = set()
        for name in present - set(wanted):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name))
        for name, entry in wanted.items():
            path = os.path.join(folder, name)
            if name in present:
                try:
                    with open(path, encoding="utf-8") as f:
                        if json.load(f) == entry:
                            continue
                except (OSError, ValueError):
                    pass
            self._write(path, entry)

    def clear(self) -> None:
        for family in ("ipv4", "ipv6"):
            self.replace(family, {})
