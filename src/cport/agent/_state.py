"""The agent's policy state: load, compile, and reload atomically.

A reload reads every file again and compiles a complete new table before anything changes;
an invalid change (a bad policy, an unreadable file, an inventory error) keeps the last good
table and is reported with file and line. Policy-only changes go through the compiler's
incremental `update`; an inventory change recompiles, keeping every identity already handed
out (the allocator persists them) and the token identities seen so far.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cport.engine import Compiler, Table
from cport.errors import InputError, InputErrors
from cport.identity import IdentityAllocator, Labels
from cport.model import Bundle, Inventory, Policy, PolicyKey, load

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass
class ReloadResult:
    changed: bool
    table: Table
    errors: list[InputError] = field(default_factory=list)
    full: bool = False  # recompiled from scratch (inventory changed)
    seconds: float = 0.0


def fingerprint(paths: Iterable[Path]) -> Fingerprint:
    """(path, mtime_ns, size) of every YAML file under `paths`: cheap to take every second."""
    out: list[tuple[str, int, int]] = []
    for root in paths:
        files = [root] if not root.is_dir() else sorted(root.rglob("*"))
        for f in files:
            if f.is_dir() or (root.is_dir() and f.suffix not in (".yaml", ".yml", ".json")):
                continue
            try:
                st = f.stat()
            except OSError:
                out.append((str(f), -1, -1))
                continue
            out.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(out)


def _inventory_key(inv: Inventory) -> tuple[object, ...]:
    return tuple((w, inv.identity_labels(w)) for w in inv)


class PolicyState:
    """The current table and what it was built from. Thread-safe: the API, the gateway and
    the reloader may call in from different threads."""

    def __init__(
        self,
        policies: Iterable[Path],
        inventory: Iterable[Path],
        *,
        cluster: str = "default",
        state_dir: Path | None = None,
    ) -> None:
        self.policy_paths = tuple(policies)
        self.inventory_paths = tuple(inventory)
        self.cluster = cluster
        self.allocator = IdentityAllocator(state_dir)
        self._lock = threading.RLock()
        self._extra: dict[Labels, int] = {}
        self.bundle = Bundle()
        self.compiler = Compiler(Inventory(), self.allocator)
        self.table = self.compiler.compile([])
        self.fingerprint: Fingerprint = ()
        self.last_errors: list[InputError] = []
        self.last_reload = 0.0
        # Called (on the caller's thread) after a runtime identity add made a new table, so
        # enforcers can realise it: the agent re-checks and syncs.
        self.on_identity_added: Callable[[Table], object] | None = None

    @property
    def paths(self) -> tuple[Path, ...]:
        return (*self.policy_paths, *self.inventory_paths)

    def _read(self) -> Bundle:
        bundle = load([*self.policy_paths, *self.inventory_paths], cluster=self.cluster)
        return bundle

    def load(self) -> Table:
        """The first load: raises :class:`InputErrors` (the agent does not start on a bad
        policy set)."""
        with self._lock:
            self.fingerprint = fingerprint(self.paths)
            bundle = self._read()
            self._install(bundle, full=True)
            self.last_reload = time.time()
            return self.table

    def reload(self, *, force: bool = False) -> ReloadResult:
        """Reload if any file changed (or `force`). Never half-applied: on any error the
        previous table stays in force and the errors are returned (and kept in
        `last_errors` until a good reload)."""
        with self._lock:
            fp = fingerprint(self.paths)
            if fp == self.fingerprint and not force:
                return ReloadResult(False, self.table)
            self.fingerprint = fp
            started = time.perf_counter()
            try:
                bundle = self._read()
            except InputErrors as exc:
                self.last_errors = list(exc.errors)
                return ReloadResult(False, self.table, list(exc.errors))
            full = _inventory_key(bundle.inventory) != _inventory_key(self.bundle.inventory)
            before = self.table.revision
            self._install(bundle, full=full)
            self.last_errors = []
            self.last_reload = time.time()
            return ReloadResult(
                self.table.revision != before,
                self.table,
                full=full,
                seconds=time.perf_counter() - started,
            )

    def _install(self, bundle: Bundle, *, full: bool) -> None:
        if full:
            compiler = Compiler(
                bundle.inventory, self.allocator, extra_identities=list(self._extra)
            )
            # Keep the revision counter monotonic across recompiles.
            compiler.revision = self.table.revision
            self.table = compiler.compile(bundle.policies)
            self.compiler = compiler
        else:
            old: dict[PolicyKey, Policy] = {p.key: p for p in self.bundle.policies}
            new: dict[PolicyKey, Policy] = {p.key: p for p in bundle.policies}
            upsert = [p for k, p in new.items() if old.get(k) != p]
            remove = [k for k in old if k not in new]
            if upsert or remove:
                self.table = self.compiler.update(upsert=upsert, remove=remove)
        self.bundle = bundle

    def known_identity(self, labels: Labels) -> int | None:
        """The identity of a label set already added (a dict lookup; any thread)."""
        return self._extra.get(labels)

    def identity_for(self, labels: Labels) -> tuple[int, Table]:
        """The numeric identity of a verified credential's label set, adding it (and its
        rows) to the table the first time it is seen."""
        num = self._extra.get(labels)
        if num is not None:
            return num, self.table
        with self._lock:
            table, (num,) = self.compiler.add_identities([labels])
            self._extra[labels] = num
            self.table = table
        if self.on_identity_added is not None:
            self.on_identity_added(table)
        return num, table

    def status(self) -> dict[str, object]:
        return {
            "revision": self.table.revision,
            "policies": len(self.table.policies),
            "identities": len(self.table.identities),
            "workloads": len(list(self.bundle.inventory)),
            "lastReload": self.last_reload,
            "errors": [e.to_json() for e in self.last_errors],
            "paths": [os.fspath(p) for p in self.paths],
        }


__all__ = ["PolicyState", "ReloadResult", "fingerprint"]
