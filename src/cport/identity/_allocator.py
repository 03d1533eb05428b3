"""Stable numeric identities for label sets, persisted in a state directory.

One label set is one identity, as in Cilium. With a state directory, every allocation is made
under an exclusive lock against the file's current contents and written (atomically, with a
rename) before the numbers are returned, so two processes sharing the directory never hand out
one number for two label sets, and the same labels get the same number after a restart.

State file ``<state_dir>/identities.json``, format version 2::

    {"version": 2, "identities": [{"id": 256, "labels": [["k8s", "app", "web"], ...]}, ...]}
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cport.errors import IdentityError
from cport.identity._labels import Label, Labels
from cport.identity._reserved import FIRST_CLUSTER_ID, FIRST_LOCAL_ID, RESERVED_IDS, reserved_labels

_FORMAT_VERSION = 2
_MAX_ID = (1 << 32) - 1


def _is_local(labels: Labels) -> bool:
    return any(lab.source == "cidr" for lab in labels)


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
        self._replace({})
        if state_dir is not None:
            with self._locked():
                self._replace(self._read_disk())

    # -- queries -------------------------------------------------------------------------
    def lookup(self, labels: Labels) -> int | None:
        return self._by_labels.get(labels)

    def labels_of(self, identity: int) -> Labels | None:
        return self._by_id.get(identity)

    def __iter__(self) -> Iterator[tuple[int, Labels]]:
        return iter(list(self._by_id.items()))

    def __len__(self) -> int:
        return len(self._by_id)

    # -- allocation ----------------------------------------------------------------------
    def allocate(self, labels: Labels) -> int:
        """The identity of `labels`, allocating (and persisting) a number if it is new."""
        return self.allocate_many([labels])[0]

    def allocate_many(self, label_sets: Iterable[Labels]) -> list[int]:
        """Identities for many label sets at once: one lock and one write for the batch."""
        wanted = list(label_sets)
        if all(ls in self._by_labels for ls in wanted):
            return [self._by_labels[ls] for ls in wanted]
        if self._state_dir is None:
            self._assign(wanted)
            return [self._by_labels[ls] for ls in wanted]
        with self._locked():
            # Another process may have allocated since we last looked: start from the file.
            mine = {ls: n for ls, n in self._by_labels.items() if n >= FIRST_CLUSTER_ID}
            self._replace(self._read_disk())
            self._assign([*mine, *wanted])
            self._write()
        return [self._by_labels[ls] for ls in wanted]

    def _assign(self, label_sets: Iterable[Labels]) -> None:
        for labels in label_sets:
            if labels in self._by_labels:
                continue
            if _is_local(labels):
                num, self._next_local = self._next_local, self._next_local + 1
            else:
                num, self._next_cluster = self._next_cluster, self._next_cluster + 1
                if num >= FIRST_LOCAL_ID:
                    raise IdentityError(
                        "cluster identity space exhausted", code="identity-exhausted"
                    )
            self._by_labels[labels] = num
            self._by_id[num] = labels

    def _replace(self, mapping: dict[Labels, int]) -> None:
        self._by_labels = {reserved_labels(n): num for n, num in RESERVED_IDS.items()}
        self._by_labels.update(mapping)
        self._by_id = {num: ls for ls, num in self._by_labels.items()}
        cluster = [n for n in mapping.values() if n < FIRST_LOCAL_ID]
        local = [n for n in mapping.values() if n >= FIRST_LOCAL_ID]
        self._next_cluster = max(cluster, default=FIRST_CLUSTER_ID - 1) + 1
        self._next_local = max(local, default=FIRST_LOCAL_ID - 1) + 1

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

    def _corrupt(self, why: str) -> IdentityError:
        return IdentityError(
            f"{self._path} is corrupt ({why}); move it aside to start a fresh allocation",
            code="identity-state-corrupt",
        )

    def _read_disk(self) -> dict[Labels, int]:
        try:
            raw = self._path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise IdentityError(f"cannot read {self._path}: {exc}") from exc
        try:
            doc: Any = json.loads(raw)
        except ValueError as exc:
            raise self._corrupt(f"not JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("version") != _FORMAT_VERSION:
            version = doc.get("version") if isinstance(doc, dict) else None
            raise self._corrupt(f"unknown format version {version!r}")
        entries = doc.get("identities")
        if not isinstance(entries, list):
            raise self._corrupt("'identities' is not a list")
        out: dict[Labels, int] = {}
        seen: set[int] = set()
        for i, entry in enumerate(entries):
            try:
                num = entry["id"]
                triples = entry["labels"]
                if isinstance(num, bool) or not isinstance(num, int):
                    raise ValueError(f"id {num!r} is not a number")
                if not FIRST_CLUSTER_ID <= num <= _MAX_ID:
                    raise ValueError(f"id {num} is outside 256..{_MAX_ID} (1-255 are reserved)")
                if num in seen:
                    raise ValueError(f"id {num} appears twice")
                labels = Labels(Label(*self._triple(t)) for t in triples)
            except (KeyError, TypeError, ValueError) as exc:
                raise self._corrupt(f"entry {i}: {exc}") from exc
            if labels in out:
                raise self._corrupt(f"entry {i}: labels {labels} appear twice")
            for lab in labels:
                if lab.source == "cidr":
                    try:
                        ipaddress.ip_network(lab.value)
                    except ValueError:
                        raise self._corrupt(f"entry {i}: {lab} is not an address prefix") from None
            if (num >= FIRST_LOCAL_ID) != _is_local(labels):
                raise self._corrupt(f"entry {i}: id {num} is in the wrong scope for {labels}")
            seen.add(num)
            out[labels] = num
        return out

    @staticmethod
    def _triple(t: object) -> tuple[str, str, str]:
        if (
            not isinstance(t, list)
            or len(t) != 3
            or not all(isinstance(x, str) for x in t)
            or not t[0]
            or not t[1]
        ):
            raise ValueError(f"label {t!r} is not [source, key, value]")
        return t[0], t[1], t[2]

    def _write(self) -> None:
        doc = {
            "version": _FORMAT_VERSION,
            "identities": [
                {"id": num, "labels": [[lab.source, lab.key, lab.value] for lab in labels]}
                for num, labels in sorted(self._by_id.items())
                if num >= FIRST_CLUSTER_ID
            ],
        }
        tmp = self._path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(doc, separators=(",", ":")))
            os.replace(tmp, self._path)
        except OSError as exc:
            raise IdentityError(f"cannot write {self._path}: {exc}") from exc
