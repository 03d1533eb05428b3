"""The audit store contract: append, query, filters, who, checkpoints, verification and its
tamper cases, and pruning.

Store tests run against both backends (SQLite and PostgreSQL) through the `store` fixture of
`conftest.py`; tampering goes behind the store's back through its `raw_sql` fixture. Tests of
the SQLite store itself (several handles on one file, reopening, a failing append) come last.
"""

from __future__ import annotations

import enum
import hashlib
import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cport.audit import (
    GENESIS,
    AuditEvent,
    AuditFilter,
    PolicyRef,
    Signer,
    SQLiteStore,
    StoredEvent,
    event_from_explanation,
    link,
    verify_checkpoint,
)
from cport.engine import Endpoint, Flow, compile_table, explain, resolve_endpoint
from cport.errors import AuditError
from cport.identity import IdentityAllocator, Labels, VerifiedIdentity
from cport.model import load

from .conftest import RawSQL

ROOT = Path(__file__).resolve().parents[2]
ESTATE = ROOT / "examples" / "estate"

SEC = 1_000_000_000
T0 = 1_790_000_000 * SEC  # a fixed instant (2026-09-21)

LEDGER = PolicyRef("PortPolicy", "payments", "ledger-db", 3)
API = PolicyRef("PortPolicy", "payments", "payments-api", 1)
LEDGER_SHORT = PolicyRef("PortPolicy", "payments", "ledger", 2)
OFFICE = PolicyRef("CiliumClusterwideNetworkPolicy", "", "block-legacy-office", 1)
CI = PolicyRef("PortPolicy", "ci", "ci-lockdown", 4)


def ev(i: int = 0, **over: Any) -> AuditEvent:
    """An event at T0 + i seconds: payments-api → ledger-db:5432, allowed."""
    base: dict[str, Any] = {
        "time_ns": T0 + i * SEC,
        "kind": "decision",
        "node": "node-a",
        "enforcer": "proxy",
        "verdict": "allowed",
        "reason": "allowed",
        "src_ip": "198.51.100.10",
        "src_port": 40000 + i,
        "dst_ip": "198.51.100.20",
        "dst_port": 5432,
        "peer_identity": 257,
        "peer_labels": ("k8s:app=payments-api", "k8s:io.kubernetes.pod.namespace=payments"),
        "subject": "payments/payments-api",
        "workload": "payments/ledger-db",
        "port": 5432,
        "policies": (API, LEDGER),
        "table_revision": 7,
    }
    base.update(over)
    return AuditEvent(**base)


# The events the filter, count and who tests query (seq = index + 1).
DATASET: tuple[AuditEvent, ...] = (
    ev(0),  # 1
    ev(  # 2
        1,
        verdict="denied",
        reason="default-deny",
        peer_identity=300,
        subject="frontend/web",
        policies=(),
    ),
    ev(  # 3
        2,
        reason="authenticated",
        peer_identity=262,
        subject="alice@corp.example",
        issuer="corp-okta",
        credential_kind="oidc",
        token_id="tok-1",
        policies=(LEDGER_SHORT,),
    ),
    ev(  # 4
        3,
        verdict="denied",
        reason="policy-deny",
        peer_identity=2,
        subject="",
        src_ip="203.0.113.7",
        workload="payments/payments-api",
        port=8080,
        dst_port=8080,
        policies=(OFFICE,),
    ),
    ev(  # 5
        4,
        kind="close",
        bytes_in=1200,
        bytes_out=88,
        duration_ns=3 * SEC,
        termination="client-closed",
    ),
    ev(  # 6
        5,
        verdict="audit",
        reason="audit",
        peer_identity=270,
        subject="ci/runner",
        policies=(CI,),
    ),
)


def _seqs(store: Any, flt: AuditFilter, **kw: Any) -> list[int]:
    return [s.seq for s in store.query(flt, **kw)]


# -- raw access ----------------------------------------------------------------------------------
def _stored(store: Any, seq: int) -> StoredEvent:
    got: StoredEvent
    [got] = list(store.query(AuditFilter(), after_seq=seq - 1, limit=1))
    assert got.seq == seq
    return got


def _sqlite(path: str | Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run `sql` on a SQLite audit database behind its store's back."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        return list(db.execute(sql, params))
    finally:
        db.close()


def _dump(store: Any, request: pytest.FixtureRequest) -> list[tuple[Any, ...]]:
    """Every row of every table of the store's database."""
    if isinstance(store, SQLiteStore):
        return [
            row
            for table in ("events", "checkpoints", "meta")
            for row in _sqlite(store.path, f"SELECT * FROM {table}")
        ]
    import psycopg

    p = store.table_prefix
    with psycopg.connect(request.getfixturevalue("pg_dsn")) as conn:
        return [
            tuple(row)
            for table in ("events", "checkpoints", "meta")
            for row in conn.execute(f"SELECT * FROM {p}{table}").fetchall()
        ]


@pytest.fixture
def filled(store: Any) -> Any:
    assert store.append(DATASET) == [1, 2, 3, 4, 5, 6]
    return store


# -- append ----------------------------------------------------------------------------------
def test_append_returns_contiguous_seqs_from_1_across_batches(store: Any) -> None:
    st = store
    assert st.append([]) == []
    assert st.append([ev(0), ev(1), ev(2)]) == [1, 2, 3]
    assert st.append([ev(3)]) == [4]
    assert st.append([]) == []
    assert st.append([ev(i) for i in range(4, 9)]) == [5, 6, 7, 8, 9]
    assert st.count(AuditFilter()) == 9
    assert _seqs(st, AuditFilter()) == list(range(1, 10))


def test_round_trip_is_the_same_event(store: Any) -> None:
    rich = ev(
        0,
        kind="close",
        protocol="UDP",
        direction="egress",
        peer_labels=("k8s:app=x", "oidc:groups=dba", "cidr:prefix=198.51.100.0/24", "ünïcode=ok"),
        policies=(LEDGER, OFFICE, CI),
        bytes_in=2**40,
        bytes_out=1,
        duration_ns=5 * SEC,
        termination="revoked",
        extra={"note": "café", "n": 3, "nested": {"a": [1, 2]}},
    )
    plain = ev(1, peer_labels=(), policies=())
    assert store.append([rich, plain]) == [1, 2]
    got = list(store.query(AuditFilter()))
    assert [g.event for g in got] == [rich, plain]
    assert got[0].event.policies == (LEDGER, OFFICE, CI)
    assert isinstance(got[0].event.policies, tuple)
    assert got[0].event.peer_labels == rich.peer_labels
    assert isinstance(got[0].event.peer_labels, tuple)
    assert got[1].event.policies == () and got[1].event.peer_labels == ()


def test_stored_hashes_are_the_chain_over_canonical_bodies(store: Any) -> None:
    events = [ev(i) for i in range(3)]
    store.append(events[:2])
    store.append(events[2:])
    prev = GENESIS
    for stored, event in zip(store.query(AuditFilter()), events, strict=True):
        prev = link(prev, event.body())
        assert stored.hash == prev


class _Verdict(enum.StrEnum):
    DENIED = "denied"


class _Port(enum.IntEnum):
    POSTGRES = 5432


def test_unusual_values_round_trip_and_verify(store: Any) -> None:
    """Values the fast encoder hands to json (or that PostgreSQL text cannot hold) are stored
    as their canonical body says, read back, filtered and verified like any other."""
    events = [
        ev(0, subject="nul\x00inside", reason='tab\tnew\nline\\ "q"', token_id="\x00"),
        ev(1, verdict=_Verdict.DENIED, port=_Port.POSTGRES),
        ev(2, peer_labels=["a", "list"], policies=(PolicyRef("PortPolicy", "n\x00s", "p", 1),)),
        ev(3, node="nœud ✓ \U0001f600", extra={"z": 1, "a": [None, True]}),
        ev(4, bytes_in=2**62, src_port=-1),
    ]
    assert store.append(events) == [1, 2, 3, 4, 5]
    got = list(store.query(AuditFilter()))
    assert [g.event.body() for g in got] == [e.body() for e in events]
    assert got[0].event.subject == "nul\x00inside"
    assert _seqs(store, AuditFilter(verdict="denied")) == [2]
    assert _seqs(store, AuditFilter(port=5432)) == [1, 2, 3, 4, 5]
    assert _seqs(store, AuditFilter(policy="p")) == [3]
    report = store.verify()
    assert report.ok and report.records == 5, report


# -- filters, limit, after_seq, count --------------------------------------------------------
# (filter, the seqs of DATASET it selects); one store per backend serves every case.
FILTER_CASES: list[tuple[AuditFilter, list[int]]] = [
    (AuditFilter(), [1, 2, 3, 4, 5, 6]),
    (AuditFilter(since_ns=T0 + 1 * SEC), [2, 3, 4, 5, 6]),  # since is inclusive
    (AuditFilter(until_ns=T0 + 2 * SEC), [1, 2]),  # until is exclusive
    (AuditFilter(since_ns=T0 + 1 * SEC, until_ns=T0 + 3 * SEC), [2, 3]),
    (AuditFilter(since_ns=T0 + 100 * SEC), []),
    (AuditFilter(verdict="denied"), [2, 4]),
    (AuditFilter(verdict="audit"), [6]),
    (AuditFilter(verdict="auth-required"), []),
    (AuditFilter(reason="default-deny"), [2]),
    (AuditFilter(reason="authenticated"), [3]),
    (AuditFilter(workload="payments/ledger-db"), [1, 2, 3, 5, 6]),
    (AuditFilter(workload="payments/payments-api"), [4]),
    (AuditFilter(workload="payments/ledger"), []),
    (AuditFilter(port=8080), [4]),
    (AuditFilter(port=5432), [1, 2, 3, 5, 6]),
    (AuditFilter(peer_identity=257), [1, 5]),
    (AuditFilter(peer_identity=2), [4]),
    (AuditFilter(subject="alice@corp.example"), [3]),
    (AuditFilter(subject="alice"), []),
    (AuditFilter(kind="close"), [5]),
    (AuditFilter(kind="decision"), [1, 2, 3, 4, 6]),
    (AuditFilter(policy="ledger-db"), [1, 5]),
    (AuditFilter(policy="ledger"), [3]),  # not ledger-db
    (AuditFilter(policy="payments/ledger-db"), [1, 5]),
    (AuditFilter(policy="payments/ledger"), [3]),
    (AuditFilter(policy="other/ledger-db"), []),
    (AuditFilter(policy="payments-api"), [1, 5]),
    (AuditFilter(policy="block-legacy-office"), [4]),
    (AuditFilter(policy="ci/ci-lockdown"), [6]),
    (AuditFilter(policy="ledger-d"), []),
    (AuditFilter(policy="edger-db"), []),
    (AuditFilter(verdict="allowed", workload="payments/ledger-db", port=5432), [1, 3, 5]),
    (AuditFilter(verdict="allowed", kind="decision", peer_identity=257), [1]),
    (AuditFilter(policy="ledger-db", kind="close", since_ns=T0 + 4 * SEC), [5]),
]


def test_filters(filled: Any) -> None:
    for flt, expected in FILTER_CASES:
        assert (flt, _seqs(filled, flt)) == (flt, expected)
        assert (flt, filled.count(flt)) == (flt, len(expected))


def test_filter_times_beyond_the_int64_range(filled: Any) -> None:
    """A time after 2262 (or before 1677) in nanoseconds does not fit in 64 bits; the answer is
    still just "nothing after it" / "everything before it" (as PostgreSQL gives it)."""
    far = 2**65
    assert _seqs(filled, AuditFilter(since_ns=far)) == []
    assert filled.count(AuditFilter(until_ns=far)) == 6
    assert len(filled.who(AuditFilter(since_ns=-far))) == 5


def test_query_returns_the_matching_events(filled: Any) -> None:
    [(seq, got)] = [(s.seq, s.event) for s in filled.query(AuditFilter(subject="ci/runner"))]
    assert (seq, got) == (6, DATASET[5])


def test_policy_filter_does_not_match_a_namespace_suffix(store: Any) -> None:
    other = PolicyRef("PortPolicy", "old-payments", "ledger-db", 1)
    store.append([ev(0, policies=(LEDGER,)), ev(1, policies=(other,))])
    assert _seqs(store, AuditFilter(policy="old-payments/ledger-db")) == [2]
    assert _seqs(store, AuditFilter(policy="ledger-db")) == [1, 2]


def test_policy_filter_by_namespace_is_anchored(store: Any) -> None:
    other = PolicyRef("PortPolicy", "old-payments", "ledger-db", 1)
    store.append([ev(0, policies=(LEDGER,)), ev(1, policies=(other,))])
    assert _seqs(store, AuditFilter(policy="payments/ledger-db")) == [1]
    assert store.count(AuditFilter(policy="payments/ledger-db")) == 1


def test_policy_filter_treats_like_wildcards_literally(store: Any) -> None:
    store.append([ev(0, policies=(LEDGER,))])
    for pattern in ("%", "ledger%", "_edger-db", "ledger-d_", "payments/%"):
        assert _seqs(store, AuditFilter(policy=pattern)) == [], pattern


def test_limit_and_after_seq_page_through(filled: Any) -> None:
    everything = AuditFilter()
    assert _seqs(filled, everything, limit=2) == [1, 2]
    assert _seqs(filled, everything, limit=2, after_seq=2) == [3, 4]
    assert _seqs(filled, everything, limit=10, after_seq=4) == [5, 6]
    assert _seqs(filled, everything, after_seq=6) == []
    assert _seqs(filled, everything, limit=0) == []
    pages: list[int] = []
    last = 0
    allowed = AuditFilter(verdict="allowed")
    while page := _seqs(filled, allowed, limit=1, after_seq=last):
        pages += page
        last = page[-1]
    assert pages == [1, 3, 5]


def test_count_on_an_empty_store(store: Any) -> None:
    assert store.count(AuditFilter()) == 0
    assert list(store.query(AuditFilter())) == []
    assert store.who(AuditFilter()) == []


# -- who ---------------------------------------------------------------------------------------
def test_who_aggregates_per_peer_subject_workload_port_protocol(store: Any) -> None:
    store.append(
        [
            ev(0),
            ev(1, verdict="denied", reason="default-deny"),
            ev(2),
            ev(3, peer_identity=300, subject="frontend/web", verdict="denied"),
            ev(4, protocol="UDP"),  # another protocol: another row
            ev(5, port=8080, dst_port=8080, workload="payments/payments-api"),
            ev(6, subject="payments/other-sa"),  # same identity, another subject
        ]
    )
    rows = store.who(AuditFilter())
    got = {
        (r.peer_identity, r.subject, r.workload, r.port, r.protocol): (
            r.count,
            r.first_ns,
            r.last_ns,
            r.verdicts,
        )
        for r in rows
    }
    api = "payments/payments-api"
    assert got == {
        (257, api, "payments/ledger-db", 5432, "TCP"): (
            3,
            T0,
            T0 + 2 * SEC,
            {"allowed": 2, "denied": 1},
        ),
        (300, "frontend/web", "payments/ledger-db", 5432, "TCP"): (
            1,
            T0 + 3 * SEC,
            T0 + 3 * SEC,
            {"denied": 1},
        ),
        (257, api, "payments/ledger-db", 5432, "UDP"): (
            1,
            T0 + 4 * SEC,
            T0 + 4 * SEC,
            {"allowed": 1},
        ),
        (257, api, "payments/payments-api", 8080, "TCP"): (
            1,
            T0 + 5 * SEC,
            T0 + 5 * SEC,
            {"allowed": 1},
        ),
        (257, "payments/other-sa", "payments/ledger-db", 5432, "TCP"): (
            1,
            T0 + 6 * SEC,
            T0 + 6 * SEC,
            {"allowed": 1},
        ),
    }
    # newest first
    assert [r.last_ns for r in rows] == sorted((r.last_ns for r in rows), reverse=True)
    assert rows[0].subject == "payments/other-sa"
    assert rows[-1].verdicts == {"allowed": 2, "denied": 1}
    doc = rows[-1].to_json()
    assert doc == {
        "peerIdentity": 257,
        "subject": api,
        "workload": "payments/ledger-db",
        "port": 5432,
        "protocol": "TCP",
        "count": 3,
        "firstSeenNs": T0,
        "lastSeenNs": T0 + 2 * SEC,
        "verdicts": {"allowed": 2, "denied": 1},
    }


def test_who_applies_the_filter(filled: Any) -> None:
    rows = filled.who(AuditFilter(workload="payments/ledger-db", since_ns=T0 + 2 * SEC))
    assert [(r.peer_identity, r.subject, r.count) for r in rows] == [
        (270, "ci/runner", 1),
        (257, "payments/payments-api", 1),  # seq 5 only: seq 1 is before `since`
        (262, "alice@corp.example", 1),
    ]
    assert filled.who(AuditFilter(until_ns=T0)) == []
    [denied] = filled.who(AuditFilter(verdict="denied", port=8080))
    assert (denied.peer_identity, denied.subject, denied.verdicts) == (2, "", {"denied": 1})


# -- verify and checkpoints --------------------------------------------------------------------
def test_verify_empty_and_clean_store(store: Any) -> None:
    empty = store.verify()
    assert empty.ok and empty.records == 0 and empty.problem == ""
    store.append([ev(i) for i in range(5)])
    store.append([ev(5)])
    report = store.verify()
    assert report.ok, report
    assert (report.records, report.first_seq, report.last_seq) == (6, 1, 6)
    assert (report.problem, report.seq, report.checkpoints) == ("", None, 0)
    assert report.to_json() == {
        "ok": True,
        "records": 6,
        "checkpoints": 0,
        "firstSeq": 1,
        "lastSeq": 6,
        "problem": None,
        "seq": None,
        "detail": "",
    }


def test_checkpoint_signs_the_head_and_verify_checks_it(store: Any) -> None:
    st = store
    assert st.checkpoint() is None  # nothing to sign yet
    st.append([ev(i) for i in range(4)])
    cp = st.checkpoint()
    assert cp is not None
    heads = [s.hash for s in st.query(AuditFilter())]
    assert (cp.seq, cp.hash) == (4, heads[-1])
    assert cp.key_id == st.signer.key_id
    assert verify_checkpoint(cp, st.signer.public_key)
    other = Ed25519PrivateKey.generate().public_key()
    assert not verify_checkpoint(cp, other)
    assert not verify_checkpoint(replace(cp, seq=3), st.signer.public_key)
    assert st.latest_checkpoint() == cp
    assert cp.to_json() == {
        "seq": 4,
        "hash": heads[-1].hex(),
        "timeNs": cp.time_ns,
        "keyId": st.signer.key_id,
        "signature": cp.signature.hex(),
    }
    report = st.verify()
    assert report.ok and report.checkpoints == 1, report
    st.append([ev(4), ev(5)])
    cp2 = st.checkpoint()
    assert cp2 is not None and cp2.seq == 6
    assert st.latest_checkpoint() == cp2
    report = st.verify()
    assert report.ok and (report.records, report.checkpoints, report.last_seq) == (6, 2, 6)


def _tamper_ready(st: Any, n: int = 6) -> list[bytes]:
    st.append([ev(i) for i in range(3)])
    st.append([ev(i) for i in range(3, n)])
    assert st.verify().ok
    return [s.hash for s in st.query(AuditFilter())]


def _assert_problem(st: Any, problem: str, seq: int, **kw: Any) -> None:
    report = st.verify(**kw)
    assert not report.ok, report
    assert (report.problem, report.seq) == (problem, seq), report
    assert report.detail
    doc = report.to_json()
    assert (doc["ok"], doc["problem"], doc["seq"]) == (False, problem, seq)


def test_verify_names_an_altered_column(store: Any, raw_sql: RawSQL) -> None:
    _tamper_ready(store)
    original = _stored(store, 3).event
    for column, value in (
        ("verdict", "denied"),
        ("port", 22),
        ("subject", "mallory"),
        ("time_ns", T0 + 999),
        ("token_id", "forged"),
    ):
        raw_sql(store, f"UPDATE {{events}} SET {column} = ? WHERE seq = 3", value)
        _assert_problem(store, "altered", 3)
        report = store.verify()
        assert (report.records, report.first_seq, report.last_seq) == (2, 1, 2)
        assert column in report.detail
        put_back = getattr(original, column)
        raw_sql(store, f"UPDATE {{events}} SET {column} = ? WHERE seq = 3", put_back)
        assert store.verify().ok, column


def test_verify_names_an_altered_policies_column(store: Any, raw_sql: RawSQL) -> None:
    """The policies column is what the policy filter reads: it must agree with the body."""
    _tamper_ready(store)
    raw_sql(store, "UPDATE {events} SET policies = ? WHERE seq = 3", "[]")
    assert _seqs(store, AuditFilter(policy="ledger-db")) == [1, 2, 4, 5, 6]  # hidden
    _assert_problem(store, "altered", 3)


def test_verify_names_an_altered_body(store: Any, raw_sql: RawSQL) -> None:
    _tamper_ready(store)
    forged = replace(_stored(store, 4).event, verdict="denied")
    raw_sql(store, "UPDATE {events} SET body = ? WHERE seq = 4", forged.body())
    _assert_problem(store, "altered", 4)


def test_verify_names_a_rehashed_record(store: Any, raw_sql: RawSQL) -> None:
    """Body, columns and hash rewritten consistently: the next record's prev_hash gives it
    away."""
    _tamper_ready(store)
    prev = _stored(store, 2).hash
    forged = ev(2, verdict="denied")
    raw_sql(
        store,
        "UPDATE {events} SET body = ?, verdict = ?, hash = ? WHERE seq = 3",
        forged.body(),
        "denied",
        link(prev, forged.body()),
    )
    _assert_problem(store, "inserted", 4)


def test_verify_names_a_rewritten_tail_against_a_checkpoint(store: Any, raw_sql: RawSQL) -> None:
    """The whole tail re-chained from record 5: only the signed checkpoint shows it."""
    _tamper_ready(store)
    cp = store.checkpoint()
    assert cp is not None and cp.seq == 6
    prev = _stored(store, 4).hash
    for seq in (5, 6):
        forged = ev(seq - 1, verdict="denied")
        h = link(prev, forged.body())
        raw_sql(
            store,
            "UPDATE {events} SET body = ?, verdict = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            forged.body(),
            "denied",
            prev,
            h,
            seq,
        )
        prev = h
    _assert_problem(store, "altered", 6)


def test_verify_names_a_missing_record(store: Any, raw_sql: RawSQL) -> None:
    hashes = [GENESIS, *_tamper_ready(store)]
    for seq in (5, 3, 1):
        original = _stored(store, seq).event
        raw_sql(store, "DELETE FROM {events} WHERE seq = ?", seq)
        _assert_problem(store, "missing", seq)
        assert store.verify().records == seq - 1
        _insert_row(raw_sql, store, seq, original, hashes[seq - 1], hashes[seq])  # put back
        assert store.verify().ok, seq


def test_verify_names_several_missing_records(store: Any, raw_sql: RawSQL) -> None:
    _tamper_ready(store)
    raw_sql(store, "DELETE FROM {events} WHERE seq IN (3, 4)")
    _assert_problem(store, "missing", 3)
    assert "3..4" in store.verify().detail


def _insert_row(
    raw_sql: RawSQL, st: Any, seq: int, event: AuditEvent, prev: bytes, h: bytes
) -> None:
    cols = list(_COLUMNS)
    values = [getattr(event, c) for c in cols]
    pols = json.dumps([f"{p.kind}/{p.namespace}/{p.name}" for p in event.policies])
    names = ", ".join(["seq", *cols, "policies", "body", "prev_hash", "hash"])
    marks = ", ".join("?" * (len(cols) + 5))
    raw_sql(
        st,
        f"INSERT INTO {{events}} ({names}) VALUES ({marks})",
        seq,
        *values,
        pols,
        event.body(),
        prev,
        h,
    )


_COLUMNS = (
    "time_ns", "kind", "node", "enforcer", "verdict", "reason", "protocol", "src_ip",
    "src_port", "dst_ip", "dst_port", "direction", "peer_identity", "subject", "issuer",
    "credential_kind", "token_id", "workload", "port", "table_revision", "bytes_in",
    "bytes_out", "duration_ns", "termination",
)  # fmt: skip


def test_verify_names_a_record_inserted_at_the_tail(store: Any, raw_sql: RawSQL) -> None:
    _tamper_ready(store)
    forged = ev(10, verdict="allowed", subject="mallory")
    bogus_prev = hashlib.sha256(b"forged").digest()
    _insert_row(raw_sql, store, 7, forged, bogus_prev, link(bogus_prev, forged.body()))
    _assert_problem(store, "inserted", 7)
    assert store.verify().records == 6


def test_verify_names_a_record_inserted_in_the_middle(store: Any, raw_sql: RawSQL) -> None:
    """Record 3 replaced by a forged one that is internally consistent but does not follow
    record 2."""
    _tamper_ready(store)
    raw_sql(store, "DELETE FROM {events} WHERE seq = 3")
    forged = ev(2, subject="mallory")
    bogus_prev = hashlib.sha256(b"forged").digest()
    _insert_row(raw_sql, store, 3, forged, bogus_prev, link(bogus_prev, forged.body()))
    _assert_problem(store, "inserted", 3)


def test_verify_names_a_truncated_tail_after_a_checkpoint(store: Any, raw_sql: RawSQL) -> None:
    _tamper_ready(store)
    cp = store.checkpoint()
    assert cp is not None and cp.seq == 6
    raw_sql(store, "DELETE FROM {events} WHERE seq > 3")
    _assert_problem(store, "truncated", 6)
    report = store.verify()
    assert report.records == 3
    assert "3" in report.detail


def test_truncation_without_a_checkpoint_is_not_detectable(store: Any, raw_sql: RawSQL) -> None:
    """A plain chain cannot show a truncated tail; that is what checkpoints are for."""
    _tamper_ready(store)
    raw_sql(store, "DELETE FROM {events} WHERE seq > 3")
    assert store.verify().ok


def test_truncated_report_ends_where_the_store_ends(store: Any, raw_sql: RawSQL) -> None:
    _tamper_ready(store)
    store.checkpoint()
    raw_sql(store, "DELETE FROM {events} WHERE seq > 3")
    report = store.verify()
    assert report.problem == "truncated"
    assert (report.records, report.first_seq, report.last_seq) == (3, 1, 3)


def test_verify_names_a_flipped_checkpoint_signature(store: Any, raw_sql: RawSQL) -> None:
    _tamper_ready(store, n=4)
    cp = store.checkpoint()
    assert cp is not None
    store.append([ev(4), ev(5)])
    sig = bytearray(cp.signature)
    sig[0] ^= 0x01
    raw_sql(store, "UPDATE {checkpoints} SET signature = ? WHERE seq = ?", bytes(sig), cp.seq)
    _assert_problem(store, "bad-checkpoint", 4)


def test_verify_names_a_checkpoint_with_a_forged_hash(store: Any, raw_sql: RawSQL) -> None:
    _tamper_ready(store)
    cp = store.checkpoint()
    assert cp is not None
    raw_sql(store, "UPDATE {checkpoints} SET hash = ? WHERE seq = 6", bytes(32))
    _assert_problem(store, "bad-checkpoint", 6)


def test_verify_with_the_wrong_public_key_is_a_bad_checkpoint(store: Any) -> None:
    _tamper_ready(store)
    assert store.verify(public_key=store.signer.public_key).ok  # no checkpoint
    store.checkpoint()
    other = Ed25519PrivateKey.generate().public_key()
    _assert_problem(store, "bad-checkpoint", 6, public_key=other)
    assert store.verify(public_key=store.signer.public_key).ok
    assert store.verify().ok


def test_checkpoint_made_by_another_key_is_a_bad_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    st = SQLiteStore(path, Signer.load_or_create(tmp_path / "a"))
    st.append([ev(0), ev(1)])
    st.checkpoint()
    st.close()
    st = SQLiteStore(path, Signer.load_or_create(tmp_path / "b"))
    try:
        _assert_problem(st, "bad-checkpoint", 2)
    finally:
        st.close()


# -- prune ---------------------------------------------------------------------------------------
def test_prune_keeps_the_chain_verifiable_from_the_anchor(store: Any) -> None:
    st = store
    st.append([ev(i) for i in range(10)])
    st.checkpoint()  # at 10
    assert st.prune(T0 + 5 * SEC) == 5  # records at T0 .. T0+4s: seqs 1..5
    report = st.verify()
    assert report.ok, report
    assert (report.records, report.first_seq, report.last_seq) == (5, 6, 10)
    assert report.checkpoints >= 2  # the anchor's and the head's
    assert _seqs(st, AuditFilter()) == [6, 7, 8, 9, 10]
    assert st.count(AuditFilter()) == 5
    assert st.prune(T0 + 5 * SEC) == 0  # nothing older left
    # later appends continue the chain
    assert st.append([ev(20), ev(21)]) == [11, 12]
    assert st.checkpoint() is not None
    report = st.verify()
    assert report.ok and (report.first_seq, report.last_seq, report.records) == (6, 12, 7)


def test_prune_everything_then_append(store: Any) -> None:
    st = store
    st.append([ev(i) for i in range(3)])
    assert st.prune(T0 + 100 * SEC) == 3
    report = st.verify()
    assert report.ok and report.records == 0, report
    assert report.first_seq == 4
    assert st.append([ev(50)]) == [4]
    report = st.verify()
    assert report.ok and (report.first_seq, report.last_seq, report.records) == (4, 4, 1)
    # the record after the anchor follows it
    assert st.prune(T0 + 40 * SEC) == 0
    assert st.prune(T0 + 60 * SEC) == 1
    assert st.verify().ok
    assert st.append([ev(70), ev(71)]) == [5, 6]
    assert st.verify().ok


def test_prune_then_tamper_is_still_detected(store: Any, raw_sql: RawSQL) -> None:
    st = store
    st.append([ev(i) for i in range(8)])
    st.prune(T0 + 3 * SEC)
    raw_sql(st, "DELETE FROM {events} WHERE seq = 4")  # the first record after the anchor
    _assert_problem(st, "missing", 4)


def test_a_forged_anchor_is_detected(store: Any, raw_sql: RawSQL) -> None:
    """Deleting old records and writing an anchor by hand (no signed checkpoint at it) must
    not verify: only pruning, which signs the anchor, may move the start of the chain."""
    st = store
    st.append([ev(i) for i in range(8)])
    st.checkpoint()
    fourth = next(iter(st.query(AuditFilter(), limit=1, after_seq=3)))
    h = fourth.hash.hex()
    raw_sql(st, "DELETE FROM {events} WHERE seq <= 4")
    raw_sql(st, "DELETE FROM {meta} WHERE key = 'anchor'")
    raw_sql(st, "INSERT INTO {meta} VALUES ('anchor', ?)", f"4:{h}")
    _assert_problem(st, "bad-anchor", 4)


def test_prune_without_a_signer_raises(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store.append([ev(0), ev(1)])
    monkeypatch.setattr(store, "signer", None)
    with pytest.raises(AuditError) as info:
        store.prune(T0 + 10 * SEC)
    assert info.value.code == "audit-key-missing"
    assert store.count(AuditFilter()) == 2  # nothing deleted


# -- credentials never stored ---------------------------------------------------------------------
TOKEN = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0"
    ".eyJzdWIiOiJhbGljZUBjb3JwLmV4YW1wbGUiLCJpc3MiOiJjb3JwLW9rdGEifQ"
    ".c2lnbmF0dXJlLXRoYXQtbXVzdC1uZXZlci1iZS1zdG9yZWQ"
)


def _explained_with_credential() -> tuple[Any, VerifiedIdentity]:
    bundle = load([ESTATE / "policies", ESTATE / "inventory"], cluster="default")
    labels = Labels.parse(
        "oidc:iss=corp-okta,oidc:sub=alice@corp.example,oidc:groups=dba", default_source="k8s"
    )
    cred = VerifiedIdentity(
        kind="oidc",
        labels=labels,
        subject="alice@corp.example",
        issuer="corp-okta",
        expires_at=4_000_000_000.0,
        token_id=hashlib.sha256(TOKEN.encode()).hexdigest(),
        claims={"sub": "alice@corp.example", "iss": "corp-okta", "groups": ["dba"]},
    )
    table = compile_table(
        bundle.policies, bundle.inventory, IdentityAllocator(None), extra_identities=[labels]
    )
    num = next(n for n, ls in table.identities.items() if ls == labels)
    src = Endpoint(num, labels, "alice@corp.example (oidc from corp-okta)")
    dst = resolve_endpoint(table, bundle.inventory, "payments/ledger-db")
    return explain(table, Flow(src.identity, dst.identity, 6, 5432, True), src, dst), cred


def test_the_credential_is_never_stored(store: Any, request: pytest.FixtureRequest) -> None:
    exp, cred = _explained_with_credential()
    event = event_from_explanation(exp, enforcer="cli", credential=cred, node="n1", time_ns=T0)
    assert (event.verdict, event.reason) == ("allowed", "authenticated")
    assert event.token_id == hashlib.sha256(TOKEN.encode()).hexdigest()
    assert (event.subject, event.issuer, event.credential_kind) == (
        "alice@corp.example",
        "corp-okta",
        "oidc",
    )
    assert (event.workload, event.port, event.peer_identity) == (
        "payments/ledger-db",
        5432,
        exp.flow.src,
    )
    assert event.policies == (PolicyRef("PortPolicy", "payments", "ledger-db", 1),)
    assert store.append([event]) == [1]
    [stored] = list(store.query(AuditFilter(subject="alice@corp.example")))
    assert stored.event == event
    pieces = [TOKEN, *TOKEN.split(".")]
    body = stored.event.body().decode()
    for piece in pieces:
        assert piece not in body
        assert piece not in json.dumps(stored.event.to_json())
    # nowhere in the database either: not in any column of any table ...
    rows = _dump(store, request)
    assert any(event.token_id in str(v) for row in rows for v in row)
    for row in rows:
        text = " ".join(
            bytes(v).decode("utf-8", "replace") if isinstance(v, bytes | memoryview) else str(v)
            for v in row
        )
        for piece in pieces:
            assert piece not in text
    if isinstance(store, SQLiteStore):  # ... nor anywhere in its files
        raw = b"".join(p.read_bytes() for p in Path(store.path).parent.glob("audit.db*"))
        assert event.token_id.encode() in raw
        for piece in pieces:
            assert piece.encode() not in raw


# -- the SQLite store itself ----------------------------------------------------------------
def test_sqlite_two_handles_on_one_file_never_fork_the_chain(tmp_path: Path) -> None:
    signer = Signer.load_or_create(tmp_path)
    a = SQLiteStore(tmp_path / "audit.db", signer)
    b = SQLiteStore(tmp_path / "audit.db", signer)
    try:
        assert a.append([ev(0), ev(1)]) == [1, 2]
        assert b.append([ev(2)]) == [3]
        assert a.append([ev(3)]) == [4]
        assert b.append([ev(4), ev(5)]) == [5, 6]
        assert a.verify().ok and b.verify().ok
        assert _seqs(a, AuditFilter()) == [1, 2, 3, 4, 5, 6]
    finally:
        a.close()
        b.close()


def test_sqlite_reopened_store_continues(tmp_path: Path) -> None:
    signer = Signer.load_or_create(tmp_path)
    st = SQLiteStore(tmp_path / "audit.db", signer)
    st.append([ev(0), ev(1)])
    cp = st.checkpoint()
    st.close()
    st = SQLiteStore(tmp_path / "audit.db", Signer.load_or_create(tmp_path))
    try:
        assert st.latest_checkpoint() == cp
        assert st.append([ev(2)]) == [3]
        report = st.verify()
        assert report.ok and (report.records, report.checkpoints) == (3, 1)
    finally:
        st.close()


def test_sqlite_without_a_signer_does_not_checkpoint(tmp_path: Path) -> None:
    st = SQLiteStore(tmp_path / "audit.db")
    try:
        st.append([ev(0)])
        assert st.checkpoint() is None
        assert st.latest_checkpoint() is None
        assert st.verify().ok
        with pytest.raises(AuditError) as info:
            st.prune(T0 + SEC)
        assert info.value.code == "audit-key-missing"
    finally:
        st.close()


def test_sqlite_in_memory(tmp_path: Path) -> None:
    st = SQLiteStore(":memory:", Signer.load_or_create(tmp_path))
    try:
        assert st.append([ev(0), ev(1)]) == [1, 2]
        assert st.checkpoint() is not None
        assert st.verify().ok
    finally:
        st.close()


def test_sqlite_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(AuditError) as info:
        SQLiteStore(path)
    assert info.value.code == "audit-store-unavailable"


def test_sqlite_failed_append_is_an_audit_error_and_commits_nothing(tmp_path: Path) -> None:
    st = SQLiteStore(tmp_path / "audit.db")
    try:
        st.append([ev(0)])
        _sqlite(
            st.path,
            "CREATE TRIGGER boom BEFORE INSERT ON events WHEN NEW.seq = 3 "
            "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END",
        )
        with pytest.raises(AuditError) as info:
            st.append([ev(1), ev(2)])  # record 2 goes in, record 3 fails: neither stays
        assert info.value.code == "audit-write-failed"
        assert _seqs(st, AuditFilter()) == [1]
        _sqlite(st.path, "DROP TRIGGER boom")
        assert st.append([ev(1), ev(2)]) == [2, 3]
        assert st.verify().ok
    finally:
        st.close()


def test_sqlite_queries_reuse_readers_and_see_new_records(tmp_path: Path) -> None:
    st = SQLiteStore(tmp_path / "audit.db")
    try:
        st.append([ev(0)])
        assert _seqs(st, AuditFilter()) == [1]
        st.append([ev(1)])
        assert _seqs(st, AuditFilter()) == [1, 2]  # a pooled reader: a fresh snapshot
        # An abandoned query keeps its snapshot (and its reader) until it is closed; it
        # never blocks the writer.
        it = st.query(AuditFilter())
        assert next(it).seq == 1
        assert st.append([ev(2)]) == [3]
        assert [s.seq for s in it] == [2]  # its answer is as of when it started
        it.close()
        # More queries open at once than the pool keeps: all answer, the pool stays small.
        many = [st.query(AuditFilter()) for _ in range(7)]
        assert [next(q).seq for q in many] == [1] * 7
        st.append([ev(3)])
        assert [[s.seq for s in q] for q in many] == [[2, 3]] * 7
        assert _seqs(st, AuditFilter()) == [1, 2, 3, 4]
        assert 1 <= len(st._readers) <= 4
    finally:
        st.close()
    assert st._readers == []


def test_sqlite_a_closed_store_keeps_no_reader(tmp_path: Path) -> None:
    st = SQLiteStore(tmp_path / "audit.db")
    st.append([ev(0)])
    it = st.query(AuditFilter())
    assert next(it).seq == 1
    st.close()
    assert list(it) == []  # finishes on its own connection, which is then closed
    assert st._readers == []
