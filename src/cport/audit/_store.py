"""The audit store interface and its query types (implementations: `_sqlite`, `_postgres`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cport.audit._chain import Checkpoint
from cport.audit._event import AuditEvent


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which events: every field is optional; times are UTC nanoseconds."""

    since_ns: int | None = None
    until_ns: int | None = None
    verdict: str | None = None
    reason: str | None = None
    workload: str | None = None  # namespace/name
    port: int | None = None
    peer_identity: int | None = None
    subject: str | None = None
    policy: str | None = None  # policy name (any kind/namespace) or namespace/name
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    event: AuditEvent
    hash: bytes


@dataclass
class WhoRow:
    """Who reached which port: one row per (peer identity, subject, workload, port)."""

    peer_identity: int
    subject: str
    workload: str
    port: int
    protocol: str
    count: int
    first_ns: int
    last_ns: int
    verdicts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "peerIdentity": self.peer_identity,
            "subject": self.subject,
            "workload": self.workload,
            "port": self.port,
            "protocol": self.protocol,
            "count": self.count,
            "firstSeenNs": self.first_ns,
            "lastSeenNs": self.last_ns,
            "verdicts": self.verdicts,
        }


@dataclass
class VerifyReport:
    """The outcome of verifying a store: ok, or the first problem and where."""

    ok: bool
    records: int
    checkpoints: int
    first_seq: int
    last_seq: int
    problem: str = ""  # altered | inserted | missing | truncated | bad-checkpoint
    seq: int | None = None
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "records": self.records,
            "checkpoints": self.checkpoints,
            "firstSeq": self.first_seq,
            "lastSeq": self.last_seq,
            "problem": self.problem or None,
            "seq": self.seq,
            "detail": self.detail,
        }


class Store(Protocol):
    """Append-only, hash-chained audit record. `append` returns once the events are durable."""

    def append(self, events: Sequence[AuditEvent]) -> list[int]: ...

    def query(
        self, flt: AuditFilter, *, limit: int | None = None, after_seq: int = 0
    ) -> Iterator[StoredEvent]: ...

    def count(self, flt: AuditFilter) -> int: ...

    def who(self, flt: AuditFilter) -> list[WhoRow]: ...

    def checkpoint(self) -> Checkpoint | None: ...

    def verify(self) -> VerifyReport: ...

    def close(self) -> None: ...
