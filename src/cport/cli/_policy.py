"""`cport policy validate|compile`."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table as RichTable

from cport.cli._common import (
    EXIT_FAIL,
    allocator,
    console,
    emit_json,
    escape,
    handle_errors,
    load_bundle,
    output_option,
    report_input_errors,
)
from cport.engine import compile_table
from cport.engine._report import describe_identity
from cport.errors import InputErrors
from cport.model import PROTO_NAMES, load


def _summary(d: object) -> str:
    if not isinstance(d, dict):
        return "not governed (allow)"
    return f"{d['rows']} rows, default {d['default']}, by {', '.join(d['selectedBy'])}"


@click.group()
def policy() -> None:
    """Validate and compile policies."""


@policy.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "--skip-unsupported",
    is_flag=True,
    help="Warn about, and drop, allow rules cport cannot enforce instead of failing.",
)
@output_option
def validate(paths: tuple[str, ...], skip_unsupported: bool, output: str) -> None:
    """Check policy and inventory files; report every error with file, line and field."""
    try:
        bundle = load(paths, skip_unsupported=skip_unsupported)
    except InputErrors as exc:
        report_input_errors(exc.errors, output == "json")
        raise SystemExit(EXIT_FAIL) from None
    if output == "json":
        emit_json(
            {
                "valid": True,
                "documents": bundle.documents,
                "policies": [str(p.key) for p in bundle.policies],
                "workloads": [w.ref for w in bundle.inventory],
                "warnings": bundle.warnings,
            }
        )
        return
    for w in bundle.warnings:
        console.print(f"[yellow]warning[/yellow]: {escape(w)}", soft_wrap=True)
    console.print(
        f"[green]valid[/green]: {bundle.documents} document(s), "
        f"{len(bundle.policies)} polic{'y' if len(bundle.policies) == 1 else 'ies'}, "
        f"{len(bundle.inventory)} workload(s)"
    )


@policy.command(name="compile")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "--inventory",
    "-i",
    multiple=True,
    type=click.Path(exists=True),
    help="Workload/Pod/Namespace files or directories.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Persist numeric identities here.",
)
@click.option("--cluster", default="default", show_default=True)
@click.option("--skip-unsupported", is_flag=True)
@click.option("--rows", "show_rows", is_flag=True, help="List every row of the table.")
@output_option
@handle_errors
def compile_cmd(
    paths: tuple[str, ...],
    inventory: tuple[str, ...],
    state_dir: Path | None,
    cluster: str,
    skip_unsupported: bool,
    show_rows: bool,
    output: str,
) -> None:
    """Compile policies against an inventory and summarise (or list) the table rows."""
    bundle = load_bundle(paths, inventory, cluster, skip_unsupported)
    table = compile_table(bundle.policies, bundle.inventory, allocator(state_dir))
    endpoints = []
    for w in bundle.inventory:
        num = table.workload_ids[(w.namespace, w.name)]
        item: dict[str, object] = {"workload": w.ref, "identity": num}
        for direction, source in (("ingress", table.ingress), ("egress", table.egress)):
            epp = source.get(num)
            item[direction] = (
                None
                if epp is None
                else {
                    "rows": epp.rows,
                    "default": epp.default.verdict.value,
                    "selectedBy": [str(r.policy) for r in epp.selected_by],
                }
            )
            if show_rows and epp is not None:
                rows = []
                for key, cell in epp.exact.items():
                    peer, proto, port = key >> 24, (key >> 16) & 0xFF, key & 0xFFFF
                    rows.append(
                        {
                            "peer": peer,
                            "protocol": PROTO_NAMES[proto],
                            "ports": str(port),
                            "verdict": cell.verdict.value,
                            "policies": sorted({str(r.policy) for r in cell.contributions}),
                        }
                    )
                for rkey, pm in epp.ranges.items():
                    peer, proto = rkey >> 8, rkey & 0xFF
                    for lo, hi, cell in zip(pm.starts, pm.ends, pm.cells, strict=True):
                        rows.append(
                            {
                                "peer": peer,
                                "protocol": PROTO_NAMES[proto],
                                "ports": "*" if (lo, hi) == (0, 65535) else f"{lo}-{hi}",
                                "verdict": cell.verdict.value,
                                "policies": sorted({str(r.policy) for r in cell.contributions}),
                            }
                        )
                item[direction]["rows_list"] = rows  # type: ignore[index]
        endpoints.append(item)
    summary = {
        "revision": table.revision,
        "policies": len(table.policies),
        "identities": len(table.identities),
        "rows": table.rows,
        "endpoints": endpoints,
    }
    if output == "json":
        if show_rows:
            summary["peers"] = {str(n): describe_identity(table, n) for n in table.identities}
        emit_json(summary)
        return
    console.print(
        f"table revision {table.revision}: {len(table.policies)} policies, "
        f"{len(table.identities)} identities, {table.rows} rows"
    )
    rt = RichTable("workload", "identity", "ingress", "egress", box=None)
    for item in endpoints:
        rt.add_row(
            escape(str(item["workload"])),
            str(item["identity"]),
            escape(_summary(item["ingress"])),
            escape(_summary(item["egress"])),
        )
    console.print(rt)
    if show_rows:
        for item in endpoints:
            for direction in ("ingress", "egress"):
                d = item[direction]
                if not isinstance(d, dict):
                    continue
                for r in d["rows_list"]:
                    console.print(
                        f"{item['workload']} {direction} peer={r['peer']} "
                        f"{r['ports']}/{r['protocol']} {r['verdict']} "
                        f"{' '.join(r['policies'])}",
                        markup=False,
                    )
