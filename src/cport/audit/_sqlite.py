"""SQLite audit store (WAL): the embedded default, in the state directory.

Appends run in one ``BEGIN IMMEDIATE`` transaction per batch (the chain head is read inside
it, so two writers never fork the chain) and return only after COMMIT; with
``synchronous=FULL`` in WAL mode a committed batch survives a crash or power loss. One
connection is shared by the writer thread and readers, under a lock.
"""

from __future__ import annotations

import contextlib
import json
import operator
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from hashlib import sha256
from itertools import starmap
from pathlib import Path
from typing import Any, TypeVar

from cport.audit._chain import GENESIS, Checkpoint, Signer
from cport.audit._event import AuditEvent, encode
from cport.audit._store import (
    AuditFilter,
    StoredEvent,
    VerifyReport,
    WhoRow,
    fold_who,
    verify_chain,
)
from cport.errors import AuditError

T = TypeVar("T")
_INT_COLUMNS = frozenset(
    {
        "time_ns",
        "src_port",
        "dst_port",
        "peer_identity",
        "port",
        "table_revision",
        "bytes_in",
        "bytes_out",
        "duration_ns",
    }
)
_COLUMNS = (
    "time_ns",
    "kind",
    "node",
    "enforcer",
    "verdict",
    "reason",
    "protocol",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "direction",
    "peer_identity",
    "subject",
    "issuer",
    "credential_kind",
    "token_id",
    "workload",
    "port",
    "table_revision",
    "bytes_in",
    "bytes_out",
    "duration_ns",
    "termination",
)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    {", ".join(c + (" INTEGER" if c in _INT_COLUMNS else " TEXT") for c in _COLUMNS)},
    policies TEXT NOT NULL,
    body BLOB NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_workload_port ON events (workload, port, time_ns);
DROP INDEX IF EXISTS events_peer;
DROP INDEX IF EXISTS events_verdict;
CREATE INDEX IF NOT EXISTS events_peer_verdict ON events (peer_identity, verdict, seq);
CREATE INDEX IF NOT EXISTS events_time ON events (time_ns);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY, hash BLOB NOT NULL, time_ns INTEGER NOT NULL,
    key_id TEXT NOT NULL, signature BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_INSERT = (
    f"INSERT INTO events (seq, {', '.join(_COLUMNS)}, policies, body, prev_hash, hash) "
    f"VALUES ({', '.join('?' * (len(_COLUMNS) + 5))})"
)
_CHECKPOINT = "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?)"


_GET_COLUMNS = operator.attrgetter(*_COLUMNS)  # one C call for all 24 columns


_CACHE_KIB = 65_536  # the writer connection's page cache (64 MiB)
_WAL_CHECKPOINT_PAGES = 25_000  # WAL pages between automatic checkpoints (~100 MiB)
_READERS = 4  # idle read-only connections kept for queries
_I64 = (-(2**63), 2**63 - 1)


def _clamp(ns: int | None) -> int | None:
    """Times beyond a 64-bit column mean "before/after everything", not an overflow."""
    return None if ns is None else max(_I64[0], min(_I64[1], ns))


def where(
    flt: AuditFilter, placeholder: str = "?", contains: str = "instr(policies, {ph}) > 0"
) -> tuple[str, list[Any]]:
    """SQL conditions for a filter (shared with the PostgreSQL store, which passes its own
    placeholder and substring function)."""
    conds: list[str] = []
    args: list[Any] = []
    for col, op, value in (
        ("time_ns", ">=", _clamp(flt.since_ns)),
        ("time_ns", "<", _clamp(flt.until_ns)),
        ("verdict", "=", flt.verdict),
        ("reason", "=", flt.reason),
        ("workload", "=", flt.workload),
        ("port", "=", flt.port),
        ("peer_identity", "=", flt.peer_identity),
        ("subject", "=", flt.subject),
        ("kind", "=", flt.kind),
    ):
        if value is not None:
            conds.append(f"{col} {op} {placeholder}")
            args.append(value)
    if flt.policy is not None:
        # The column is a JSON list of "kind/namespace/name": match the end of an element
        # exactly, by plain substring (no pattern characters to escape).
        conds.append(contains.format(ph=placeholder))
        args.append(json.dumps("/" + flt.policy, ensure_ascii=False)[1:])
    return (" WHERE " + " AND ".join(conds)) if conds else "", args


class SQLiteStore:
    """The embedded audit store. `path` may be ``":memory:"`` (tests, demos)."""

    def __init__(self, path: str | Path, signer: Signer | None = None) -> None:
        self.path = str(path)
        self.signer = signer
        self._lock = threading.RLock()
        self._since_optimize = 0
        self._pool_lock = threading.Lock()
        self._readers: list[sqlite3.Connection] = []  # idle read-only connections (`query`)
        self._closed = False
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            # The writer's page cache holds the hot leaf pages of the indexes (one per peer
            # identity and verdict, per workload and port): with SQLite's default 2 MiB, every
            # append re-reads them and a large batch spills dirty pages into the WAL twice.
            self._db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
            # Checkpoint every ~100 MiB of WAL, not every 4 MiB: each batch rewrites the same
            # hot index pages, and a larger WAL copies each of them back once per checkpoint
            # instead of once per batch (about a third less written per event at 3M events).
            self._db.execute(f"PRAGMA wal_autocheckpoint={_WAL_CHECKPOINT_PAGES}")
            self._db.executescript(_SCHEMA)
            # Keep planner statistics current (bounded work): without them SQLite may pick
            # the verdict index for a peer query and scan a million rows.
            self._db.execute("PRAGMA analysis_limit=1000")
            # A read-only file, or another writer holding it: the statistics can wait.
            with contextlib.suppress(sqlite3.OperationalError):
                self._db.execute("ANALYZE")
        except sqlite3.Error as exc:
            raise AuditError(
                f"cannot open audit store {self.path}: {exc}", code="audit-store-unavailable"
            ) from exc

    def close(self) -> None:
        with self._pool_lock:
            self._closed = True
            readers, self._readers = self._readers, []
        for reader in readers:
            reader.close()
        with self._lock:
            self._db.close()

    def _run(self, what: str, code: str, fn: Callable[[], T], *, write: bool = False) -> T:
        """Run `fn` under the lock (in one IMMEDIATE transaction when writing), mapping
        SQLite errors to AuditError and never leaving a transaction open."""
        with self._lock:
            try:
                if write:
                    self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = fn()
                    if write:
                        self._db.execute("COMMIT")
                    return result
                except BaseException:
                    if self._db.in_transaction:  # SQLite may have rolled back already
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise AuditError(f"audit {what} failed: {exc}", code=code) from exc

    # -- writing -------------------------------------------------------------------------
    def _head(self) -> tuple[int, bytes]:
        row = self._db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        if row is not None:
            return int(row[0]), bytes(row[1])
        anchor = self._meta("anchor")
        if anchor:
            seq, h = anchor.split(":")
            return int(seq), bytes.fromhex(h)
        return 0, GENESIS

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def append(self, events: Sequence[AuditEvent]) -> list[int]:
        """Append `events` durably; returns their sequence numbers."""
        if not events:
            return []

        def write() -> list[int]:
            seq, prev = self._head()
            first = seq + 1
            rows = []
            for ev in events:
                seq += 1
                body, column, _ = encode(ev)
                h = sha256(prev + body).digest()  # `link`, inline
                rows.append((seq, *_GET_COLUMNS(ev), column, body, prev, h))
                prev = h
            self._db.executemany(_INSERT, rows)
            return list(range(first, seq + 1))

        seqs = self._run("append", "audit-write-failed", write, write=True)
        self._since_optimize += len(seqs)
        if self._since_optimize >= 100_000:  # statistics follow the data as it grows
            self._since_optimize = 0
            self._run("optimize", "audit-write-failed", lambda: self._db.execute("PRAGMA optimize"))
        return seqs

    def checkpoint(self) -> Checkpoint | None:
        """Sign the current head (no-op without a signer or without records)."""
        signer = self.signer
        if signer is None:
            return None

        def write() -> Checkpoint | None:
            seq, head = self._head()
            if seq == 0:
                return None
            cp = signer.sign(seq, head, time.time_ns())
            self._db.execute(_CHECKPOINT, (cp.seq, cp.hash, cp.time_ns, cp.key_id, cp.signature))
            return cp

        return self._run("checkpoint", "audit-write-failed", write, write=True)

    def latest_checkpoint(self) -> Checkpoint | None:
        def read() -> Checkpoint | None:
            row = self._db.execute(
                "SELECT seq, hash, time_ns, key_id, signature FROM "
                "checkpoints ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            return (
                None
                if row is None
                else Checkpoint(int(row[0]), bytes(row[1]), int(row[2]), str(row[3]), bytes(row[4]))
            )

        return self._run("read", "audit-store-unavailable", read)

    def prune(self, before_ns: int) -> int:
        """Delete records older than `before_ns`, keeping the chain verifiable: the last pruned
        record's (seq, hash) becomes the anchor, covered by a signed checkpoint."""
        signer = self.signer
        if signer is None:
            raise AuditError(
                "pruning needs the signing key (state directory)", code="audit-key-missing"
            )

        def write() -> int:
            row = self._db.execute(
                "SELECT seq, hash FROM events WHERE time_ns < ? ORDER BY seq DESC LIMIT 1",
                (before_ns,),
            ).fetchone()
            if row is None:
                return 0
            seq, h = int(row[0]), bytes(row[1])
            cp = signer.sign(seq, h, time.time_ns())
            self._db.execute(_CHECKPOINT, (cp.seq, cp.hash, cp.time_ns, cp.key_id, cp.signature))
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('anchor', ?)", (f"{seq}:{h.hex()}",)
            )
            return int(self._db.execute("DELETE FROM events WHERE seq <= ?", (seq,)).rowcount)

        return self._run("prune", "audit-write-failed", write, write=True)

    # -- reading -------------------------------------------------------------------------
    def query(
        self, flt: AuditFilter, *, limit: int | None = None, after_seq: int = 0
    ) -> Iterator[StoredEvent]:
        """Matching events, oldest first, their events decoded on first access
        (`StoredEvent`). On a file, one statement on a read-only connection of its own (a
        WAL snapshot; idle ones are kept for the next query): a slow reader holds no lock
        and blocks no writer."""
        cond, args = where(flt)
        cond = (cond + " AND seq > ?") if cond else " WHERE seq > ?"
        sql = f"SELECT seq, body, hash FROM events{cond} ORDER BY seq"
        params: list[Any] = [*args, after_seq]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(0, int(limit)))
        if self.path == ":memory:":
            rows = self._run(
                "query", "audit-store-unavailable", lambda: self._db.execute(sql, params).fetchall()
            )
            yield from starmap(StoredEvent.from_row, rows)
            return
        reader: sqlite3.Connection | None = self._reader()
        cursor = None
        try:
            assert reader is not None
            cursor = reader.execute(sql, params)
            while True:
                batch = cursor.fetchmany(1000)
                yield from starmap(StoredEvent.from_row, batch)
                if len(batch) < 1000:
                    return
        except sqlite3.Error as exc:
            if reader is not None:  # not reused: it failed
                reader.close()
                reader = None
            raise AuditError(f"audit query failed: {exc}", code="audit-store-unavailable") from exc
        finally:
            if reader is not None:
                if cursor is not None:
                    cursor.close()  # ends the statement, and its read snapshot
                self._release(reader)

    def _reader(self) -> sqlite3.Connection:
        """A read-only connection for one query: an idle one from the pool, else a new one
        (opening one costs more than a small query itself)."""
        with self._pool_lock:
            if self._readers:
                return self._readers.pop()
        try:
            return sqlite3.connect(
                f"file:{self.path}?mode=ro",
                uri=True,
                check_same_thread=False,
                isolation_level=None,
            )
        except sqlite3.Error as exc:
            raise AuditError(f"audit query failed: {exc}", code="audit-store-unavailable") from exc

    def _release(self, reader: sqlite3.Connection) -> None:
        """Back to the pool (no statement open on it: it holds no snapshot), or closed."""
        with self._pool_lock:
            if not self._closed and len(self._readers) < _READERS:
                self._readers.append(reader)
                return
        reader.close()

    def count(self, flt: AuditFilter) -> int:
        cond, args = where(flt)
        return self._run(
            "count",
            "audit-store-unavailable",
            lambda: int(self._db.execute(f"SELECT count(*) FROM events{cond}", args).fetchone()[0]),
        )

    def who(self, flt: AuditFilter) -> list[WhoRow]:
        cond, args = where(flt)
        sql = (
            "SELECT peer_identity, subject, workload, port, protocol, verdict, count(*), "
            f"min(time_ns), max(time_ns) FROM events{cond} "
            "GROUP BY peer_identity, subject, workload, port, protocol, verdict"
        )
        raw = self._run(
            "query", "audit-store-unavailable", lambda: self._db.execute(sql, args).fetchall()
        )
        return fold_who(raw)

    # -- verification --------------------------------------------------------------------
    def verify(self, public_key: Any = None) -> VerifyReport:
        """Walk the chain; name the first altered, inserted or missing record; check every
        checkpoint's signature (with `public_key`, else the signer's) and that the store does
        not end before the latest checkpoint (a truncated tail). One read snapshot."""
        with self._lock:
            try:
                self._db.execute("BEGIN")
                try:
                    return self._verify(public_key)
                finally:
                    self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise AuditError(
                    f"audit verify failed: {exc}", code="audit-store-unavailable"
                ) from exc

    def _verify(self, public_key: Any) -> VerifyReport:
        cps = [
            Checkpoint(int(r[0]), bytes(r[1]), int(r[2]), str(r[3]), bytes(r[4]))
            for r in self._db.execute(
                "SELECT seq, hash, time_ns, key_id, signature FROM checkpoints ORDER BY seq"
            )
        ]
        rows = (
            (int(r[0]), r[1:-3], bytes(r[-3]), bytes(r[-2]), bytes(r[-1]))
            for r in self._db.execute(
                f"SELECT seq, {', '.join(_COLUMNS)}, policies, body, prev_hash, hash "
                "FROM events ORDER BY seq"
            )
        )
        return verify_chain(
            rows,
            cps,
            anchor=self._meta("anchor"),
            columns=(*_COLUMNS, "policies"),
            expected=lambda ev: (*_GET_COLUMNS(ev), ev.policies_column()),
            public_key=public_key
            if public_key is not None
            else (self.signer.public_key if self.signer else None),
        )
