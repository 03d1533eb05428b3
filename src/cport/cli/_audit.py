"""`cport audit verify|checkpoint|query|export` and `cport who`: the audit record's questions."""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import click
from rich.progress import Progress
from rich.table import Table as RichTable

from cport._time import iso_ms
from cport.audit import AuditFilter, Signer, SQLiteStore, Store, StoredEvent
from cport.cli._common import (
    EXIT_FAIL,
    console,
    emit_json,
    err_console,
    escape,
    handle_errors,
    output_option,
)
from cport.errors import AuditError

_REL = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CSV_COLUMNS = (
    "seq",
    "time",
    "kind",
    "node",
    "enforcer",
    "verdict",
    "reason",
    "workload",
    "port",
    "protocol",
    "peer_identity",
    "subject",
    "issuer",
    "credential_kind",
    "token_id",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "policies",
    "table_revision",
    "bytes_in",
    "bytes_out",
    "duration_ns",
    "termination",
)


def parse_time(text: str | None, now: float | None = None) -> int | None:
    """``1h``/``30m``/``7d`` ago, or an ISO-8601 time (UTC unless it says otherwise) → ns."""
    if text is None:
        return None
    now = time.time() if now is None else now
    m = _REL.match(text.strip())
    if m:
        return int((now - float(m.group(1)) * _UNIT[m.group(2)]) * 1e9)
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: use 30m, 1h, 7d or an ISO time like 2026-11-26T09:00:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1e9)


def open_store(store: str | None, state_dir: Path, *, signing: bool = False) -> Store:
    """The audit store: ``postgresql://…`` or a SQLite file (default STATE_DIR/audit.db).
    Only `signing` commands (checkpoint) may create the state directory's key; the others
    use it if it exists."""
    if not (store and store.startswith(("postgresql://", "postgres://"))):
        path = Path(store) if store else state_dir / "audit.db"
        if not path.exists():
            raise AuditError(
                f"no audit store at {path} (pass --store or --state-dir)",
                code="audit-store-unavailable",
            )
    signer = Signer.load_or_create(state_dir) if signing else Signer.load(state_dir)
    if store and store.startswith(("postgresql://", "postgres://")):
        import importlib

        try:
            module = importlib.import_module("cport.audit._postgres")
        except ImportError as exc:  # pragma: no cover - optional dependency missing
            raise AuditError(
                f"PostgreSQL store unavailable: {exc}", code="audit-store-unavailable"
            ) from exc
        pg_store: Store = module.PostgresStore(store, signer)
        return pg_store
    path = Path(store) if store else state_dir / "audit.db"
    if not path.exists():
        raise AuditError(
            f"no audit store at {path} (pass --store or --state-dir)",
            code="audit-store-unavailable",
        )
    return SQLiteStore(path, signer)


def store_options(f: Any) -> Any:
    f = click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path(".cport"),
        show_default=True,
        help="State directory (audit.db, audit-signing.key).",
    )(f)
    return click.option(
        "--store",
        default=None,
        help="Audit store: a SQLite file or postgresql://… (default STATE_DIR/audit.db).",
    )(f)


def filter_options(f: Any) -> Any:
    options: list[tuple[str, dict[str, Any]]] = [
        ("--since", {"help": "From this time (30m, 1h, 7d ago, or ISO-8601)."}),
        ("--until", {"help": "Before this time (same forms)."}),
        ("--workload", {"help": "NAMESPACE/NAME of the governed workload."}),
        ("--port", {"type": int, "help": "Port."}),
        ("--identity", {"type": int, "help": "Peer's numeric identity."}),
        ("--subject", {"help": "Peer's subject (user, service account, ARN, SPIFFE ID)."}),
        ("--verdict", {"type": click.Choice(["allowed", "denied", "audit", "auth-required"])}),
        ("--reason", {"help": "Reason code."}),
        ("--policy", {"help": "Policy name, or NAMESPACE/NAME."}),
    ]
    for name, kw in reversed(options):
        f = click.option(name, default=None, **kw)(f)
    return f


def build_filter(kw: dict[str, Any]) -> AuditFilter:
    return AuditFilter(
        since_ns=parse_time(kw.get("since")),
        until_ns=parse_time(kw.get("until")),
        verdict=kw.get("verdict"),
        reason=kw.get("reason"),
        workload=kw.get("workload"),
        port=kw.get("port"),
        peer_identity=kw.get("identity"),
        subject=kw.get("subject"),
        policy=kw.get("policy"),
    )


@click.group()
def audit() -> None:
    """Verify, query and export the tamper-evident audit record."""


@audit.command()
@store_options
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False),
    help="Check checkpoints against this Ed25519 public key (PEM) instead of the "
    "state directory's key.",
)
@output_option
@handle_errors
def verify(store: str | None, state_dir: Path, public_key: str | None, output: str) -> None:
    """Check the hash chain and signed checkpoints; exit 1 naming the first altered, inserted
    or missing record, or a truncated tail."""
    st = open_store(store, state_dir)
    key = None
    if public_key:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            key = load_pem_public_key(Path(public_key).read_bytes())
        except (ValueError, TypeError, OSError) as exc:
            raise AuditError(
                f"{public_key}: not a PEM public key ({exc})", code="audit-key-invalid"
            ) from None
        if not isinstance(key, Ed25519PublicKey):
            raise AuditError(
                f"{public_key}: checkpoints are signed with Ed25519; this is "
                f"a {type(key).__name__}",
                code="audit-key-invalid",
            )
    report = st.verify(key) if key is not None else st.verify()  # type: ignore[call-arg]
    if output == "json":
        emit_json(report.to_json())
    elif report.ok:
        console.print(
            f"[green]ok[/green]: {report.records} records "
            f"({report.first_seq}..{report.last_seq}), {report.checkpoints} "
            "signed checkpoint(s) verified"
        )
    else:
        err_console.print(
            f"[red]{report.problem}[/red] at record {report.seq}: "
            f"{escape(report.detail)} ({report.records} records verified "
            "before it)"
        )
    if not report.ok:
        raise SystemExit(EXIT_FAIL)


@audit.command()
@store_options
@click.option(
    "--export",
    "export_",
    is_flag=True,
    help="Print the signed head and public key, for anchoring elsewhere.",
)
@output_option
@handle_errors
def checkpoint(store: str | None, state_dir: Path, export_: bool, output: str) -> None:
    """Sign the current head of the chain (and with --export print it)."""
    st = open_store(store, state_dir, signing=True)
    cp = st.checkpoint()
    if cp is None:
        raise AuditError("nothing to checkpoint: the store is empty", code="audit-empty")
    signer = Signer.load_or_create(state_dir)
    doc = {**cp.to_json(), "time": iso_ms(cp.time_ns), "publicKey": signer.public_pem()}
    if output == "json" or export_:
        emit_json(doc)
    else:
        console.print(f"checkpoint at record {cp.seq}: {cp.hash.hex()} (key {cp.key_id})")


def _events(st: Store, flt: AuditFilter, limit: int | None) -> Iterator[StoredEvent]:
    return st.query(flt, limit=limit)


@audit.command()
@store_options
@filter_options
@click.option("--limit", type=int, default=100, show_default=True)
@output_option
@handle_errors
def query(store: str | None, state_dir: Path, limit: int, output: str, **kw: Any) -> None:
    """Events matching the filters, oldest first."""
    st = open_store(store, state_dir)
    rows = list(_events(st, build_filter(kw), limit))
    if output == "json":
        emit_json([{"seq": r.seq, **r.event.to_json()} for r in rows])
        return
    for r in rows:
        e = r.event
        pols = ",".join(f"{p.namespace}/{p.name}" if p.namespace else p.name for p in e.policies)
        console.print(
            f"{r.seq:>8} {iso_ms(e.time_ns)} {e.verdict:<13} {e.reason:<17} "
            f"{e.subject or e.peer_identity} → {e.workload}:{e.port}/{e.protocol} "
            f"{pols}",
            markup=False,
        )


@audit.command()
@store_options
@filter_options
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option(
    "--output",
    "-O",
    "out_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write here (with a progress bar) instead of standard output.",
)
@handle_errors
def export(store: str | None, state_dir: Path, fmt: str, out_path: str | None, **kw: Any) -> None:
    """Stream every matching event as JSON lines or CSV."""
    st = open_store(store, state_dir)
    flt = build_filter(kw)
    total = st.count(flt)
    fh: IO[str] = open(out_path, "w", newline="") if out_path else sys.stdout  # noqa: SIM115
    try:
        writer = csv.writer(fh) if fmt == "csv" else None
        if writer is not None:
            writer.writerow(_CSV_COLUMNS)
        with Progress(
            console=err_console, transient=True, disable=out_path is None or total < 10_000
        ) as progress:
            task = progress.add_task("exporting", total=total)
            for i, r in enumerate(st.query(flt), start=1):
                doc = {"seq": r.seq, "hash": r.hash.hex(), **r.event.to_json()}
                if writer is not None:
                    doc["time"] = iso_ms(r.event.time_ns)
                    doc["policies"] = ";".join(
                        f"{p['kind']}/{p['namespace']}/{p['name']}@{p['revision']}"
                        for p in doc["policies"]
                    )
                    writer.writerow([doc.get(c, "") for c in _CSV_COLUMNS])
                else:
                    fh.write(json.dumps(doc, separators=(",", ":")) + "\n")
                if i % 5000 == 0:
                    progress.update(task, completed=i)
    finally:
        if out_path:
            fh.close()
    if out_path:
        err_console.print(f"exported {total} event(s) to {escape(out_path)}")


@click.command(name="who")
@store_options
@filter_options
@output_option
@handle_errors
def who_cmd(store: str | None, state_dir: Path, output: str, **kw: Any) -> None:
    """Who accessed which port and when: per identity, with counts, first/last seen and
    verdicts. Counts are decisions (attempts); a relayed connection's close event is not
    counted again."""
    st = open_store(store, state_dir)
    flt = build_filter(kw)
    rows = st.who(flt if flt.kind else replace(flt, kind="decision"))
    if output == "json":
        emit_json([r.to_json() for r in rows])
        return
    if not rows:
        console.print("no matching events")
        return
    t = RichTable(
        "peer",
        "identity",
        "workload:port",
        "count",
        "first seen",
        "last seen",
        "verdicts",
        box=None,
        pad_edge=False,
    )
    for r in rows:
        t.add_row(
            escape(r.subject or "-"),
            str(r.peer_identity),
            escape(f"{r.workload}:{r.port}/{r.protocol}"),
            str(r.count),
            iso_ms(r.first_ns),
            iso_ms(r.last_ns),
            ", ".join(f"{k} {v}" for k, v in sorted(r.verdicts.items())),
        )
    console.print(t)
