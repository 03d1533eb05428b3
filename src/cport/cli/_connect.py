"""`cport connect`: tunnel a local port to a workload port through a cport gateway, or
(``--grant``) have the gateway grant this machine's address in the kernel so clients connect
to the workload directly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cport._time import iso_s
from cport.cli._common import err_console, escape, handle_errors, output_option
from cport.errors import CportError

if TYPE_CHECKING:
    from cport.proxy._connector import TokenSource


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter(f"{text!r} is not HOST:PORT", param_hint=what)
    return host, int(port)


@click.command("connect")
@click.option(
    "--to", "target", required=True, metavar="NS/WORKLOAD:PORT", help="The workload port to reach."
)
@click.option(
    "--via",
    "gateway",
    required=True,
    metavar="HOST:PORT",
    help="The cport gateway (`gateway.listen` of the agent).",
)
@click.option(
    "--listen",
    default=None,
    metavar="HOST:PORT",
    help="Local address for clients (port 0: pick one and print it).  [default: 127.0.0.1:0]",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Read the credential from this file (again whenever it is needed).",
)
@click.option(
    "--token-command",
    default=None,
    metavar="CMD",
    help="Run CMD for a credential, and again before it expires.",
)
@click.option(
    "--grant",
    is_flag=True,
    help="No tunnel: have the gateway grant this machine's address (as the gateway sees it) "
    "in the agent's eBPF datapath, print where to connect directly and until when, and ask "
    "again with a fresh token before the grant expires (until SIGINT/SIGTERM).",
)
@output_option
@handle_errors
def connect_cmd(
    target: str,
    gateway: str,
    listen: str | None,
    token_file: Path | None,
    token_command: str | None,
    grant: bool,
    output: str,
) -> None:
    """Listen locally and tunnel each connection to TARGET through the gateway with your
    credential (like `pomerium-cli tcp`). Long sessions survive token expiry: a fresh token
    is presented for each live tunnel before the old one expires.

    With --grant, clients connect to the workload directly instead: the gateway decides the
    attempt and grants this machine's address for your identity in the kernel until the
    credential expires; -o json prints one JSON document per grant."""
    from cport.proxy._connector import Connector, TokenSource

    if (token_file is None) == (token_command is None):
        raise click.UsageError("give one of --token-file or --token-command")
    if grant and listen is not None:
        raise click.UsageError("--grant opens no local port: leave out --listen")
    tokens = TokenSource(file=token_file, command=token_command)
    tokens.current()  # fail now, not on the first client, when the source is broken
    if grant:
        _run(_grant_main(target, _host_port(gateway, "--via"), tokens, output == "json"))
        return
    listen = listen or "127.0.0.1:0"

    def report(kind: str, doc: dict[str, object]) -> None:
        if kind == "refused":
            err_console.print(
                f"[red]refused[/red] ({doc.get('status')} {escape(str(doc.get('reason')))}): "
                f"{escape(str(doc.get('message', '')))}"
                + (
                    f" — see: cport explain --id {doc['explanationId']}"
                    if doc.get("explanationId")
                    else ""
                ),
                soft_wrap=True,
            )
        elif kind in ("error", "refresh-failed"):
            err_console.print(f"[red]{kind}[/red]: {escape(str(doc))}", soft_wrap=True)
        elif kind == "refreshed":
            err_console.print(f"refreshed credential for tunnel {doc.get('connection')}")

    async def main() -> None:
        conn = Connector(
            target,
            _host_port(gateway, "--via"),
            _host_port(listen, "--listen"),
            tokens,
            on_event=report,
        )
        await conn.start()
        host, port = conn.address
        err_console.print(f"cport connect: {host}:{port} → {escape(target)} via {gateway}")
        # Scripts read the chosen port from standard output.
        if output == "json":
            click.echo(json.dumps({"listen": f"{host}:{port}", "to": target}))
        else:
            click.echo(f"{host}:{port}", nl=True)
        await conn.serve_forever()

    try:
        _run(main())
    except OSError as exc:
        raise CportError(
            f"cannot listen on {listen}: {exc.strerror}", code="listen-failed"
        ) from exc


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` until it ends or SIGINT/SIGTERM cancels it (a clean exit, status 0)."""

    async def guarded() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await main

    asyncio.run(guarded())


async def _grant_main(
    target: str, gateway: tuple[str, int], tokens: TokenSource, as_json: bool
) -> None:
    from cport.proxy._connector import Granter

    printed = False

    def report(kind: str, doc: dict[str, object]) -> None:
        nonlocal printed
        if as_json:
            click.echo(json.dumps({"event": kind, **doc}, default=str))
            return
        expires = doc.get("expiresAt")
        until = iso_s(float(expires)) if isinstance(expires, int | float) else "?"
        if kind in ("granted", "regranted"):
            if not printed:  # scripts read where to connect from standard output
                click.echo(str(doc.get("connectTo", "")))
                printed = True
            err_console.print(
                f"cport connect: {'granted' if kind == 'granted' else 'granted again'}: "
                f"{escape(str(doc.get('address')))} may reach {escape(target)} directly at "
                f"{escape(str(doc.get('connectTo')))} as {escape(str(doc.get('subject', '')))} "
                f"(identity {doc.get('identity')}) until {until}",
                soft_wrap=True,
            )
        elif kind == "expired":
            err_console.print(
                f"[yellow]the grant expired at {until}[/yellow]; waiting for a fresh token",
                soft_wrap=True,
            )
        else:
            err_console.print(
                f"[yellow]{kind}[/yellow] ({escape(str(doc.get('reason')))}): "
                f"{escape(str(doc.get('message', '')))}",
                soft_wrap=True,
            )

    granter = Granter(target, gateway, tokens, on_event=report)
    await granter.run()


__all__ = ["connect_cmd"]
