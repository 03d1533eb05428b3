"""`cport explain` and `cport ports`: the two questions operators ask."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import click
from rich.table import Table as RichTable

from cport.cli._common import (
    EXIT_FAIL,
    allocator,
    console,
    emit_json,
    escape,
    extra_labels,
    handle_errors,
    load_bundle,
    load_options,
    output_option,
)
from cport.cli._token import verify_token_file
from cport.engine import Endpoint, Flow, compile_table, explain, ports_report, resolve_endpoint
from cport.engine._explain import Explanation
from cport.engine._report import DirectionPorts
from cport.errors import FlowError
from cport.identity import VerifiedIdentity
from cport.model import PROTO_NUMBERS

_COLOURS = {"allowed": "green", "denied": "red", "audit": "yellow", "auth-required": "magenta"}


def parse_port(text: str) -> tuple[int, int]:
    """``5432`` or ``5432/TCP`` → (port, protocol number)."""
    port_text, _, proto = text.partition("/")
    proto = (proto or "TCP").upper()
    if proto not in PROTO_NUMBERS:
        raise click.BadParameter(f"protocol {proto!r}: use TCP, UDP or SCTP")
    if not (port_text.isascii() and port_text.isdecimal()) or not 1 <= int(port_text) <= 65535:
        raise click.BadParameter(f"port {port_text!r}: a number from 1 to 65535")
    return int(port_text), PROTO_NUMBERS[proto]


def _policy_list(refs: list[dict[str, object]]) -> str:
    out = []
    for r in refs:
        where = f"{r['namespace']}/{r['name']}" if r["namespace"] else str(r["name"])
        mode = " (audit)" if r["mode"] == "audit" else ""
        out.append(f"{r['kind']} {where} {r['rule']} rev {r['revision']}{mode}")
    return escape("; ".join(out))


def _print_direction(label: str, d: dict[str, Any]) -> None:
    colour = _COLOURS.get(str(d["verdict"]), "white")
    who = escape(d["endpoint"] or "not a workload")
    console.print(
        f"  {label:<7} [bold]{who}[/bold]: [{colour}]{d['verdict']}[/{colour}] ({d['reason']})"
    )
    if not d["governed"]:
        console.print("          no policy selects it in this direction: allowed")
        return
    console.print(f"          selected by: {_policy_list(d['selectedBy'])}")
    row = d["row"]
    if row:
        console.print(f"          matched row: peer {row['peer']}, ports {row['ports']}")
    else:
        console.print("          no row for this peer and port: the default applies")
    for key, text in (
        ("allowedBy", "allowed by"),
        ("deniedBy", "denied by"),
        ("auditedBy", "audit (would deny)"),
    ):
        if d[key]:
            console.print(f"          {text}: {_policy_list(d[key])}")


def print_explanation(exp: Explanation) -> None:
    print_explanation_json(exp.to_json())


def print_explanation_json(doc: dict[str, Any]) -> None:
    """The text form of an explanation, from its JSON (local, or from the agent API)."""
    verdict = str(doc["verdict"])
    colour = _COLOURS.get(verdict, "white")
    console.print(
        f"[bold {colour}]{verdict.upper()}[/bold {colour}]  reason: "
        f"{doc['reason']}  (table revision {doc['tableRevision']})"
    )
    src, dst = doc["from"], doc["to"]
    console.print(
        f"  {escape(str(src['name']))} (identity {src['identity']}) → {escape(str(dst['name']))} "
        f"(identity {dst['identity']})  {doc['port']}/{doc['protocol']}"
    )
    _print_direction("egress", doc["egress"])
    _print_direction("ingress", doc["ingress"])
    if doc["authenticationRequired"] and not doc["authenticated"]:
        console.print("  the port requires a verified credential (authentication: required)")
    elif doc["reason"] == "authenticated":
        console.print("  admitted: the port requires a verified credential, and one was presented")


@click.command(name="explain")
@functools.partial(load_options, required=False)
@click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(exists=True),
    default=None,
    help="Agent configuration (issuers), for --from token:FILE.",
)
@click.option(
    "--id",
    "explanation_id",
    default=None,
    help="Show the explanation a running agent gave a refused connection (its 403 body and "
    "Cport-Explanation header carry the id); asks the agent API (--socket).",
)
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    default=None,
    help="The agent's API socket, for --id [default: $CPORT_SOCKET or .cport/agent.sock].",
)
@click.option(
    "--from",
    "src",
    required=False,
    help="Source: NAMESPACE/WORKLOAD, entity:NAME, cidr:IP, labels:k=v,… or token:FILE "
    "(a credential, verified with --config).",
)
@click.option("--to", "dst", required=False, help="Destination, same forms as --from.")
@click.option("--port", "port", required=False, help="Destination port, N or N/PROTO (TCP).")
@click.option(
    "--record",
    is_flag=True,
    help="Also write this decision to the audit store (STATE_DIR/audit.db, default .cport).",
)
@output_option
@handle_errors
def explain_cmd(
    policies: tuple[str, ...],
    inventory: tuple[str, ...],
    state_dir: Path | None,
    cluster: str,
    skip_unsupported: bool,
    config_path: str | None,
    explanation_id: str | None,
    socket_path: Path | None,
    src: str | None,
    dst: str | None,
    port: str | None,
    record: bool,
    output: str,
) -> None:
    """Explain whether SRC may reach DST on PORT, and which policies decide it.

    Exit status 0 when allowed (or audit), 1 when denied."""
    if explanation_id is not None:
        from cport.cli._agent import AgentClient

        doc = AgentClient(socket_path).call("GET", f"/v1/explanations/{explanation_id}")
        if output == "json":
            emit_json(doc)
        else:
            print_explanation_json(doc)
        if doc["verdict"] == "denied":
            raise SystemExit(EXIT_FAIL)
        return
    if not (policies and src and dst and port):
        raise click.UsageError("explain needs --policies, --from, --to and --port (or --id)")
    port_num, proto = parse_port(port)
    credential = None
    extra = extra_labels(src, dst)
    if src.startswith("token:"):
        if config_path is None:
            raise click.UsageError("--from token:FILE needs --config (the trusted issuers)")
        credential = verify_token_file(config_path, src[len("token:") :])
        extra.append(credential.labels)
    bundle = load_bundle(policies, inventory, cluster, skip_unsupported)
    table = compile_table(
        bundle.policies,
        bundle.inventory,
        allocator(state_dir),
        extra_identities=extra,
    )
    if credential is not None:
        num = next(n for n, ls in table.identities.items() if ls == credential.labels)
        who = f"{credential.subject} ({credential.kind} from {credential.issuer}" + (
            f", agent {credential.actor})" if credential.actor else ")"
        )
        s = Endpoint(num, credential.labels, who)
    else:
        s = resolve_endpoint(table, bundle.inventory, src)
    d = resolve_endpoint(table, bundle.inventory, dst)
    exp = explain(
        table, Flow(s.identity, d.identity, proto, port_num, credential is not None), s, d
    )
    if record:
        _record(exp, credential, state_dir or Path(".cport"))
    if output == "json":
        out = exp.to_json()
        if credential is not None:
            out["from"]["credential"] = credential.to_json()  # type: ignore[index]
        emit_json(out)
    else:
        print_explanation(exp)
    if exp.verdict == "denied":
        raise SystemExit(EXIT_FAIL)


def _record(exp: Explanation, credential: VerifiedIdentity | None, state_dir: Path) -> None:
    from cport.audit import Signer, SQLiteStore, event_from_explanation

    store = SQLiteStore(state_dir / "audit.db", Signer.load_or_create(state_dir))
    try:
        store.append([event_from_explanation(exp, enforcer="cli", credential=credential)])
    finally:
        store.close()


def _print_ports(title: str, dp: DirectionPorts) -> None:
    if dp.governed:
        by = ", ".join(
            f"{r['kind']} "
            + (f"{r['namespace']}/{r['name']}" if r["namespace"] else str(r["name"]))
            for r in dp.selected_by
        )
        console.print(
            f"[bold]{title}[/bold]: governed by {escape(by)}; unmatched traffic: {dp.default}"
        )
    else:
        console.print(f"[bold]{title}[/bold]: {dp.default}")
    if not dp.ports:
        console.print("  (no ports named)")
        return
    rt = RichTable(
        "port", "proto", "name", "may connect", "denied", "policy (mode)", box=None, pad_edge=False
    )
    for line in dp.ports:
        allowed = [
            ("[magenta](auth required)[/magenta] " if g.auth else "")
            + escape(f"{'; '.join(g.peers)}" + ("" if g.resolved is None else f" → {g.names()}"))
            for g in line.allowed
        ]
        denied = [
            escape(f"{'; '.join(g.peers)}" + ("" if g.resolved is None else f" → {g.names()}"))
            for g in line.denied
        ]
        pols = sorted(
            {
                f"{g.policy_name} ({g.mode})"
                for g in (*line.allowed, *line.denied)
                if g.entry is not None and g.entry.ref.policy.kind != "Default"
            }
        )
        rt.add_row(
            line.port,
            line.protocol,
            escape(line.name),
            "\n".join(allowed) or "[red]nobody[/red]",
            "\n".join(denied),
            escape("\n".join(pols)),
        )
    console.print(rt)


@click.command(name="ports")
@click.argument("workload")
@load_options
@output_option
@handle_errors
def ports_cmd(
    workload: str,
    policies: tuple[str, ...],
    inventory: tuple[str, ...],
    state_dir: Path | None,
    cluster: str,
    skip_unsupported: bool,
    output: str,
) -> None:
    """Every port of WORKLOAD (NAMESPACE/NAME): who may connect, under which policy."""
    if "/" not in workload:
        raise FlowError(f"{workload!r}: name the workload as NAMESPACE/NAME", code="invalid-flow")
    bundle = load_bundle(policies, inventory, cluster, skip_unsupported)
    table = compile_table(bundle.policies, bundle.inventory, allocator(state_dir))
    ns, _, name = workload.partition("/")
    report = ports_report(table, bundle.inventory.find(ns, name))
    if output == "json":
        emit_json(report.to_json())
        return
    w = report.workload
    console.print(
        f"[bold]{escape(w.ref)}[/bold] ({w.kind}, service account "
        f"{escape(w.service_account)}, identity {report.identity}, "
        f"addresses {', '.join(w.addresses) or '-'})"
    )
    _print_ports("ingress", report.ingress)
    _print_ports("egress", report.egress)
