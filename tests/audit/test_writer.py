"""The group-commit writer: many producers, one writer thread, one transaction per batch; a
future resolves only once its batch committed. The store is a real `SQLiteStore` (the
`sqlite_store` fixture of `conftest.py`), wrapped where a test needs it slow or failing."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, cast

import pytest

from cport.audit import (
    AuditEvent,
    AuditFilter,
    AuditMetrics,
    AuditWriter,
    SQLiteStore,
    Store,
)
from cport.errors import AuditError

SEC = 1_000_000_000
T0 = 1_790_000_000 * SEC


def ev(i: int, **over: Any) -> AuditEvent:
    base: dict[str, Any] = {
        "time_ns": T0 + i,
        "kind": "decision",
        "node": "node-a",
        "enforcer": "proxy",
        "verdict": "allowed",
        "reason": "allowed",
        "peer_identity": 257,
        "subject": "payments/payments-api",
        "workload": "payments/ledger-db",
        "port": 5432,
        "extra": {"i": i},
    }
    base.update(over)
    return AuditEvent(**base)


def sample(metrics: AuditMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


@pytest.fixture
def metrics() -> AuditMetrics:
    return AuditMetrics()


class FailingStore:
    """A store whose appends fail (after `ok` successful ones, delegated to `inner`)."""

    def __init__(self, inner: Store | None = None, ok: int = 0) -> None:
        self.inner = inner
        self.ok = ok
        self.calls: list[int] = []

    def append(self, events: Sequence[AuditEvent]) -> list[int]:
        self.calls.append(len(events))
        if len(self.calls) > self.ok or self.inner is None:
            raise AuditError("disk on fire", code="audit-write-failed")
        return self.inner.append(events)


class SlowStore:
    """Delegates to `inner`; each append first waits for `gate` (to pile events up)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def append(self, events: Sequence[AuditEvent]) -> list[int]:
        self.entered.set()
        assert self.gate.wait(10)
        self.batches.append(len(events))
        return self.inner.append(events)


# -- concurrency and group commit ------------------------------------------------------------
def test_many_producers_get_unique_contiguous_seqs(
    sqlite_store: SQLiteStore, metrics: AuditMetrics
) -> None:
    writer = AuditWriter(sqlite_store, metrics=metrics)
    threads, per_thread = 4, 500
    futures: list[list[Future[int]]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def produce(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            futures[t].append(writer.submit(ev(t * per_thread + i)))

    workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    seqs = [f.result(timeout=30) for fs in futures for f in fs]
    writer.close()

    total = threads * per_thread
    assert sorted(seqs) == list(range(1, total + 1))
    # within one producer, later submissions get later seqs (one queue, FIFO)
    for fs in futures:
        mine = [f.result() for f in fs]
        assert mine == sorted(mine)
    # each seq holds the event whose future got it
    stored = {s.seq: s.event for s in sqlite_store.query(AuditFilter())}
    assert len(stored) == total
    for t, fs in enumerate(futures):
        for i, f in enumerate(fs):
            assert stored[f.result()].extra == {"i": t * per_thread + i}
    assert sqlite_store.verify().ok
    # group commit: fewer commits than events, and every event counted once
    commits = sample(metrics, "cport_audit_batch_size_count")
    assert 1 <= commits < total
    assert sample(metrics, "cport_audit_batch_size_sum") == total
    assert sample(metrics, "cport_audit_events_written_total") == total
    assert sample(metrics, "cport_audit_write_seconds_count") == commits
    assert sample(metrics, "cport_audit_write_errors_total") == 0
    assert sample(metrics, "cport_audit_queue_depth") == 0


def test_a_burst_is_committed_in_few_batches(
    sqlite_store: SQLiteStore, metrics: AuditMetrics
) -> None:
    slow = SlowStore(sqlite_store)
    writer = AuditWriter(cast(Store, slow), max_batch=50, metrics=metrics)
    first = writer.submit(ev(0))
    assert slow.entered.wait(5)  # the writer holds a batch of one, waiting for the store
    rest = [writer.submit(ev(i)) for i in range(1, 121)]
    assert sample(metrics, "cport_audit_queue_depth") >= 100
    slow.gate.set()
    assert [f.result(timeout=10) for f in [first, *rest]] == list(range(1, 122))
    writer.close()
    assert slow.batches == [1, 50, 50, 20]
    assert sample(metrics, "cport_audit_batch_size_count") == 4
    assert sample(metrics, "cport_audit_batch_size_bucket", {"le": "50.0"}) == 4
    assert sample(metrics, "cport_audit_batch_size_bucket", {"le": "10.0"}) == 1


def test_a_lone_event_is_committed_promptly(
    sqlite_store: SQLiteStore, metrics: AuditMetrics
) -> None:
    writer = AuditWriter(sqlite_store, metrics=metrics)
    try:
        started = time.monotonic()
        fut = writer.submit(ev(0))
        assert fut.result(timeout=1.0) == 1
        assert time.monotonic() - started < 1.0
        assert sqlite_store.count(AuditFilter()) == 1  # durable before the future resolved
        assert writer.write(ev(1), timeout=1.0) == 2
    finally:
        writer.close()
    assert sample(metrics, "cport_audit_events_written_total") == 2


def test_the_future_resolves_only_after_the_commit(sqlite_store: SQLiteStore) -> None:
    slow = SlowStore(sqlite_store)
    writer = AuditWriter(cast(Store, slow))
    fut = writer.submit(ev(0))
    assert slow.entered.wait(5)
    time.sleep(0.05)
    assert not fut.done()
    slow.gate.set()
    assert fut.result(timeout=5) == 1
    writer.close()


# -- failures --------------------------------------------------------------------------------
def test_a_failing_store_fails_every_future_of_the_batch(metrics: AuditMetrics) -> None:
    store = FailingStore()
    writer = AuditWriter(cast(Store, store), max_delay=0.2, metrics=metrics)
    futures = [writer.submit(ev(i)) for i in range(10)]
    for f in futures:
        with pytest.raises(AuditError) as info:
            f.result(timeout=5)
        assert info.value.code == "audit-write-failed"
    writer.close()
    assert sum(store.calls) == 10
    assert sample(metrics, "cport_audit_write_errors_total") == len(store.calls)
    assert sample(metrics, "cport_audit_events_written_total") == 0
    assert sample(metrics, "cport_audit_batch_size_count") == 0


def test_the_writer_keeps_going_after_a_failed_batch(
    sqlite_store: SQLiteStore, metrics: AuditMetrics
) -> None:
    store = FailingStore(sqlite_store, ok=1)
    writer = AuditWriter(cast(Store, store), metrics=metrics)
    try:
        assert writer.write(ev(0), timeout=5) == 1
        with pytest.raises(AuditError):
            writer.write(ev(1), timeout=5)
        store.ok = 100  # the store recovers
        assert writer.write(ev(2), timeout=5) == 2
    finally:
        writer.close()
    assert sample(metrics, "cport_audit_write_errors_total") == 1
    assert sample(metrics, "cport_audit_events_written_total") == 2
    assert sqlite_store.verify().ok


# -- close -----------------------------------------------------------------------------------
def test_close_flushes_pending_events(sqlite_store: SQLiteStore) -> None:
    slow = SlowStore(sqlite_store)
    writer = AuditWriter(cast(Store, slow), max_batch=7, max_delay=10.0)
    futures = [writer.submit(ev(i)) for i in range(30)]
    threading.Timer(0.05, slow.gate.set).start()
    writer.close()
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == list(range(1, 31))
    assert sqlite_store.count(AuditFilter()) == 30
    assert sqlite_store.verify().ok


def test_close_does_not_wait_out_max_delay(sqlite_store: SQLiteStore) -> None:
    writer = AuditWriter(sqlite_store, max_delay=30.0)
    fut = writer.submit(ev(0))
    started = time.monotonic()
    writer.close()
    assert time.monotonic() - started < 5.0
    assert fut.result(timeout=0) == 1


def test_submit_after_close_raises(sqlite_store: SQLiteStore) -> None:
    writer = AuditWriter(sqlite_store)
    writer.close()
    writer.close()  # twice is fine
    with pytest.raises(AuditError) as info:
        writer.submit(ev(0))
    assert info.value.code == "audit-closed"
    with pytest.raises(AuditError):
        writer.write(ev(0))
    assert sqlite_store.count(AuditFilter()) == 0


def test_a_submit_racing_close_never_hangs(tmp_path: Path) -> None:
    """submit() and close() are serialised: a submit either lands before the stop (and is
    committed) or sees the writer closed (AuditError) — its future never hangs."""
    for i in range(30):  # bounded: 30 races, each a fresh writer
        store = SQLiteStore(tmp_path / f"race{i}.db")
        writer = AuditWriter(store, max_delay=0.001)
        box: list[Future[int] | BaseException] = []
        start = threading.Barrier(3)

        def produce(
            writer: AuditWriter = writer,
            box: list[Future[int] | BaseException] = box,
            start: threading.Barrier = start,
        ) -> None:
            start.wait()
            for _ in range(20):
                try:
                    box.append(writer.submit(ev(0)))
                except BaseException as exc:
                    box.append(exc)

        threads = [threading.Thread(target=produce) for _ in range(2)]
        for t in threads:
            t.start()
        start.wait()
        writer.close()
        for t in threads:
            t.join(5)
        for outcome in box:
            if isinstance(outcome, BaseException):
                assert isinstance(outcome, AuditError)
            else:
                outcome.result(timeout=1)  # committed before the stop
        store.close()


# -- metrics ---------------------------------------------------------------------------------
def test_metrics_are_registered_in_their_own_registry() -> None:
    a, b = AuditMetrics(), AuditMetrics()  # no clash: each has a registry of its own
    a.decisions.labels(verdict="denied", reason="default-deny").inc()
    a.decisions.labels(verdict="denied", reason="default-deny").inc()
    a.decisions.labels(verdict="allowed", reason="allowed").inc()
    assert sample(a, "cport_decisions_total", {"verdict": "denied", "reason": "default-deny"}) == 2
    assert sample(a, "cport_decisions_total", {"verdict": "allowed", "reason": "allowed"}) == 1
    assert (
        b.registry.get_sample_value(
            "cport_decisions_total", {"verdict": "denied", "reason": "default-deny"}
        )
        is None
    )
    names = {m.name for m in a.registry.collect()}
    assert {
        "cport_decisions",
        "cport_audit_events_written",
        "cport_audit_write_errors",
        "cport_audit_write_seconds",
        "cport_audit_batch_size",
        "cport_audit_queue_depth",
    } <= names
    with pytest.raises(ValueError):
        a.decisions.labels(verdict="denied")  # both labels are required


def test_metrics_count_each_commit(sqlite_store: SQLiteStore, metrics: AuditMetrics) -> None:
    writer = AuditWriter(sqlite_store, metrics=metrics)
    try:
        for i in range(3):
            writer.write(ev(i), timeout=5)
            assert sample(metrics, "cport_audit_events_written_total") == i + 1
            assert sample(metrics, "cport_audit_batch_size_count") == i + 1
            assert sample(metrics, "cport_audit_write_seconds_count") == i + 1
        assert sample(metrics, "cport_audit_batch_size_bucket", {"le": "1.0"}) == 3
        assert sample(metrics, "cport_audit_write_seconds_sum") > 0
    finally:
        writer.close()


def test_the_writer_works_without_metrics(sqlite_store: SQLiteStore) -> None:
    writer = AuditWriter(sqlite_store)
    try:
        assert [writer.submit(ev(i)) for i in range(3)][-1].result(timeout=5) == 3
    finally:
        writer.close()


def test_readers_run_safely_while_the_writer_commits(
    sqlite_store: SQLiteStore, metrics: AuditMetrics
) -> None:
    """The writer thread and readers share the store: counts only grow, verify stays ok."""
    writer = AuditWriter(sqlite_store, metrics=metrics)
    done = threading.Event()
    problems: list[object] = []
    counts: list[int] = []

    def read() -> None:
        try:
            while not done.is_set():
                counts.append(sqlite_store.count(AuditFilter()))
                report = sqlite_store.verify()
                if not report.ok:
                    problems.append(report)
                list(sqlite_store.query(AuditFilter(verdict="allowed"), limit=5))
        except BaseException as exc:
            problems.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        futures = [writer.submit(ev(i)) for i in range(1500)]
        assert [f.result(timeout=30) for f in futures] == list(range(1, 1501))
    finally:
        done.set()
        reader.join(30)
        writer.close()
    assert problems == []
    assert counts == sorted(counts)
    assert sqlite_store.count(AuditFilter()) == 1500


def test_submit_many_commits_together_and_resolves_every_seq(sqlite_store: SQLiteStore) -> None:
    """The agent hands the writer its events in groups: each group's future gives one
    sequence number per event, in order, interleaved correctly with single submits."""
    writer = AuditWriter(sqlite_store)
    try:
        gen = [ev(i) for i in range(7)]
        single = writer.submit(gen[0])
        many = writer.submit_many(gen[1:6])
        last = writer.submit(gen[6])
        seqs = [single.result(10), *many.result(10), last.result(10)]
    finally:
        writer.close()
    assert seqs == sorted(seqs) and len(set(seqs)) == 7
    stored = {s.seq: s.event for s in sqlite_store.query(AuditFilter())}
    assert [stored[q] for q in seqs] == gen
