"""`cport connect`: tunnel a local port to a workload port through a cport gateway."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import click

from cport.cli._common import err_console, escape, handle_errors
from cport.errors import CportError


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
    default="127.0.0.1:0",
    show_default=True,
    metavar="HOST:PORT",
    help="Local address for clients (port 0: pick one and print it).",
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
@handle_errors
def connect_cmd(
    target: str, gateway: str, listen: str, token_file: Path | None, token_command: str | None
) -> None:
    """Listen locally and tunnel each connection to TARGET through the gateway with your
    credential (like `pomerium-cli tcp`). Long sessions survive token expiry: a fresh token
    is presented for each live tunnel before the old one expires."""
    from cport.proxy._connector import Connector, TokenSource

    if (token_file is None) == (token_command is None):
        raise click.UsageError("give one of --token-file or --token-command")
    tokens = TokenSource(file=token_file, command=token_command)
    tokens.current()  # fail now, not on the first client, when the source is broken

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
        click.echo(f"{host}:{port}", nl=True)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await conn.serve_forever()

    try:
        asyncio.run(main())
    except OSError as exc:
        raise CportError(
            f"cannot listen on {listen}: {exc.strerror}", code="listen-failed"
        ) from exc


__all__ = ["connect_cmd"]
