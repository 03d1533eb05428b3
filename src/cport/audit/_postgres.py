"""PostgreSQL audit store: one shared record for several agents.

The schema, filters and verification are the SQLite store's (`_sqlite`), in tables named with
`table_prefix`. Appends serialise on the chain head: one READ COMMITTED transaction per batch
locks the single row of ``<prefix>head`` (``SELECT … FOR UPDATE``), reads the head inside the
transaction, writes the batch with ``COPY … FROM STDIN (FORMAT BINARY)`` and returns after
COMMIT (``synchronous_commit=on`` for the session, so a returned batch is durable). Any number
of stores, in any number of processes, can append to one database without forking the chain.

`verify` reads one REPEATABLE READ snapshot on a connection of its own through a server-side
cursor, so it streams millions of rows in bounded memory and never blocks appends. Errors are
`AuditError` (``audit-store-unavailable``, ``audit-write-failed``); no message ever carries the
DSN's password.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import fields
from hashlib import sha256
from itertools import starmap
from typing import Any, NoReturn

import psycopg
from psycopg import IsolationLevel
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.string import BytesBinaryDumper

from cport.audit._chain import GENESIS, Checkpoint, Signer
from cport.audit._event import AuditEvent, encode
from cport.audit._sqlite import _COLUMNS, _GET_COLUMNS, where
from cport.audit._store import (
    AuditFilter,
    StoredEvent,
    VerifyReport,
    WhoRow,
    fold_who,
    verify_chain,
)
from cport.errors import AuditError

_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,40}")
_INT_COLUMNS = frozenset(f.name for f in fields(AuditEvent) if f.type in ("int", int))
_COPY_TYPES = [
    "bigint",
    *("bigint" if c in _INT_COLUMNS else "text" for c in _COLUMNS),
    "text",
    "bytea",
    "bytea",
    "bytea",
]
# In a canonical body a NUL in any str field (and so in any text column) is the escape \u0000.
_NUL = b"\\u0000"
_QUERY_CHUNK = 1000  # rows per round trip when `query` pages through the record
_VERIFY_CHUNK = 5000  # rows per fetch from the server-side cursor in `verify`


def _text(value: str) -> str:
    """A text column's value: PostgreSQL text cannot hold NUL, so NUL becomes U+FFFD (the
    hashed body keeps the exact value; `verify` compares columns the same way)."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _policies(ev: AuditEvent) -> str:
    return _text(ev.policies_column())


def _columns(ev: AuditEvent) -> list[Any]:
    return [getattr(ev, c) if c in _INT_COLUMNS else _text(str(getattr(ev, c))) for c in _COLUMNS]


def _schema(p: str) -> list[str]:
    cols = ",\n    ".join(f"{c} {'bigint' if c in _INT_COLUMNS else 'text'}" for c in _COLUMNS)
    return [
        f"""CREATE TABLE IF NOT EXISTS {p}events (
    seq bigint PRIMARY KEY,
    {cols},
    policies text NOT NULL,
    body bytea NOT NULL,
    prev_hash bytea NOT NULL,
    hash bytea NOT NULL
)""",
        f"CREATE INDEX IF NOT EXISTS {p}events_workload_port "
        f"ON {p}events (workload, port, time_ns)",
        f"DROP INDEX IF EXISTS {p}events_peer",
        f"DROP INDEX IF EXISTS {p}events_verdict",
        f"CREATE INDEX IF NOT EXISTS {p}events_peer_verdict "
        f"ON {p}events (peer_identity, verdict, seq)",
        f"CREATE INDEX IF NOT EXISTS {p}events_time ON {p}events (time_ns)",
        f"""CREATE TABLE IF NOT EXISTS {p}checkpoints (
    seq bigint PRIMARY KEY, hash bytea NOT NULL, time_ns bigint NOT NULL,
    key_id text NOT NULL, signature bytea NOT NULL
)""",
        f"CREATE TABLE IF NOT EXISTS {p}meta (key text PRIMARY KEY, value text NOT NULL)",
        # The lock every append takes: one row, locked FOR UPDATE for the batch's transaction.
        f"CREATE TABLE IF NOT EXISTS {p}head (id smallint PRIMARY KEY CHECK (id = 1))",
        f"INSERT INTO {p}head VALUES (1) ON CONFLICT DO NOTHING",
    ]


class PostgresStore:
    """The shared audit store. `dsn` is a libpq connection string or URI; tables are named
    ``<table_prefix>events``, ``…checkpoints``, ``…meta`` and ``…head``."""

    def __init__(
        self, dsn: str, signer: Signer | None = None, *, table_prefix: str = "cport_"
    ) -> None:
        if not _PREFIX.fullmatch(table_prefix):
            raise AuditError(
                f"invalid audit table prefix {table_prefix!r}: lower-case letters, digits and _",
                code="audit-store-unavailable",
            )
        self.signer = signer
        self.table_prefix = table_prefix
        try:
            params: dict[str, Any] | None = conninfo_to_dict(dsn)
        except psycopg.Error:
            params = None
        if params is None:  # raised here, not in `except`: the parser's message quotes the DSN
            raise AuditError(
                "invalid PostgreSQL DSN for the audit store (not shown: it may hold a password)",
                code="audit-store-unavailable",
            )
        self._secret = str(params.get("password") or "")
        self.location = " ".join(
            f"{k}={params[k]}" for k in ("host", "port", "dbname", "user") if params.get(k)
        )  # for messages: never the password
        self._dsn = dsn
        self._connect_args: dict[str, Any] = {}
        if "connect_timeout" not in params:
            self._connect_args["connect_timeout"] = 10
        if "application_name" not in params:
            self._connect_args["application_name"] = "cport-audit"
        self._lock = threading.RLock()
        p = table_prefix
        self._events, self._checkpoints = f"{p}events", f"{p}checkpoints"
        self._meta_table, self._head_table = f"{p}meta", f"{p}head"
        self._copy_sql = (
            f"COPY {self._events} (seq, {', '.join(_COLUMNS)}, policies, body, prev_hash, hash) "
            "FROM STDIN (FORMAT BINARY)"
        )
        self._lock_head_sql = (
            f"SELECT id FROM {self._head_table} WHERE id = 1 FOR UPDATE; "
            f"SELECT seq, hash FROM {self._events} ORDER BY seq DESC LIMIT 1"
        )
        self._conn: psycopg.Connection[Any] | None = None
        with self._lock:
            conn = self._connection()
            try:
                # The head table is created last: when it exists the schema is complete, and a
                # role without CREATE (a least-privilege writer) needs no DDL at all.
                row = conn.execute("SELECT to_regclass(%s)", (self._head_table,)).fetchone()
                if row is None or row[0] is None:
                    with conn.transaction():
                        # Two stores creating the schema at once would collide in the catalogue.
                        conn.execute(
                            "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"cport-audit:{p}",)
                        )
                        for stmt in _schema(p):
                            conn.execute(stmt)
            except psycopg.Error as exc:
                self._raise("cannot create the audit schema in", exc, "audit-store-unavailable")

    # -- connections and errors ------------------------------------------------------------
    def _open(
        self, *, isolation: IsolationLevel, read_only: bool = False
    ) -> psycopg.Connection[Any]:
        failure = ""
        try:
            conn = psycopg.connect(self._dsn, autocommit=True, **self._connect_args)
        except psycopg.Error as exc:
            failure = self._scrub(exc)
        if failure:  # raised outside `except`, so the unscrubbed error is not even its context
            raise AuditError(
                f"cannot connect to the audit store {self.location}: {failure}",
                code="audit-store-unavailable",
            )
        try:
            conn.isolation_level = isolation
            conn.read_only = read_only
            # "Durable on return": never let a server or role default weaken COMMIT.
            conn.execute("SET synchronous_commit TO on")
            # COPY picks dumpers by type OID: for bytea that is psycopg's DB-API `Binary`
            # dumper, in Python; our bytes need no wrapper, so take the plain (C) one.
            conn.adapters.register_dumper(bytes, BytesBinaryDumper)
        except psycopg.Error as exc:
            conn.close()
            self._raise("cannot set up a session on", exc, "audit-store-unavailable")
        return conn

    def _connection(self) -> psycopg.Connection[Any]:
        """The store's connection (callers hold `_lock`), reopened if it was lost."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            self._conn = self._open(isolation=IsolationLevel.READ_COMMITTED)
        return self._conn

    def _scrub(self, exc: BaseException) -> str:
        text = str(exc).strip() or type(exc).__name__
        return text.replace(self._secret, "***") if self._secret else text

    def _raise(self, what: str, exc: psycopg.Error, code: str) -> NoReturn:
        raise AuditError(
            f"{what} audit store {self.location}: {self._scrub(exc)}", code=code
        ) from (exc if not self._secret or self._secret not in str(exc) else None)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- writing -------------------------------------------------------------------------
    def _lock_head(self, conn: psycopg.Connection[Any]) -> tuple[int, bytes]:
        """Lock the chain head for this transaction and read it: two statements in one
        round trip (one simple-protocol message). The read must be a statement of its own,
        after the lock is granted: in READ COMMITTED each statement takes a fresh snapshot, so
        it sees the batch the lock waited for (a join in the locking statement would read the
        old snapshot and fork the chain)."""
        with conn.cursor() as cur:
            cur.execute(self._lock_head_sql, prepare=False)
            cur.nextset()
            row = cur.fetchone()
        if row is not None:
            return int(row[0]), bytes(row[1])
        anchor = self._meta(conn, "anchor")  # an empty (or wholly pruned) record
        if anchor:
            seq_text, hex_hash = anchor.split(":")
            return int(seq_text), bytes.fromhex(hex_hash)
        return 0, GENESIS

    def _meta(self, conn: psycopg.Connection[Any], key: str) -> str | None:
        row = conn.execute(
            f"SELECT value FROM {self._meta_table} WHERE key = %s", (key,)
        ).fetchone()
        return None if row is None else str(row[0])

    def _put_checkpoint(self, conn: psycopg.Connection[Any], cp: Checkpoint) -> None:
        conn.execute(
            f"INSERT INTO {self._checkpoints} VALUES (%s, %s, %s, %s, %s) ON CONFLICT (seq) DO "
            "UPDATE SET hash = excluded.hash, time_ns = excluded.time_ns, "
            "key_id = excluded.key_id, signature = excluded.signature",
            (cp.seq, cp.hash, cp.time_ns, cp.key_id, cp.signature),
        )

    def append(self, events: Sequence[AuditEvent]) -> list[int]:
        """Append `events` durably; returns their sequence numbers."""
        if not events:
            return []
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    seq, prev = self._lock_head(conn)
                    first = seq + 1
                    with conn.cursor() as cur, cur.copy(self._copy_sql) as copy:
                        copy.set_types(_COPY_TYPES)
                        write_row = copy.write_row
                        for ev in events:
                            seq += 1
                            body, column, fast = encode(ev)
                            h = sha256(prev + body).digest()
                            # Exact ints and strs, and no NUL (most bodies have no "\" at
                            # all: a one-byte memchr settles it).
                            if fast and (b"\\" not in body or _NUL not in body):
                                write_row((seq, *_GET_COLUMNS(ev), column, body, prev, h))
                            else:
                                write_row((seq, *_columns(ev), _text(column), body, prev, h))
                            prev = h
            except psycopg.Error as exc:
                self._raise("append failed on", exc, "audit-write-failed")
        return list(range(first, seq + 1))

    def checkpoint(self) -> Checkpoint | None:
        """Sign the current head (no-op without a signer or without records)."""
        if self.signer is None:
            return None
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    seq, head = self._lock_head(conn)
                    if seq == 0:
                        return None
                    cp = self.signer.sign(seq, head, time.time_ns())
                    self._put_checkpoint(conn, cp)
            except psycopg.Error as exc:
                self._raise("checkpoint failed on", exc, "audit-write-failed")
        return cp

    def latest_checkpoint(self) -> Checkpoint | None:
        with self._lock:
            try:
                row = (
                    self._connection()
                    .execute(
                        "SELECT seq, hash, time_ns, key_id, signature "
                        f"FROM {self._checkpoints} ORDER BY seq DESC LIMIT 1"
                    )
                    .fetchone()
                )
            except psycopg.Error as exc:
                self._raise("cannot read", exc, "audit-store-unavailable")
        return (
            None
            if row is None
            else Checkpoint(int(row[0]), bytes(row[1]), int(row[2]), str(row[3]), bytes(row[4]))
        )

    def prune(self, before_ns: int) -> int:
        """Delete records older than `before_ns`, keeping the chain verifiable: the last pruned
        record's (seq, hash) becomes the anchor, covered by a signed checkpoint."""
        if self.signer is None:
            raise AuditError(
                "pruning needs the signing key (state directory)", code="audit-key-missing"
            )
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    self._lock_head(conn)
                    row = conn.execute(
                        f"SELECT seq, hash FROM {self._events} WHERE time_ns < %s "
                        "ORDER BY seq DESC LIMIT 1",
                        (before_ns,),
                    ).fetchone()
                    if row is None:
                        return 0
                    seq, h = int(row[0]), bytes(row[1])
                    self._put_checkpoint(conn, self.signer.sign(seq, h, time.time_ns()))
                    conn.execute(
                        f"INSERT INTO {self._meta_table} VALUES ('anchor', %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (f"{seq}:{h.hex()}",),
                    )
                    n = conn.execute(f"DELETE FROM {self._events} WHERE seq <= %s", (seq,)).rowcount
            except psycopg.Error as exc:
                self._raise("prune failed on", exc, "audit-write-failed")
        return int(n)

    # -- reading -------------------------------------------------------------------------
    def query(
        self, flt: AuditFilter, *, limit: int | None = None, after_seq: int = 0
    ) -> Iterator[StoredEvent]:
        """Matching events in seq order, their events decoded on first access (`StoredEvent`),
        fetched in pages (keyset on seq), so a long iteration holds neither a transaction nor
        the store's lock between pages."""
        cond, args = where(flt, "%s", "strpos(policies, {ph}) > 0")
        cond = (cond + " AND seq > %s") if cond else " WHERE seq > %s"
        sql = f"SELECT seq, body, hash FROM {self._events}{cond} ORDER BY seq LIMIT %s"
        left = None if limit is None else max(0, int(limit))
        last = after_seq
        while left is None or left > 0:
            page = _QUERY_CHUNK if left is None else min(left, _QUERY_CHUNK)
            with self._lock:
                try:
                    rows = self._connection().execute(sql, [*args, last, page]).fetchall()
                except psycopg.Error as exc:
                    self._raise("query failed on", exc, "audit-store-unavailable")
            yield from starmap(StoredEvent.from_row, rows)
            if len(rows) < page:
                return
            last = int(rows[-1][0])
            if left is not None:
                left -= len(rows)

    def count(self, flt: AuditFilter) -> int:
        cond, args = where(flt, "%s", "strpos(policies, {ph}) > 0")
        with self._lock:
            try:
                row = (
                    self._connection()
                    .execute(f"SELECT count(*) FROM {self._events}{cond}", args)
                    .fetchone()
                )
            except psycopg.Error as exc:
                self._raise("count failed on", exc, "audit-store-unavailable")
        assert row is not None
        return int(row[0])

    def who(self, flt: AuditFilter) -> list[WhoRow]:
        cond, args = where(flt, "%s", "strpos(policies, {ph}) > 0")
        sql = (
            "SELECT peer_identity, subject, workload, port, protocol, verdict, count(*), "
            f"min(time_ns), max(time_ns) FROM {self._events}{cond} "
            "GROUP BY peer_identity, subject, workload, port, protocol, verdict"
        )
        with self._lock:
            try:
                result = self._connection().execute(sql, args).fetchall()
            except psycopg.Error as exc:
                self._raise("who failed on", exc, "audit-store-unavailable")
        return fold_who(result)

    # -- verification --------------------------------------------------------------------
    def verify(self, public_key: Any = None) -> VerifyReport:
        """Walk the chain; name the first altered, inserted or missing record; check every
        checkpoint's signature (with `public_key`, else the signer's) and that the store does
        not end before the latest checkpoint (a truncated tail). One consistent snapshot,
        streamed through a server-side cursor on a connection of its own."""
        conn = self._open(isolation=IsolationLevel.REPEATABLE_READ, read_only=True)
        try:
            with conn.transaction():
                return self._verify(conn, public_key)
        except psycopg.Error as exc:
            self._raise("verify failed on", exc, "audit-store-unavailable")
        finally:
            conn.close()

    def _verify(self, conn: psycopg.Connection[Any], public_key: Any) -> VerifyReport:
        cps = [
            Checkpoint(int(r[0]), bytes(r[1]), int(r[2]), str(r[3]), bytes(r[4]))
            for r in conn.execute(
                "SELECT seq, hash, time_ns, key_id, signature "
                f"FROM {self._checkpoints} ORDER BY seq"
            )
        ]
        with conn.cursor(name="cport_audit_verify", binary=True) as cur:
            cur.itersize = _VERIFY_CHUNK
            cur.execute(
                f"SELECT seq, {', '.join(_COLUMNS)}, policies, body, prev_hash, hash "
                f"FROM {self._events} ORDER BY seq"
            )
            rows = ((int(r[0]), r[1:-3], bytes(r[-3]), bytes(r[-2]), bytes(r[-1])) for r in cur)
            return verify_chain(
                rows,
                cps,
                anchor=self._meta(conn, "anchor"),
                columns=(*_COLUMNS, "policies"),
                expected=lambda ev: (*_columns(ev), _policies(ev)),
                public_key=public_key
                if public_key is not None
                else (self.signer.public_key if self.signer else None),
            )
