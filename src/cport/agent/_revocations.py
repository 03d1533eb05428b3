"""Revocations: credentials and identities the agent must stop honouring now.

A revocation names a token id (a credential's ``jti`` or SHA-256), an identity (numeric, a
subject such as ``alice@example.com``, or a SPIFFE ID/ARN subject), and is kept in
``<stateDir>/revocations.json`` (written atomically) so a restart does not forget it. Token
revocations lapse when the credential would have expired anyway (``until``); identity
revocations last until removed.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cport.errors import CportError
from cport.identity import VerifiedIdentity

KINDS = ("token-id", "identity")


@dataclass(frozen=True, slots=True)
class Revocation:
    id: str
    kind: str  # token-id | identity
    value: str
    created: float
    until: float | None = None  # unix seconds; None: until removed
    reason: str = ""

    def matches(self, credential: VerifiedIdentity | None, identity: int, now: float) -> bool:
        if self.until is not None and now >= self.until:
            return False
        if self.kind == "token-id":
            return credential is not None and credential.token_id == self.value
        if self.value.isdigit() and identity == int(self.value):
            return True
        # Subjects may be digits too (Google's, for one): a value matches either.
        return credential is not None and self.value in (credential.subject, credential.actor)


class Revocations:
    def __init__(self, state_dir: Path | None) -> None:
        self._path = None if state_dir is None else state_dir / "revocations.json"
        self._lock = threading.Lock()
        self._items: dict[str, Revocation] = {}
        if self._path is not None and self._path.exists():
            try:
                doc = json.loads(self._path.read_text())
                for item in doc.get("revocations", []):
                    rev = Revocation(**item)
                    self._items[rev.id] = rev
            except (OSError, ValueError, TypeError) as exc:
                # Fail closed: an agent that cannot read its revocations does not start.
                raise CportError(
                    f"cannot read {self._path}: {exc}", code="revocations-unreadable"
                ) from exc

    def add(
        self, kind: str, value: str, *, until: float | None = None, reason: str = ""
    ) -> Revocation:
        if kind not in KINDS:
            raise CportError(f"unknown revocation kind {kind!r}", code="invalid-revocation")
        if not value:
            raise CportError("a revocation needs a value", code="invalid-revocation")
        rev = Revocation(secrets.token_hex(6), kind, value, time.time(), until, reason)
        with self._lock:
            self._items[rev.id] = rev
            self._save()
        return rev

    def remove(self, rev_id: str) -> bool:
        with self._lock:
            found = self._items.pop(rev_id, None) is not None
            if found:
                self._save()
            return found

    def list(self, now: float | None = None) -> list[Revocation]:
        now = time.time() if now is None else now
        return [r for r in self._items.values() if r.until is None or r.until > now]

    def match(
        self, credential: VerifiedIdentity | None, identity: int, now: float
    ) -> Revocation | None:
        for rev in self._items.values():
            if rev.matches(credential, identity, now):
                return rev
        return None

    def _save(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        live = [asdict(r) for r in self.list()]
        with open(tmp, "w") as f:
            json.dump({"version": 1, "revocations": live}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)


__all__ = ["Revocation", "Revocations"]
