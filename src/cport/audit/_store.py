"""The audit store interface and its query types (implementations: `_sqlite`, `_postgres`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cport.audit._chain import GENESIS, Checkpoint, link, verify_checkpoint
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


class StoredEvent:
    """One record as `Store.query` yields it: its sequence number, its event and its chain
    hash. A store yields it undecoded (`from_row`): the event is decoded from the stored
    canonical body on first access to `event` (an unreadable body raises then, as
    `AuditEvent.from_body` does), so a query that only needs ``seq`` and ``hash`` — paging,
    counting, hashes — never pays for JSON. Read-only; equal when seq, hash and event are."""

    __slots__ = ("_body", "_event", "_hash", "_seq")
    _seq: int
    _event: AuditEvent | None
    _hash: bytes
    _body: bytes | None

    def __init__(self, seq: int, event: AuditEvent, hash: bytes) -> None:
        self._seq, self._event, self._hash, self._body = seq, event, hash, None

    @classmethod
    def from_row(cls, seq: int, body: bytes, hash: bytes) -> StoredEvent:
        """A stored record, its event decoded from `body` when first asked for."""
        self = cls.__new__(cls)
        self._seq, self._event, self._hash, self._body = seq, None, hash, body
        return self

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def hash(self) -> bytes:
        return self._hash

    @property
    def event(self) -> AuditEvent:
        event = self._event
        if event is None:
            assert self._body is not None
            event = self._event = AuditEvent.from_body(self._body)
            self._body = None
        return event

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredEvent):
            return NotImplemented
        return (self.seq, self.hash, self.event) == (other.seq, other.hash, other.event)

    def __hash__(self) -> int:
        return hash((self._seq, self._hash))

    def __repr__(self) -> str:
        return f"StoredEvent(seq={self._seq!r}, event={self.event!r}, hash={self._hash!r})"


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


#: A stored record as a backend reads it: seq, its indexed column values (ending with the
#: policies column), body, prev_hash, hash.
StoredRow = tuple[int, Sequence[Any], bytes, bytes, bytes]


def verify_chain(
    rows: Iterable[StoredRow],
    checkpoints: Sequence[Checkpoint],
    *,
    anchor: str | None,
    columns: Sequence[str],
    expected: Callable[[AuditEvent], Sequence[Any]],
    public_key: Any,
) -> VerifyReport:
    """Every store's verify: walk `rows` in seq order from the anchor (or genesis), naming the
    first missing, inserted or altered record (hash, body, or any indexed column that differs
    from `expected(event)` — each backend stores values its own way), then check the signed
    checkpoints. Keeps only the hashes checkpoints need, so memory stays flat."""
    expect_seq, prev, anchor_hash = 0, GENESIS, None
    if anchor:
        seq_text, hex_hash = anchor.split(":")
        expect_seq, prev = int(seq_text), bytes.fromhex(hex_hash)
        anchor_hash = prev
    first = expect_seq + 1
    wanted = {cp.seq for cp in checkpoints}
    hashes: dict[int, bytes] = {}
    n = 0

    def fail(seq: int, problem: str, detail: str) -> VerifyReport:
        return VerifyReport(False, n, 0, first, seq - 1, problem, seq, detail)

    for seq, stored, body, stored_prev, h in rows:
        expect_seq += 1
        if seq > expect_seq:
            return fail(expect_seq, "missing", f"records {expect_seq}..{seq - 1} are missing")
        if stored_prev != prev:
            return fail(seq, "inserted", "the record does not follow its predecessor")
        if link(prev, body) != h:
            return fail(seq, "altered", "the record's hash does not match")
        try:
            ev = AuditEvent.from_body(body)
        except (ValueError, TypeError) as exc:
            return fail(seq, "altered", f"unreadable body: {exc}")
        for col, have, want in zip(columns, stored, expected(ev), strict=True):
            if have != want:
                return fail(seq, "altered", f"column {col} differs from the hashed record")
        prev = h
        if seq in wanted:
            hashes[seq] = h
        n += 1
    return check_checkpoints(
        checkpoints,
        hashes,
        records=n,
        first=first,
        last=expect_seq,
        anchor_hash=anchor_hash,
        public_key=public_key,
    )


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
    """Each checkpoint is signed by the expected key, the store does not end before it (a
    truncated tail) and the chain agrees with it. `hashes` holds the chain's hash at each
    checkpointed record seen. Checkpoints with no key to check them fail, never skipped."""

    def fail(seq: int, problem: str, detail: str) -> VerifyReport:
        return VerifyReport(False, records, len(cps), first, last, problem, seq, detail)

    for cp in cps:
        if public_key is None:
            return fail(
                cp.seq,
                "bad-checkpoint",
                "no public key to check the signed "
                "checkpoints (pass --public-key or the state directory)",
            )
        if not verify_checkpoint(cp, public_key):
            return fail(cp.seq, "bad-checkpoint", "a checkpoint's signature does not verify")
        if cp.seq > last:
            return fail(
                cp.seq,
                "truncated",
                f"a signed checkpoint covers record {cp.seq}, the store ends at {last}",
            )
        known = (
            anchor_hash if cp.seq == first - 1 and anchor_hash is not None else (hashes.get(cp.seq))
        )
        if known is not None and known != cp.hash:
            return fail(cp.seq, "altered", "the chain disagrees with a signed checkpoint")
    if anchor_hash is not None and not any(
        cp.seq == first - 1 and cp.hash == anchor_hash for cp in cps
    ):
        # Pruning signs a checkpoint at the new anchor; an anchor without one could have been
        # written by anyone who deleted the records before it.
        return fail(
            first - 1, "bad-anchor", "no signed checkpoint vouches for the pruned record's anchor"
        )
    return VerifyReport(True, records, len(cps), first, last)


def fold_who(rows: Iterable[Sequence[Any]]) -> list[WhoRow]:
    """Fold ``(peer, subject, workload, port, protocol, verdict, count, first, last)`` groups
    into one row per peer and port, newest first (both stores' `who`)."""
    out: dict[tuple[Any, ...], WhoRow] = {}
    for pid, sub, wl, port, proto, verdict, n, first, last in rows:
        key = (pid, sub, wl, port, proto)
        r = out.get(key)
        if r is None:
            r = out[key] = WhoRow(
                int(pid), sub or "", wl or "", int(port), proto or "", 0, int(first), int(last)
            )
        r.count += int(n)
        r.first_ns = min(r.first_ns, int(first))
        r.last_ns = max(r.last_ns, int(last))
        r.verdicts[verdict] = r.verdicts.get(verdict, 0) + int(n)
    return sorted(out.values(), key=lambda r: (-r.last_ns, r.workload, r.port))


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
