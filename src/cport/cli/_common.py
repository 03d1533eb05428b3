"""Shared CLI plumbing: output format, loading, and the one place errors become exit codes.

Exit codes: 0 success (or an allowed flow), 1 denied flow or invalid input, 2 usage error.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from cport.errors import CportError, InputError, InputErrors
from cport.identity import IdentityAllocator, Labels
from cport.model import Bundle, load

F = TypeVar("F", bound=Callable[..., Any])
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

# Wide when piped (no terminal to fit), so lines stay greppable.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)


def output_option(f: F) -> F:
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Output format.",
    )(f)


def load_options(f: F, *, required: bool = True) -> F:
    f = click.option(
        "--skip-unsupported",
        is_flag=True,
        help="Drop allow rules with fields cport cannot enforce (L7, toFQDNs…) "
        "instead of failing; only ever narrows access.",
    )(f)
    f = click.option(
        "--cluster",
        default="default",
        show_default=True,
        help="Cluster name for the io.cilium.k8s.policy.cluster label.",
    )(f)
    f = click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Persist numeric identities here (stable across runs).",
    )(f)
    f = click.option(
        "--inventory",
        "-i",
        "inventory",
        multiple=True,
        type=click.Path(exists=True),
        help="Workload/Pod/Namespace YAML files or directories (repeatable).",
    )(f)
    return click.option(
        "--policies",
        "-p",
        "policies",
        multiple=True,
        required=required,
        type=click.Path(exists=True),
        help="Policy YAML files or directories (repeatable).",
    )(f)


def emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def handle_errors(f: F) -> F:
    """Map every CportError to exit code 1 with a located message (JSON with -o json)."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = kwargs.get("output") == "json"
        try:
            return f(*args, **kwargs)
        except InputErrors as exc:
            report_input_errors(exc.errors, as_json)
            sys.exit(EXIT_FAIL)
        except CportError as exc:
            if as_json:
                emit_json({"error": exc.to_json()})
            else:
                err_console.print(f"[red]error[/red] ({exc.code}): {escape(str(exc))}")
            sys.exit(EXIT_FAIL)

    return wrapper  # type: ignore[return-value]


__all__ = ["escape"]


def report_input_errors(errors: Iterable[InputError], as_json: bool) -> None:
    errs = list(errors)
    if as_json:
        emit_json({"valid": False, "errors": [e.to_json() for e in errs]})
        return
    for e in errs:
        err_console.print(
            f"[bold]{escape(str(e.location))}[/bold]: [red]{e.code}[/red]: {escape(e.message)}"
            + (f"\n    hint: {escape(e.hint)}" if e.hint else ""),
            soft_wrap=True,
        )
    err_console.print(f"{len(errs)} error(s)")


def load_bundle(
    policies: tuple[str, ...], inventory: tuple[str, ...], cluster: str, skip_unsupported: bool
) -> Bundle:
    bundle = load([*policies, *inventory], cluster=cluster, skip_unsupported=skip_unsupported)
    for w in bundle.warnings:
        err_console.print(f"[yellow]warning[/yellow]: {escape(w)}", soft_wrap=True)
    return bundle


def allocator(state_dir: Path | None) -> IdentityAllocator:
    return IdentityAllocator(state_dir)


def extra_labels(*specs: str) -> list[Labels]:
    from cport.engine._flow import labels_spec

    out = []
    for spec in specs:
        labels = labels_spec(spec)
        if labels is not None:
            out.append(labels)
    return out
