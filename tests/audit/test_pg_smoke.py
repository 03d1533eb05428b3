"""Smoke tests of the store fixtures and the PostgreSQL store: the same behaviour as SQLite
(append, query, count, who, checkpoint, verify, tamper evidence), concurrent appenders on one
PostgreSQL record, and no DSN password in any error."""

from __future__ import annotations

import threading
import traceback

import pytest

from cport.audit import AuditEvent, AuditFilter, PolicyRef, SQLiteStore, Store
from cport.audit._postgres import PostgresStore
from cport.errors import AuditError

from .conftest import RawSQL

T0 = 1_700_000_000_000_000_000


def event(k: int, node: str = "node-a") -> AuditEvent:
    denied = k % 5 == 0
    pols: tuple[PolicyRef, ...] = (PolicyRef("PortPolicy", f"ns{k % 3}", "db-access", 1),)
    if k % 4 == 0:
        pols += (PolicyRef("CiliumNetworkPolicy", f"ns{k % 3}", "baseline", 2),)
    return AuditEvent(
        time_ns=T0 + k * 1_000_000,
        kind="close" if k % 10 == 0 else "decision",
        node=node,
        enforcer="proxy",
        verdict="denied" if denied else "allowed",
        reason="no-matching-rule" if denied else "policy-allowed",
        src_ip=f"10.0.0.{k % 250}",
        src_port=40000 + k,
        dst_ip="198.51.100.7",
        dst_port=5432,
        peer_identity=300 + k % 7,
        peer_labels=("k8s:app=api",),
        subject=f"user{k % 11}@corp.example" if k % 2 else "",
        workload=f"ns{k % 3}/db",
        port=5432 if k % 6 else 8080,
        policies=pols,
        table_revision=3,
        bytes_in=k * 7 if k % 10 == 0 else 0,
        termination="client-closed" if k % 10 == 0 else "",
        extra={"k": k, "note": "ünïcødé ✓"} if k % 17 == 0 else {},
    )


FILTERS = [
    AuditFilter(),
    AuditFilter(verdict="denied"),
    AuditFilter(workload="ns1/db", port=5432),
    AuditFilter(peer_identity=303, kind="close"),
    AuditFilter(subject="user3@corp.example"),
    AuditFilter(policy="baseline"),
    AuditFilter(policy="ns2/db-access"),
    AuditFilter(since_ns=T0 + 250_000_000, until_ns=T0 + 600_000_000),
]


def test_append_query_count_who_checkpoint_verify(store: Store) -> None:
    events = [event(k) for k in range(1, 1001)]
    assert store.append([]) == []
    assert store.append(events[:1]) == [1]
    assert store.append(events[1:]) == list(range(2, 1001))

    assert store.count(AuditFilter()) == 1000
    for flt in FILTERS:
        want = [k for k, ev in enumerate(events, 1) if _matches(ev, flt)]
        assert store.count(flt) == len(want), flt
        assert [s.seq for s in store.query(flt)] == want, flt
    got = list(store.query(AuditFilter(verdict="denied"), limit=3, after_seq=12))
    assert [(s.seq, s.event) for s in got] == [(15, events[14]), (20, events[19]), (25, events[24])]
    assert len(list(store.query(AuditFilter(), limit=0))) == 0

    rows = store.who(AuditFilter(workload="ns0/db"))
    assert sum(r.count for r in rows) == store.count(AuditFilter(workload="ns0/db"))
    assert {(r.workload, r.port) for r in rows} == {("ns0/db", 5432), ("ns0/db", 8080)}
    assert rows == sorted(rows, key=lambda r: (-r.last_ns, r.workload, r.port))
    assert all(sum(r.verdicts.values()) == r.count for r in rows)

    cp = store.checkpoint()
    assert cp is not None and cp.seq == 1000
    assert store.latest_checkpoint() == cp  # type: ignore[attr-defined]
    report = store.verify()
    assert report.ok, report
    assert (report.records, report.checkpoints, report.first_seq, report.last_seq) == (
        1000, 1, 1, 1000,
    )  # fmt: skip


def _matches(ev: AuditEvent, flt: AuditFilter) -> bool:
    names = {p.name for p in ev.policies} | {f"{p.namespace}/{p.name}" for p in ev.policies}
    return (
        (flt.since_ns is None or ev.time_ns >= flt.since_ns)
        and (flt.until_ns is None or ev.time_ns < flt.until_ns)
        and all(
            getattr(flt, f) is None or getattr(flt, f) == getattr(ev, f)
            for f in ("verdict", "reason", "workload", "port", "peer_identity", "subject", "kind")
        )
        and (flt.policy is None or flt.policy in names)
    )


def test_both_stores_answer_alike(sqlite_store: SQLiteStore, pg_store: PostgresStore) -> None:
    events = [event(k) for k in range(1, 301)]
    for s in (sqlite_store, pg_store):
        for i in range(0, 300, 70):
            s.append(events[i : i + 70])
    for flt in FILTERS:
        assert sqlite_store.count(flt) == pg_store.count(flt), flt
        assert list(sqlite_store.query(flt)) == list(pg_store.query(flt)), flt
        assert sqlite_store.who(flt) == pg_store.who(flt), flt
    # Same events, same chain: the heads agree byte for byte.
    last_sqlite = list(sqlite_store.query(AuditFilter(), after_seq=299))
    last_pg = list(pg_store.query(AuditFilter(), after_seq=299))
    assert last_sqlite[0].hash == last_pg[0].hash


@pytest.mark.parametrize(
    ("tamper", "seq", "problem"),
    [
        ("UPDATE {events} SET verdict = 'allowed' WHERE seq = 40", 40, "altered"),
        (
            "UPDATE {events} SET body = (SELECT body FROM {events} WHERE seq = 41) WHERE seq = 40",
            40,
            "altered",
        ),
        ("DELETE FROM {events} WHERE seq = 40", 40, "missing"),
        ("DELETE FROM {events} WHERE seq > 90", 100, "truncated"),
        ("UPDATE {checkpoints} SET seq = 99", 99, "bad-checkpoint"),
    ],
    ids=["column", "body", "delete", "tail", "checkpoint"],
)
def test_verify_names_the_tampered_record(
    store: Store, raw_sql: RawSQL, tamper: str, seq: int, problem: str
) -> None:
    store.append([event(k) for k in range(1, 101)])
    store.checkpoint()
    assert store.verify().ok
    raw_sql(store, tamper)
    report = store.verify()
    assert not report.ok
    assert (report.problem, report.seq) == (problem, seq), report


def test_two_stores_append_concurrently_into_one_chain(pg_dsn: str) -> None:
    batches, size = 20, 50
    stores = [PostgresStore(pg_dsn), PostgresStore(pg_dsn)]
    got: list[list[tuple[list[int], list[AuditEvent]]]] = [[], []]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(i: int) -> None:
        try:
            start.wait(timeout=10)
            for b in range(batches):
                evs = [event(b * size + j, node=f"writer-{i}") for j in range(size)]
                got[i].append((stores[i].append(evs), evs))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a writer hung"
        assert not errors, errors
        written: dict[int, AuditEvent] = {}
        for seqs, evs in (pair for g in got for pair in g):
            assert seqs == list(range(seqs[0], seqs[0] + size)), "a batch is not contiguous"
            written.update(zip(seqs, evs, strict=True))
        assert sorted(written) == list(range(1, 2 * batches * size + 1))
        stored = {s.seq: s.event for s in stores[0].query(AuditFilter())}
        assert stored == written
        report = stores[1].verify()
        assert report.ok, report
        assert (report.records, report.last_seq) == (2 * batches * size, 2 * batches * size)
    finally:
        for s in stores:
            s.close()


@pytest.mark.parametrize(
    "dsn",
    [
        "host=127.0.0.1 port=1 user=postgres dbname=x password=s3cret-pw",  # refused
        "host=127.0.0.1 port=1 user=postgres dbname=x s3cret-pw",  # libpq quotes the DSN
        "postgresql://postgres:s3cret-pw@[::1/x",  # ... and this one whole
        "postgresql://postgres:s3cret-pw@127.0.0.1:99999/x",
    ],
    ids=["refused", "malformed", "malformed-uri", "bad-port"],
)
def test_errors_never_show_the_password(dsn: str) -> None:
    with pytest.raises(AuditError) as info:
        PostgresStore(dsn)
    assert info.value.code == "audit-store-unavailable"
    shown = "".join(traceback.format_exception(info.value))  # what a log would show
    assert "s3cret-pw" not in shown, shown
    assert "s3cret-pw" not in str(info.value.__cause__ or info.value.__context__ or "")


def test_write_errors_are_audit_errors(pg_store: PostgresStore, raw_sql: RawSQL) -> None:
    pg_store.append([event(1)])
    raw_sql(pg_store, "ALTER TABLE {events} ADD CONSTRAINT no_more CHECK (seq < 2)")
    with pytest.raises(AuditError) as info:
        pg_store.append([event(2)])
    assert info.value.code == "audit-write-failed"
    raw_sql(pg_store, "ALTER TABLE {events} DROP CONSTRAINT no_more")
    assert pg_store.append([event(2)]) == [2]  # the failed batch left no trace
    assert pg_store.verify().ok
