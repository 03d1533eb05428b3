"""Stable numeric identities for label sets, persisted in a state directory.

One label set is one identity, as in Cilium. Allocation is deterministic in order and stable
across restarts: the mapping is kept in ``<state_dir>/identities.json`` (written atomically with
a rename, under an exclusive lock so two processes never hand out the same number).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cport.errors import IdentityError
from cport.identity._labels import Labels
from cport.identity._reserved import FIRST_CLUSTER_ID, FIRST_LOCAL_ID, RESERVED_IDS, reserved_labels

_FORMAT_VERSION = 1


class IdentityAllocator:
    """Maps label sets to numeric identities and back.

    With `state_dir=None` the allocator lives in memory only (tests, one-shot CLI queries).
    Reserved identities are always present. CIDR label sets (those carrying a ``cidr:`` label)
    draw from the local scope, everything else from the cluster scope.

    >>> a = IdentityAllocator()
    >>> a.allocate(Labels.parse("app=web")) == a.allocate(Labels.parse("app=web"))
    True
    """

    def __init__(self, state_dir: Path | None = None) -> None:
        self._state_dir = state_dir
        self._by_labels: dict[Labels, int] = {}
        self._by_id: dict[int, Labels] = {}
        self._next_cluster = FIRST_CLUSTER_ID
        self._next_local = FIRST_LOCAL_ID
        self._dirty = False
        for name, num in RESERVED_IDS.items():
            self._put(reserved_labels(name), num)
        if state_dir is not None:
            self._load()

    # -- queries -------------------------------------------------------------------------
    def lookup(self, labels: Labels) -> int | None:
        return self._by_labels.get(labels)

    def labels_of(self, identity: int) -> Labels | None:
        return self._by_id.get(identity)

    def __iter__(self) -> Iterator[tuple[int, Labels]]:
        return iter(self._by_id.items())

    def __len__(self) -> int:
        return len(self._by_id)

    # -- allocation ----------------------------------------------------------------------
    def allocate(self, labels: Labels) -> int:
        """The identity of `labels`, allocating the next free number if it is new."""
        num = self._by_labels.get(labels)
        if num is not None:
            return num
        if any(lab.source == "cidr" for lab in labels):
            num, self._next_local = self._next_local, self._next_local + 1
        else:
            num, self._next_cluster = self._next_cluster, self._next_cluster + 1
        self._put(labels, num)
        self._dirty = True
        return num

    def allocate_many(self, label_sets: Iterable[Labels]) -> list[int]:
        return [self.allocate(ls) for ls in label_sets]

    def _put(self, labels: Labels, num: int) -> None:
        self._by_labels[labels] = num
        self._by_id[num] = labels

    # -- persistence ---------------------------------------------------------------------
    @property
    def _path(self) -> Path:
        assert self._state_dir is not None
        return self._state_dir / "identities.json"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        assert self._state_dir is not None
        try:
            self._state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._state_dir / "identities.lock", os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as exc:
            raise IdentityError(f"cannot use state directory {self._state_dir}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _load(self) -> None:
        with self._locked():
            self._merge_from_disk()

    def _merge_from_disk(self) -> None:
        try:
            raw = self._path.read_text()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise IdentityError(f"cannot read {self._path}: {exc}") from exc
        try:
            doc = json.loads(raw)
            if doc.get("version") != _FORMAT_VERSION:
                raise ValueError(f"unknown format version {doc.get('version')!r}")
            entries = doc["identities"]
        except (ValueError, KeyError, AttributeError) as exc:
            raise IdentityError(
                f"{self._path} is corrupt ({exc}); move it aside to start a fresh allocation",
                code="identity-state-corrupt",
            ) from exc
        for text, num in entries.items():
            labels = Labels.from_strings(text.split(",") if text else [])
            known = self._by_id.get(num)
            if known is not None and known != labels:
                # A number we handed out in memory was taken on disk by another process:
                # the disk wins, and our label set is renumbered on save.
                del self._by_labels[known]
                self._dirty = True
            self._put(labels, num)
            if num >= FIRST_LOCAL_ID:
                self._next_local = max(self._next_local, num + 1)
            elif num >= FIRST_CLUSTER_ID:
                self._next_cluster = max(self._next_cluster, num + 1)

    def save(self) -> None:
        """Write the mapping to the state directory (no-op in memory or when unchanged)."""
        if self._state_dir is None or not self._dirty:
            return
        with self._locked():
            mine = dict(self._by_labels)
            self._merge_from_disk()
            for labels in mine:
                if labels not in self._by_labels:
                    self.allocate(labels)
            doc = {
                "version": _FORMAT_VERSION,
                "identities": {
                    str(lab): num for num, lab in sorted(self._by_id.items()) if num > 255
                },
            }
            tmp = self._path.with_suffix(".tmp")
            try:
                tmp.write_text(json.dumps(doc, indent=0, sort_keys=False))
                os.replace(tmp, self._path)
            except OSError as exc:
                raise IdentityError(f"cannot write {self._path}: {exc}") from exc
            self._dirty = False
