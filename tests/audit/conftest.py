"""Audit-store fixtures: every `store` test runs against SQLite and against PostgreSQL.

One throwaway PostgreSQL server (`pg.PgServer`, on 127.0.0.1) serves the whole session, started
on first use; each test gets a fresh database in it. When no server can be started the
PostgreSQL variants skip with the reason — or FAIL with it when ``CI=true`` or
``CPORT_PRIVILEGED_TESTS=1``, so CI never passes without having run them.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cport.audit import Signer, SQLiteStore, Store
from cport.audit._postgres import PostgresStore

from .pg import PgServer, PgUnavailable

RawSQL = Callable[..., None]
_databases = itertools.count(1)


def _pg_required() -> bool:
    return (
        os.environ.get("CI", "").lower() in ("true", "1")
        or os.environ.get("CPORT_PRIVILEGED_TESTS") == "1"
    )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer | PgUnavailable]:
    """The session's PostgreSQL server, or why there is none (tests decide: skip or fail)."""
    try:
        server = PgServer().start()
    except PgUnavailable as exc:
        yield exc
        return
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(pg_server: PgServer | PgUnavailable) -> str:
    """The DSN of a fresh, empty database on the session's server."""
    if isinstance(pg_server, PgUnavailable):
        reason = f"PostgreSQL unavailable: {pg_server}"
        if _pg_required():
            pytest.fail(f"{reason} (CI=true or CPORT_PRIVILEGED_TESTS=1: not skipping)")
        pytest.skip(reason)
    return pg_server.create_database(f"t{next(_databases)}")


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return Signer.load_or_create(tmp_path / "state")


@pytest.fixture
def sqlite_store(tmp_path: Path, signer: Signer) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "audit.db", signer)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def pg_store(pg_dsn: str, signer: Signer) -> Iterator[PostgresStore]:
    s = PostgresStore(pg_dsn, signer)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Store:
    """A fresh, empty store of each kind, with a signer; closed after the test."""
    name = "sqlite_store" if request.param == "sqlite" else "pg_store"
    s: Store = request.getfixturevalue(name)
    return s


@pytest.fixture
def raw_sql(request: pytest.FixtureRequest) -> RawSQL:
    """``raw_sql(store, sql, *params)``: run SQL behind a store's back (to tamper with it).
    Write table names as ``{events}``, ``{checkpoints}``, ``{meta}``; placeholders as ``?``."""

    def run(store: Store, sql: str, *params: Any) -> None:
        args: Sequence[Any] = params
        if isinstance(store, SQLiteStore):
            text = sql.format(events="events", checkpoints="checkpoints", meta="meta")
            db = sqlite3.connect(store.path)
            try:
                db.execute(text, args)
                db.commit()
            finally:
                db.close()
        elif isinstance(store, PostgresStore):
            p = store.table_prefix
            text = sql.format(events=f"{p}events", checkpoints=f"{p}checkpoints", meta=f"{p}meta")
            dsn: str = request.getfixturevalue("pg_dsn")
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(text.replace("?", "%s"), args)
        else:
            raise TypeError(f"unknown store {store!r}")

    return run
