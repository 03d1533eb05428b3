"""The audit store interface and its query types (implementations: `_sqlite`, `_postgres`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cport.audit._chain import Checkpoint, verify_checkpoint
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


def check_checkpoints(
    cps: Sequence[Checkpoint],
    hashes: dict[int, bytes],
    *,
    records: int,
    first: int,
    last: int,
    anchor_hash: bytes | None,
    public_key: Any,
) -> VerifyReport:
    """The end of every store's verify: each checkpoint is signed by the expected key, the
    store does not end before it (a truncated tail) and the chain agrees with it. `hashes`
    holds the chain's hash at each checkpointed record seen. Checkpoints with no key to check
    them are a failure, not skipped."""
    for cp in cps:
        if public_key is None:
            return VerifyReport(
                False,
                records,
                len(cps),
                first,
                last,
                "bad-checkpoint",
                cp.seq,
                "no public key to check the signed checkpoints "
                "(pass --public-key or the state directory)",
            )
        if not verify_checkpoint(cp, public_key):
            return VerifyReport(
                False,
                records,
                len(cps),
                first,
                last,
                "bad-checkpoint",
                cp.seq,
                "a checkpoint's signature does not verify",
            )
        if cp.seq > last:
            return VerifyReport(
                False,
                records,
                len(cps),
                first,
                last,
                "truncated",
                cp.seq,
                f"a signed checkpoint covers record {cp.seq}, the store ends at {last}",
            )
        known = (
            anchor_hash
            if (cp.seq == first - 1 and anchor_hash is not None)
            else (hashes.get(cp.seq))
        )
        if known is not None and known != cp.hash:
            return VerifyReport(
                False,
                records,
                len(cps),
                first,
                last,
                "altered",
                cp.seq,
                "the chain disagrees with a signed checkpoint",
            )
    return VerifyReport(True, records, len(cps), first, last)


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
