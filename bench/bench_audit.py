"""bench_audit: what the audit record costs to write and to query, beside the database's floor.

Measures, on this machine, with realistic events (about 50 workloads, 6 ports, 3,000 peer
identities with a skewed distribution, 1,200 subjects of which 30% of events carry none, 80%
allowed / 12% denied / 5% auth-required / 3% audit, 1-2 policies each, 15% close events):

* append: sustained ``SQLiteStore.append`` in batches of 500 (the group-commit size) into a
  fresh store — canonical JSON body, SHA-256 hash chain, one ``BEGIN IMMEDIATE`` … ``COMMIT``
  per batch in WAL mode with ``synchronous=FULL`` — in events/s;
* the floor: plain ``sqlite3`` ``executemany`` INSERT of the very same rows (read back from the
  cport store: same columns, same body and hash bytes, nothing computed) into a table with the
  same DDL and indexes (copied from the cport store's ``sqlite_master``), same pragmas (the
  writer's page cache and checkpoint interval included), 500 rows per ``BEGIN IMMEDIATE``
  transaction, in rows/s. ``vs_raw_insert`` = cport / floor (target ≥ 0.5). Measured in the
  same rounds: a per-event breakdown (``AuditEvent.body``, which builds the policies column in
  the same pass, and the SHA-256 link, each timed alone; the INSERT floor; the rest: row
  tuple, head read — within noise, it can come out negative); then ``verify()`` throughput
  and its peak Python memory per record (tracemalloc over 5,000 records);
* PostgreSQL, when ``tests/audit/pg.py`` (``PgServer``: a throwaway local cluster, fsync on) and
  ``cport.audit._postgres.PostgresStore`` are both present: ``PostgresStore.append`` in batches
  of 500 against binary ``COPY`` of the same rows (read back from the cport table; psycopg's
  C dumper for bytea, as the store uses) into a table with the same columns and indexes, one
  transaction per 500 rows;
* queries: a store populated with N events (10,000,000 in the full run, or as many as
  ``SQLiteStore.append`` in batches of 10,000 writes within ``--populate-budget`` seconds;
  200,000 with ``--quick``), then the median of several warm runs of
  ``who(AuditFilter(workload=…, since_ns=…))`` (the newest 10% of the record),
  ``list(query(AuditFilter(peer_identity=…, verdict="denied"), limit=100))`` and
  ``count(…)`` of both filters, each beside hand-written SQL with the same WHERE on the same
  database (a GROUP BY with per-verdict sums for who; ``SELECT seq, body, hash … ORDER BY seq
  LIMIT 100`` for query; ``count(*)``) and, for the peer filter, the same SQL with
  ``INDEXED BY events_peer_verdict`` (an existing index the planner passes over without statistics);
  each ratio is cport / the faster SQL. ``who_vs_sql`` and ``query_vs_sql`` = cport / SQL
  (target ≤ 2; ``query`` yields `StoredEvent`s whose events decode on first access, so it
  is also timed reading every ``.event``, beside the SQL plus ``json.loads`` of each body,
  with no target). Then a sampled ``ANALYZE`` and cport's times again, with the query plans
  before and after. The database is in the page cache (warm), as it is for a running agent.

``--profile`` adds a cProfile of the append path. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import importlib
import io
import json
import pstats
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cport.audit import AuditEvent, AuditFilter, PolicyRef, SQLiteStore, link
from cport.audit._sqlite import _CACHE_KIB, _WAL_CHECKPOINT_PAGES

ROOT = Path(__file__).resolve().parents[1]
BATCH = 500  # the group-commit size (AuditWriter.max_batch)
POPULATE_BATCH = 10_000
VERDICTS = ("allowed", "denied", "auth-required", "audit")


# -- realistic events ------------------------------------------------------------------------
class EventGen:
    """A deterministic stream of realistic audit events."""

    def __init__(self, seed: int = 7, start_ns: int = 1_767_225_600_000_000_000) -> None:
        self.rng = random.Random(seed)
        rng = self.rng
        namespaces = ["payments", "orders", "identity", "search", "billing"]
        namespaces += ["ml", "platform", "web", "data", "ops"]
        kinds = ["db", "api", "cache", "queue", "admin"]
        ports = [5432, 443, 8443, 6379, 9092, 22]
        # 50 workloads, each serving one or two of the 6 ports.
        self.workloads: list[tuple[str, str, tuple[int, ...]]] = []
        for i in range(50):
            main = ports[i % len(ports)]
            extra = (ports[(i * 7 + 3) % len(ports)],) if i % 3 == 0 else ()
            self.workloads.append(
                (
                    f"{namespaces[i % 10]}/{kinds[i % 5]}-{i}",
                    f"10.96.{i}.{10 + i % 200}",
                    (main, *extra),
                )
            )
        self.peers = [
            (
                10_000 + 17 * i,
                (
                    f"k8s:app=svc-{i % 700}",
                    f"k8s:io.kubernetes.pod.namespace={namespaces[i % 10]}",
                    f"k8s:team=t{i % 40}",
                ),
                f"10.{i // 250}.{i % 250}.{1 + i % 200}",
            )
            for i in range(3000)
        ]
        subjects = [f"user{i}@corp.example" for i in range(1000)]
        subjects += [f"system:serviceaccount:{namespaces[i % 10]}:sa-{i}" for i in range(200)]
        issuers = [
            ("https://idp.corp.example", "jwt"),
            ("https://oidc.eks.eu-west-1.amazonaws.com/id/ABC", "aws"),
            ("spiffe://corp.example", "spiffe"),
        ]
        self.subjects = [
            (
                s,
                *issuers[0 if i < 1000 else 1 + i % 2],
                [hashlib.sha256(f"{s}:{k}".encode()).hexdigest() for k in range(4)],
            )
            for i, s in enumerate(subjects)
        ]
        self.policies = [
            PolicyRef(
                ("PortPolicy", "CiliumNetworkPolicy")[i % 2],
                namespaces[i % 10],
                f"allow-{kinds[i % 5]}-{i}",
                1 + rng.randrange(40),
            )
            for i in range(200)
        ]
        self.reasons = {
            "allowed": ("policy-allowed", "authenticated"),
            "denied": ("no-matching-rule", "explicit-deny", "token-expired"),
            "auth-required": ("credential-required",),
            "audit": ("audit-mode",),
        }
        self.terminations = ("client-closed", "server-closed", "revoked", "policy-changed")
        self.time_ns = start_ns
        self.n = 0

    def make(self, n: int) -> list[AuditEvent]:
        rng = self.rng
        rand = rng.random
        out: list[AuditEvent] = []
        for _ in range(n):
            self.n += 1
            self.time_ns += 50_000 + int(rand() * 100_000)  # ~10,000 events/s
            wl, dst_ip, ports = self.workloads[int(50 * rand() ** 1.5)]
            pidx = int(3000 * rand() ** 2)
            peer, labels, src_ip = self.peers[pidx]
            r = rand()
            verdict = (
                "allowed"
                if r < 0.80
                else "denied"
                if r < 0.92
                else "auth-required"
                if r < 0.97
                else "audit"
            )
            reasons = self.reasons[verdict]
            if rand() < 0.7:
                subject, issuer, cred, tokens = self.subjects[(pidx * 31 + int(4 * rand())) % 1200]
                token_id = tokens[int(4 * rand())]
            else:
                subject = issuer = cred = token_id = ""
            pol = self.policies[(pidx + int(7 * rand())) % 200]
            pols = (pol,) if rand() < 0.7 else (pol, self.policies[int(200 * rand())])
            port = ports[0] if len(ports) == 1 or rand() < 0.7 else ports[1]
            close = rand() < 0.15
            out.append(
                AuditEvent(
                    time_ns=self.time_ns,
                    kind="close" if close else "decision",
                    node=f"node-{pidx % 20}",
                    enforcer="proxy" if rand() < 0.6 else "ebpf",
                    verdict=verdict,
                    reason=reasons[int(len(reasons) * rand())],
                    src_ip=src_ip,
                    src_port=32768 + int(28000 * rand()),
                    dst_ip=dst_ip,
                    dst_port=port,
                    peer_identity=peer,
                    peer_labels=labels,
                    subject=subject,
                    issuer=issuer,
                    credential_kind=cred,
                    token_id=token_id,
                    workload=wl,
                    port=port,
                    policies=pols,
                    table_revision=1 + self.n // 50_000,
                    bytes_in=int(1e6 * rand()) if close else 0,
                    bytes_out=int(1e5 * rand()) if close else 0,
                    duration_ns=int(3e11 * rand()) if close else 0,
                    termination=self.terminations[int(4 * rand())] if close else "",
                )
            )
        return out


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- append: cport against the raw INSERT floor -----------------------------------------------
def cport_append(path: Path, events: Sequence[AuditEvent]) -> float:
    """Events/s of `SQLiteStore.append` in batches of 500 into a fresh store at `path`."""
    store = SQLiteStore(path)
    try:
        gc.collect()
        t0 = time.perf_counter()
        for batch in chunks(events, BATCH):
            store.append(batch)
        return len(events) / (time.perf_counter() - t0)
    finally:
        store.close()


def read_rows(path: Path) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The cport store's DDL (events table and its indexes) and its event rows."""
    db = sqlite3.connect(path)
    try:
        ddl = [
            str(sql)
            for (sql,) in db.execute(
                "SELECT sql FROM sqlite_master WHERE tbl_name = 'events' AND sql IS NOT NULL "
                "ORDER BY type DESC"  # the table, then its indexes
            )
        ]
        rows = db.execute("SELECT * FROM events ORDER BY seq").fetchall()
    finally:
        db.close()
    return ddl, rows


def raw_insert(path: Path, ddl: list[str], rows: Sequence[tuple[Any, ...]]) -> float:
    """Rows/s of plain executemany INSERT, 500 per transaction, same DDL and pragmas."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")  # as SQLiteStore's writer
        db.execute(f"PRAGMA wal_autocheckpoint={_WAL_CHECKPOINT_PAGES}")
        for stmt in ddl:
            db.execute(stmt)
        sql = f"INSERT INTO events VALUES ({', '.join('?' * len(rows[0]))})"
        gc.collect()
        t0 = time.perf_counter()
        for batch in chunks(rows, BATCH):
            db.execute("BEGIN IMMEDIATE")
            db.executemany(sql, batch)
            db.execute("COMMIT")
        return len(rows) / (time.perf_counter() - t0)
    finally:
        db.close()


def time_us(fn: Callable[[], Any], n: int) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) / n * 1e6


def parts_us(events: Sequence[AuditEvent]) -> dict[str, float]:
    """Per-event microseconds of the pieces of an append, each measured alone.""" ""
    bodies = [ev.body() for ev in events]

    def chain() -> None:
        prev = bytes(32)
        for b in bodies:
            prev = link(prev, b)

    return {
        "body": time_us(lambda: [ev.body() for ev in events], len(events)),
        "link": time_us(chain, len(events)),
    }


def profile_append(tmp: Path, events: Sequence[AuditEvent], top: int = 14) -> str:
    store = SQLiteStore(tmp / "profile.db")
    prof = cProfile.Profile()
    try:
        prof.enable()
        for batch in chunks(events, BATCH):
            store.append(batch)
        prof.disable()
    finally:
        store.close()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def verify_cost(tmp: Path, events: Sequence[AuditEvent]) -> dict[str, float]:
    """`verify()` throughput, and its peak Python memory per record (tracemalloc, small N)."""
    store = SQLiteStore(tmp / "verify.db")
    try:
        for batch in chunks(events, BATCH):
            store.append(batch)
        t0 = time.perf_counter()
        assert store.verify().ok
        rate = len(events) / (time.perf_counter() - t0)
        small = min(len(events), 5_000)
        store.close()
        db = sqlite3.connect(tmp / "verify.db")
        db.execute("DELETE FROM events WHERE seq > ?", (small,))
        db.commit()
        db.close()
        store = SQLiteStore(tmp / "verify.db")
        tracemalloc.start()
        assert store.verify().ok
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        store.close()
    return {"verify_events_per_s": rate, "verify_peak_bytes_per_record": peak / small}


# -- PostgreSQL --------------------------------------------------------------------------------
def postgres_part(events: Sequence[AuditEvent], reps: int) -> dict[str, Any]:
    """PostgresStore.append against binary COPY of the same rows; {} with a note if absent."""
    try:
        sys.path.insert(0, str(ROOT))
        pg_mod = importlib.import_module("tests.audit.pg")
    except ImportError as exc:
        return {"skipped": f"tests/audit/pg.py not importable ({exc})"}
    try:
        store_mod = importlib.import_module("cport.audit._postgres")
        store_cls = store_mod.PostgresStore
    except (ImportError, AttributeError) as exc:
        return {"skipped": f"cport.audit._postgres.PostgresStore not available ({exc})"}
    import psycopg
    from psycopg.types.string import BytesBinaryDumper

    try:
        server = pg_mod.PgServer().start()
    except pg_mod.PgUnavailable as exc:
        return {"skipped": f"no PostgreSQL server: {exc}"}
    try:
        cport_rates, raw_rates = [], []
        for rep in range(reps):
            dsn = server.create_database(f"cport_{rep}")
            store = store_cls(dsn)
            table = f"{getattr(store, 'table_prefix', 'cport_')}events"
            try:
                gc.collect()
                t0 = time.perf_counter()
                for batch in chunks(events, BATCH):
                    store.append(batch)
                cport_rates.append(len(events) / (time.perf_counter() - t0))
            finally:
                store.close()
            with psycopg.connect(dsn) as conn:
                cols = conn.execute(
                    "SELECT attname, format_type(atttypid, atttypmod), attnotnull "
                    "FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                    "AND NOT attisdropped ORDER BY attnum",
                    (table,),
                ).fetchall()
                indexes = [
                    str(r[0])
                    for r in conn.execute(
                        "SELECT indexdef FROM pg_indexes WHERE tablename = %s", (table,)
                    )
                ]
                rows = conn.execute(f"SELECT * FROM {table} ORDER BY seq").fetchall()
            raw_dsn = server.create_database(f"raw_{rep}")
            with psycopg.connect(raw_dsn, autocommit=True) as conn:
                conn.execute("SET synchronous_commit TO on")
                # psycopg's C dumper for bytea, as the store uses (the default by type OID is
                # the DB-API `Binary` one, in Python).
                conn.adapters.register_dumper(bytes, BytesBinaryDumper)
                coldefs = ", ".join(f"{n} {t}{' NOT NULL' if nn else ''}" for n, t, nn in cols)
                conn.execute(f"CREATE TABLE {table} ({coldefs})")
                for idx in indexes:  # the primary key's unique index included
                    conn.execute(idx)
                types = [str(t) for _, t, _ in cols]
                copy_sql = f"COPY {table} FROM STDIN (FORMAT BINARY)"
                gc.collect()
                t0 = time.perf_counter()
                for batch in chunks(rows, BATCH):
                    with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as cp:
                        cp.set_types(types)
                        for row in batch:
                            cp.write_row(row)
                raw_rates.append(len(rows) / (time.perf_counter() - t0))
        cport, raw = statistics.median(cport_rates), statistics.median(raw_rates)
        return {"events_per_s": cport, "raw_copy_rows_per_s": raw, "vs_raw_copy": cport / raw}
    finally:
        server.stop()


# -- queries -----------------------------------------------------------------------------------
def populate(path: Path, gen: EventGen, target: int, budget_s: float) -> dict[str, Any]:
    """Append up to `target` events in batches of 10,000, stopping at `budget_s` seconds."""
    store = SQLiteStore(path)
    n = 0
    append_s = 0.0
    t_start = time.perf_counter()
    next_report = 1_000_000
    try:
        while n < target:
            events = gen.make(min(POPULATE_BATCH, target - n))
            t0 = time.perf_counter()
            store.append(events)
            append_s += time.perf_counter() - t0
            n += len(events)
            wall = time.perf_counter() - t_start
            if n >= next_report:
                next_report += 1_000_000
                print(f"  populated {n:>11,} events in {wall:6.0f} s", flush=True)
            if wall > budget_s and n < target:
                break
    finally:
        store.close()  # checkpoints the WAL into the database file
    wall = time.perf_counter() - t_start
    note = ""
    if n < target:
        note = (
            f"stopped at {n:,} of {target:,} events: the {budget_s:.0f} s populate budget ran "
            f"out (append {n / append_s:,.0f} events/s here; {target:,} would take "
            f"~{target / (n / wall) / 60:.0f} min)"
        )
    return {
        "n": n,
        "populate_events_per_s": n / append_s,
        "populate_wall_s": wall,
        "generate_s": wall - append_s,
        "note": note,
        "db_bytes": path.stat().st_size,
    }


def median_ms(fn: Callable[[], Any], reps: int) -> float:
    fn()  # warm
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def query_part(path: Path, gen: EventGen, reps: int) -> dict[str, Any]:
    """cport's who/query/count beside hand-written SQL on the same database: the same WHERE
    (the planner's choice of index) and, where the existing indexes allow a better plan, an
    ``INDEXED BY`` variant; the ratio is against the faster SQL. Then ``ANALYZE`` (sampled,
    ``analysis_limit=1000``) and cport again, to show what planner statistics change."""
    store = SQLiteStore(path)
    db = sqlite3.connect(path)
    try:
        t_min, t_max = db.execute("SELECT min(time_ns), max(time_ns) FROM events").fetchone()
        since = int(t_min + 0.9 * (t_max - t_min))
        workload = gen.workloads[3][0]  # a busy workload (the distribution favours low indexes)
        peer = gen.peers[40][0]  # a fairly busy peer identity
        who_f = AuditFilter(workload=workload, since_ns=since)
        q_f = AuditFilter(peer_identity=peer, verdict="denied")
        sums = ", ".join(f"sum(verdict = '{v}')" for v in VERDICTS)
        who_sql = (
            f"SELECT peer_identity, subject, workload, port, protocol, count(*), min(time_ns), "
            f"max(time_ns), {sums} FROM events WHERE time_ns >= ? AND workload = ? "
            "GROUP BY peer_identity, subject, workload, port, protocol "
            "ORDER BY max(time_ns) DESC, workload, port"
        )
        q_where = "WHERE verdict = ? AND peer_identity = ?"
        q_sql = "SELECT seq, body, hash FROM events {}" + q_where + " ORDER BY seq LIMIT 100"
        qc_sql = "SELECT count(*) FROM events {}" + q_where
        wc_sql = "SELECT count(*) FROM events WHERE time_ns >= ? AND workload = ?"
        who_args, q_args = (since, workload), ("denied", peer)
        by_peer = "INDEXED BY events_peer_verdict "

        # The answers agree (and are not trivially empty).
        who_rows = store.who(who_f)
        sql_rows = db.execute(who_sql, who_args).fetchall()
        assert len(who_rows) == len(sql_rows) > 0, (len(who_rows), len(sql_rows))
        assert sum(r.count for r in who_rows) == sum(r[5] for r in sql_rows)
        q_rows = list(store.query(q_f, limit=100))
        assert [s.seq for s in q_rows] == [r[0] for r in db.execute(q_sql.format(""), q_args)]

        def plan(sql: str, args: Sequence[Any]) -> str:
            return "; ".join(r[3] for r in db.execute(f"EXPLAIN QUERY PLAN {sql}", args))

        cport_q_sql = q_sql.format("").replace(" ORDER", " AND seq > ? ORDER")
        plans = {
            "who": plan(who_sql, who_args),
            "query (cport's SQL)": plan(cport_q_sql, (*q_args, 0)),
            "query INDEXED BY events_peer_verdict": plan(q_sql.format(by_peer), q_args),
        }
        res: dict[str, Any] = {
            "who_rows": len(who_rows),
            "who_events": sum(r.count for r in who_rows),
            "query_rows": len(q_rows),
            "peer_denied": store.count(q_f),
            "plans": plans,
        }
        sql_cases: dict[str, dict[str, Callable[[], Any]]] = {
            "who": {"same WHERE": lambda: db.execute(who_sql, who_args).fetchall()},
            "query": {
                "same WHERE": lambda: db.execute(q_sql.format(""), q_args).fetchall(),
                "INDEXED BY events_peer_verdict": lambda: db.execute(
                    q_sql.format(by_peer), q_args
                ).fetchall(),
            },
            "query_events": {
                "same WHERE + json.loads": lambda: [
                    json.loads(r[1]) for r in db.execute(q_sql.format(""), q_args)
                ],
            },
            "count_query": {
                "same WHERE": lambda: db.execute(qc_sql.format(""), q_args).fetchone(),
                "INDEXED BY events_peer_verdict": lambda: db.execute(
                    qc_sql.format(by_peer), q_args
                ).fetchone(),
            },
            "count_who": {"same WHERE": lambda: db.execute(wc_sql, who_args).fetchone()},
        }

        def cport_cases(st: SQLiteStore) -> dict[str, Callable[[], Any]]:
            return {
                "who": lambda: st.who(who_f),
                "query": lambda: list(st.query(q_f, limit=100)),
                "query_events": lambda: [s.event for s in st.query(q_f, limit=100)],
                "count_query": lambda: st.count(q_f),
                "count_who": lambda: st.count(who_f),
            }

        for name, cport_fn in cport_cases(store).items():
            c = median_ms(cport_fn, reps)
            sql_ms = {label: median_ms(fn, reps) for label, fn in sql_cases[name].items()}
            res[name] = {"cport_ms": c, "sql_ms": sql_ms, "ratio": c / min(sql_ms.values())}
        # Planner statistics: what a periodic ANALYZE (or `PRAGMA optimize`) would change.
        t0 = time.perf_counter()
        db.execute("PRAGMA analysis_limit=1000")
        db.execute("ANALYZE")
        db.commit()
        res["analyze_s"] = time.perf_counter() - t0
        store.close()
        store = SQLiteStore(path)
        res["plans"]["query (cport's SQL) after ANALYZE"] = plan(cport_q_sql, (*q_args, 0))
        res["plans"]["who after ANALYZE"] = plan(who_sql, who_args)
        for name, cport_fn in cport_cases(store).items():
            res[name]["cport_analyzed_ms"] = median_ms(cport_fn, reps)
        return res
    finally:
        db.close()
        store.close()


# -- main ------------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def append_part(tmp: Path, events: Sequence[AuditEvent], reps: int) -> dict[str, Any]:
    """cport and the raw floor alternately, with the breakdown measured in the same rounds."""
    runs: dict[str, list[float]] = {"cport": [], "raw": [], "body": [], "link": []}
    ddl: list[str] = []
    rows: list[tuple[Any, ...]] = []
    sample = events[:20_000]
    for rep in range(reps):
        runs["cport"].append(cport_append(tmp / f"cport-{rep}.db", events))
        if rep == 0:
            ddl, rows = read_rows(tmp / "cport-0.db")
        runs["raw"].append(raw_insert(tmp / f"raw-{rep}.db", ddl, rows))
        parts = parts_us(sample)
        runs["body"].append(parts["body"])
        runs["link"].append(parts["link"])
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "runs": runs,
        "cport": med["cport"],
        "raw": med["raw"],
        "body_us": med["body"],
        "link_us": med["link"],
        "body_bytes": statistics.mean(len(r[-3]) for r in rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (< 1 min)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of append")
    ap.add_argument("--populate", type=int, help="events in the query store")
    ap.add_argument("--populate-budget", type=float, default=600.0, help="seconds (default 600)")
    ap.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL part")
    ap.add_argument("--dir", type=Path, help="where the databases go (default: a temp dir)")
    args = ap.parse_args()
    quick = args.quick
    n_append, reps_append, reps_query = (20_000, 3, 7) if quick else (100_000, 5, 9)
    n_pg, reps_pg = (10_000, 2) if quick else (50_000, 3)
    n_populate = args.populate or (200_000 if quick else 10_000_000)
    tmp = Path(tempfile.mkdtemp(prefix="bench-audit-", dir=args.dir))
    result: dict[str, Any] = {"bench": "audit", "quick": quick}
    try:
        print(
            f"bench_audit{' (quick)' if quick else ''}: SQLite {sqlite3.sqlite_version}, "
            f"WAL + synchronous=FULL, batches of {BATCH}; databases in {tmp}"
        )
        events = EventGen(seed=1).make(n_append)

        # Append: cport against the raw INSERT floor.
        ap_ = append_part(tmp, events, reps_append)
        cport_rate, raw_rate = ap_["cport"], ap_["raw"]
        ratio = cport_rate / raw_rate
        cport_us, raw_us = 1e6 / cport_rate, 1e6 / raw_rate
        other = cport_us - raw_us - ap_["body_us"] - ap_["link_us"]
        print(f"\nappend: {n_append:,} events per run, median of {reps_append} runs")
        print(f"{'':<34} {'events/s':>10} {'us/event':>9}  target")
        print(f"{'raw sqlite3 executemany (floor)':<34} {raw_rate:>10,.0f} {raw_us:>9.1f}")
        print(
            f"{'cport SQLiteStore.append':<34} {cport_rate:>10,.0f} {cport_us:>9.1f}  "
            f">= 0.5x raw: {ratio:.2f}x {verdict(ratio >= 0.5)}"
        )
        print(
            f"  per event: AuditEvent.body {ap_['body_us']:.1f} us, SHA-256 link "
            f"{ap_['link_us']:.1f}, INSERT + COMMIT (the floor) {raw_us:.1f}, the rest (row "
            f"tuple, head read) {other:.1f}; body {ap_['body_bytes']:.0f} bytes"
        )
        vc = verify_cost(tmp, events)
        print(
            f"  verify(): {vc['verify_events_per_s']:,.0f} events/s "
            f"(10M: ~{1e7 / vc['verify_events_per_s'] / 60:.0f} min); peak Python memory "
            f"{vc['verify_peak_bytes_per_record']:.0f} B/record "
            f"(10M: ~{vc['verify_peak_bytes_per_record'] * 1e7 / 2**30:.1f} GiB)"
        )
        result.update(
            {
                "events_per_s": round(cport_rate),
                "vs_raw_insert": round(ratio, 3),
                "raw_rows_per_s": round(raw_rate),
                "append_runs": [round(r) for r in ap_["runs"]["cport"]],
                "raw_runs": [round(r) for r in ap_["runs"]["raw"]],
                "breakdown_us": {
                    "event": round(cport_us, 2),
                    "body": round(ap_["body_us"], 2),
                    "link": round(ap_["link_us"], 2),
                    "insert_commit_floor": round(raw_us, 2),
                    "rest": round(other, 2),
                },
                "body_bytes": round(ap_["body_bytes"]),
                "verify_events_per_s": round(vc["verify_events_per_s"]),
                "verify_peak_bytes_per_record": round(vc["verify_peak_bytes_per_record"]),
            }
        )
        if args.profile:
            print("\ncProfile of SQLiteStore.append (tottime):")
            print(profile_append(tmp, events[:20_000]))
        for f in tmp.glob("*.db*"):
            f.unlink()

        # PostgreSQL.
        pg: dict[str, Any] = (
            {"skipped": "--no-postgres"}
            if args.no_postgres
            else postgres_part(events[:n_pg], reps_pg)
        )
        if "skipped" in pg:
            print(f"\npostgres: skipped: {pg['skipped']}")
        else:
            print(f"\npostgres: {n_pg:,} events per run, median of {reps_pg} runs")
            print(
                f"{'raw psycopg binary COPY (floor)':<34} {pg['raw_copy_rows_per_s']:>10,.0f} "
                f"{1e6 / pg['raw_copy_rows_per_s']:>9.1f}"
            )
            print(
                f"{'cport PostgresStore.append':<34} {pg['events_per_s']:>10,.0f} "
                f"{1e6 / pg['events_per_s']:>9.1f}  >= 0.5x raw: {pg['vs_raw_copy']:.2f}x "
                f"{verdict(pg['vs_raw_copy'] >= 0.5)}"
            )
        result["postgres"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in pg.items()}

        # Queries.
        print(
            f"\nquery store: populating {n_populate:,} events (append, batches of "
            f"{POPULATE_BATCH:,}; budget {args.populate_budget:.0f} s)",
            flush=True,
        )
        gen = EventGen(seed=2)
        pop = populate(tmp / "query.db", gen, n_populate, args.populate_budget)
        if pop["note"]:
            print(f"  NOTE: {pop['note']}")
        print(
            f"  {pop['n']:,} events: append {pop['populate_events_per_s']:,.0f} events/s "
            f"(wall {pop['populate_wall_s']:.0f} s, of which generating events "
            f"{pop['generate_s']:.0f} s); database {pop['db_bytes'] / 2**30:.2f} GiB"
        )
        q = query_part(tmp / "query.db", gen, reps_query)
        print(
            f"\nqueries on {pop['n']:,} events, median of {reps_query} warm runs "
            f"(who: {q['who_rows']:,} rows over {q['who_events']:,} events; query: "
            f"{q['query_rows']} rows of the peer's {q['peer_denied']:,} denied events)"
        )
        print(f"{'':<34} {'cport ms':>9} {'SQL ms':>9} {'ratio':>6} {'analyzed':>9}  target")
        labels = {
            "who": "who(workload, since newest 10%)",
            "query": "query(peer, denied, limit=100)",
            "query_events": "  ... and read each .event",
            "count_query": "count(peer, denied)",
            "count_who": "count(workload, since)",
        }
        for key, label in labels.items():
            t = q[key]
            target = f"<= 2x: {verdict(t['ratio'] <= 2)}" if key in ("who", "query") else ""
            print(
                f"{label:<34} {t['cport_ms']:>9.2f} {min(t['sql_ms'].values()):>9.2f} "
                f"{t['ratio']:>6.2f} {t['cport_analyzed_ms']:>9.2f}  {target}"
            )
            if len(t["sql_ms"]) > 1:
                sql = ", ".join(f"{k} {v:.2f}" for k, v in t["sql_ms"].items())
                print(f"{'':<36}(SQL ms: {sql})")
        print(
            "  SQL: hand-written, same WHERE (or INDEXED BY, whichever is faster); ratio: "
            "cport / SQL; analyzed: cport after ANALYZE "
            f"(analysis_limit=1000, took {q['analyze_s']:.1f} s)"
        )
        for name, plan in q["plans"].items():
            print(f"  plan {name}: {plan}")
        result.update(
            {
                "who_vs_sql": round(q["who"]["ratio"], 3),
                "query_vs_sql": round(q["query"]["ratio"], 3),
                "count_vs_sql": round(q["count_query"]["ratio"], 3),
                "query_n": pop["n"],
                "populate_events_per_s": round(pop["populate_events_per_s"]),
                "populate_note": pop["note"],
                "query_ms": {
                    k: {
                        "cport": round(q[k]["cport_ms"], 3),
                        "sql": {kk: round(vv, 3) for kk, vv in q[k]["sql_ms"].items()},
                        "cport_analyzed": round(q[k]["cport_analyzed_ms"], 3),
                    }
                    for k in labels
                },
            }
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    head = ("bench", "events_per_s", "vs_raw_insert", "who_vs_sql")
    print(
        json.dumps(
            {k: result[k] for k in head} | {k: v for k, v in result.items() if k not in head}
        )
    )


if __name__ == "__main__":
    main()
