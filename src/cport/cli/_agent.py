"""`cport up` (the agent) and its clients: `status`, `observe`, `revoke`, `reload`.

The clients talk to the agent's local API over its unix socket (``--socket``, default
``.cport/agent.sock`` or ``$CPORT_SOCKET``), or over TCP with ``--api URL`` (and
``--admin-token-file`` when the agent is not on loopback).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import httpx

from cport.cli._common import (
    EXIT_FAIL,
    console,
    emit_json,
    err_console,
    escape,
    handle_errors,
    output_option,
)
from cport.errors import CportError

DEFAULT_SOCKET = Path(".cport") / "agent.sock"


def api_options(f: Any) -> Any:
    f = click.option(
        "--admin-token-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Admin credential for a non-loopback agent API.",
    )(f)
    f = click.option(
        "--api",
        "api_url",
        default=None,
        metavar="URL",
        help="The agent API over TCP, e.g. http://127.0.0.1:9464.",
    )(f)
    return click.option(
        "--socket",
        "socket_path",
        type=click.Path(path_type=Path),
        default=None,
        help=f"The agent's API socket [default: $CPORT_SOCKET or {DEFAULT_SOCKET}].",
    )(f)


class AgentClient:
    """A small client of the agent API (httpx over the unix socket or TCP)."""

    def __init__(
        self,
        socket_path: Path | None = None,
        api_url: str | None = None,
        admin_token_file: Path | None = None,
        timeout: float = 10.0,
    ) -> None:
        headers = {}
        if admin_token_file is not None:
            headers["Authorization"] = "Bearer " + admin_token_file.read_text().strip()
        if api_url:
            self.where = api_url
            self.http = httpx.Client(base_url=api_url, headers=headers, timeout=timeout)
        else:
            path = socket_path or Path(os.environ.get("CPORT_SOCKET", DEFAULT_SOCKET))
            self.where = str(path)
            if not path.exists():
                raise CportError(
                    f"no agent API at {path}: is `cport up` running? (--socket or --api)",
                    code="agent-unreachable",
                )
            self.http = httpx.Client(
                base_url="http://cport",
                headers=headers,
                timeout=timeout,
                transport=httpx.HTTPTransport(uds=str(path)),
            )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CportError(
                f"cannot reach the agent at {self.where}: {exc}", code="agent-unreachable"
            ) from exc
        try:
            doc = resp.json()
        except ValueError:
            raise CportError(
                f"the agent answered {resp.status_code} without JSON: {resp.text[:200]}",
                code="agent-error",
            ) from None
        if resp.status_code >= 400 and "error" in doc:
            err = doc["error"]
            raise CportError(err.get("message", ""), code=err.get("code", "agent-error"))
        return doc

    def stream(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Server-Sent Events: each default event's data as JSON; `dropped` events (the
        agent could not keep up with this reader) are reported on standard error."""
        try:
            with self.http.stream("GET", path, params=params, timeout=None) as resp:
                event = "message"
                for line in resp.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:].strip()
                    elif line.startswith("data: "):
                        if event == "dropped":
                            err_console.print(
                                f"[yellow]{line[6:].strip()} flow(s) dropped (slow reader)[/]"
                            )
                        else:
                            yield json.loads(line[6:])
                    elif not line:
                        event = "message"
        except httpx.HTTPError as exc:
            raise CportError(
                f"lost the agent at {self.where}: {exc}", code="agent-unreachable"
            ) from exc


def _where(e: dict[str, Any]) -> str:
    """file:line:column of an input error's JSON."""
    parts = [str(e[k]) for k in ("file", "line", "column") if e.get(k) is not None]
    where = ":".join(parts) or "?"
    return where + (f" ({e['field']})" if e.get("field") else "")


def _client(
    socket_path: Path | None, api_url: str | None, admin_token_file: Path | None
) -> AgentClient:
    return AgentClient(socket_path, api_url, admin_token_file)


@click.command("up")
@click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Agent configuration (YAML). Without it: the built-in "
    "quickstart estate on loopback (development only).",
)
@click.option(
    "--datapath",
    type=click.Choice(["proxy", "ebpf"]),
    default=None,
    help="Also enforce in the kernel with eBPF (needs root, BPF and tc) "
    "[default: the config's datapath.mode, else proxy].",
)
@click.option("--interface", default=None, help="The interface the eBPF programs guard.")
@click.option(
    "--pin-root",
    default=None,
    help="bpffs directory for pinned maps and programs [default: /sys/fs/bpf/cport].",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@handle_errors
def up_cmd(
    config_path: str | None,
    datapath: str | None,
    interface: str | None,
    pin_root: str | None,
    log_level: str,
) -> None:
    """Run the agent: enforce policy on real connections, audit them, serve the local API.

    Reloads policies and inventory when their files change (a bad change keeps the last good
    table). SIGTERM drains connections and flushes the audit record; SIGHUP reloads now."""
    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if config_path is None:
        from cport.agent._dev import run_quickstart

        _run(run_quickstart())
        return
    from cport.agent import Agent
    from cport.config import load_config

    config = load_config(config_path)
    if datapath or interface or pin_root:
        from dataclasses import replace

        dp = config.agent.datapath
        dp = replace(
            dp,
            mode=datapath or ("ebpf" if interface else dp.mode),
            interface=interface or dp.interface,
            pin_root=pin_root or dp.pin_root,
        )
        if dp.mode == "ebpf" and not dp.interface:
            raise click.UsageError("--datapath ebpf needs --interface IFACE")
        config.agent.datapath = dp
    if not config.agent.policies:
        raise CportError(
            f"{config_path} names no policies (policies: [paths])", code="invalid-config"
        )

    async def main() -> None:
        agent = Agent(config)
        agent.install_signal_handlers()
        agent.on_ready.append(_announce)
        await agent.run()

    _run(main())


def _run(coro: Any) -> None:
    asyncio.run(coro)


def _announce(agent: Any) -> None:
    st = agent.status()
    err_console.print(
        f"[green]cport agent ready[/green]: revision {st['revision']}, "
        f"{st['policy']['policies']} policies, {st['policy']['workloads']} workloads; "
        f"API {agent.settings.api_settings().socket}"
        + "".join(f"; {name} on {addr}" for name, addr in st["listeners"].items()),
        soft_wrap=True,
    )


@click.command("status")
@api_options
@output_option
@handle_errors
def status_cmd(
    socket_path: Path | None, api_url: str | None, admin_token_file: Path | None, output: str
) -> None:
    """The agent's state: table revision, each enforcer's realised revision, connections."""
    st = _client(socket_path, api_url, admin_token_file).call("GET", "/v1/status")
    if output == "json":
        emit_json(st)
        return
    console.print(
        f"node {escape(st['node'])}: revision {st['revision']}, "
        f"{st['connections']} live connection(s), ready={st['ready']}"
    )
    for name, e in st["enforcers"].items():
        mark = "[green]in sync[/green]" if e["inSync"] else "[red]behind[/red]"
        console.print(f"  {escape(name)}: realised {e['realised']} / desired {e['desired']} {mark}")
    for name, addr in st["listeners"].items():
        console.print(f"  listening: {escape(name)} on {escape(addr)}")
    pol = st["policy"]
    console.print(
        f"  policies {pol['policies']}, workloads {pol['workloads']}, "
        f"identities {pol['identities']}"
    )
    for e in pol["errors"]:
        console.print(
            f"  [red]rejected change[/red] {escape(_where(e))}: {escape(e['code'])}: "
            f"{escape(e['message'])}",
            soft_wrap=True,
        )
    audit = st["audit"]
    console.print(
        f"  audit: {audit['store']} "
        + ("healthy" if audit["healthy"] else f"[red]{escape(audit['error'])}[/red]")
    )


@click.command("observe")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new flows.")
@click.option(
    "--verdict",
    multiple=True,
    type=click.Choice(["allowed", "denied", "audit", "auth-required"]),
    help="Only these verdicts (repeatable).",
)
@click.option("--from", "from_", default=None, help="Peer: subject substring or identity.")
@click.option("--to", default=None, help="Workload NAMESPACE/NAME (or NAMESPACE/).")
@click.option("--port", type=int, default=None)
@click.option(
    "--last", type=int, default=100, show_default=True, help="How many recent flows to show first."
)
@api_options
@output_option
@handle_errors
def observe_cmd(
    follow: bool,
    verdict: tuple[str, ...],
    from_: str | None,
    to: str | None,
    port: int | None,
    last: int,
    socket_path: Path | None,
    api_url: str | None,
    admin_token_file: Path | None,
    output: str,
) -> None:
    """Live and recent flows, one line each: time, peer → workload:port, verdict, reason,
    policy (like `hubble observe`)."""
    from cport.agent._flows import FlowRecord

    client = _client(socket_path, api_url, admin_token_file)
    params: dict[str, Any] = {"limit": last}
    if verdict:
        params["verdict"] = ",".join(verdict)
    if from_:
        params["from"] = from_
    if to:
        params["to"] = to
    if port is not None:
        params["port"] = port

    def show(doc: dict[str, Any]) -> None:
        if output == "json":
            click.echo(json.dumps(doc))
        else:
            rec = FlowRecord.from_json(doc)
            colour = {"allowed": "green", "audit": "yellow"}.get(rec.verdict, "red")
            console.print(f"[{colour}]{escape(rec.line())}[/{colour}]", soft_wrap=True)

    if not follow:
        for doc in client.call("GET", "/v1/flows", params=params)["flows"]:
            show(doc)
        return
    params["follow"] = "1"
    try:
        for doc in client.stream("/v1/flows", params):
            show(doc)
    except KeyboardInterrupt:
        pass


@click.command("revoke")
@click.option(
    "--identity", default=None, help="A numeric identity or a subject (e.g. alice@example.com)."
)
@click.option("--token-id", default=None, help="A credential's jti or SHA-256.")
@click.option("--reason", default="", help="Recorded with the revocation.")
@click.option("--list", "list_", is_flag=True, help="List revocations in force.")
@click.option("--remove", default=None, metavar="ID", help="Lift a revocation.")
@api_options
@output_option
@handle_errors
def revoke_cmd(
    identity: str | None,
    token_id: str | None,
    reason: str,
    list_: bool,
    remove: str | None,
    socket_path: Path | None,
    api_url: str | None,
    admin_token_file: Path | None,
    output: str,
) -> None:
    """Revoke a credential or an identity now: new connections are refused and live ones
    close within a second, each close event saying `revoked`."""
    client = _client(socket_path, api_url, admin_token_file)
    if list_:
        doc = client.call("GET", "/v1/revocations")
        if output == "json":
            emit_json(doc)
        else:
            for r in doc["revocations"]:
                console.print(
                    f"{r['id']}  {r['kind']}={escape(r['value'])}  since "
                    f"{r['createdIso']}  {escape(r['reason'])}"
                )
        return
    if remove:
        doc = client.call("DELETE", f"/v1/revocations/{remove}")
        emit_json(doc) if output == "json" else console.print(f"lifted {remove}")
        return
    if bool(identity) == bool(token_id):
        raise click.UsageError("give one of --identity or --token-id (or --list, --remove)")
    body = {"identity": identity} if identity else {"tokenId": token_id}
    body["reason"] = reason
    doc = client.call("POST", "/v1/revocations", json=body)
    if output == "json":
        emit_json(doc)
    else:
        r = doc["revocation"]
        console.print(
            f"revoked {r['kind']}={escape(r['value'])} (id {r['id']}); "
            f"closed {doc['closed']} live connection(s)"
        )


@click.command("reload")
@api_options
@output_option
@handle_errors
def reload_cmd(
    socket_path: Path | None, api_url: str | None, admin_token_file: Path | None, output: str
) -> None:
    """Reload policies and inventory now (the agent also reloads on file changes)."""
    client = _client(socket_path, api_url, admin_token_file)
    try:
        resp = client.http.post("/v1/reload")
    except httpx.HTTPError as exc:
        raise CportError(f"cannot reach the agent: {exc}", code="agent-unreachable") from exc
    doc = resp.json()
    if output == "json":
        emit_json(doc)
    elif doc["errors"]:
        for e in doc["errors"]:
            err_console.print(
                f"[red]rejected[/red] {escape(_where(e))}: "
                f"{escape(e['code'])}: {escape(e['message'])}",
                soft_wrap=True,
            )
        err_console.print(f"revision {doc['revision']} stays in force")
    else:
        console.print(
            f"revision {doc['revision']} in force"
            + (" (changed)" if doc["changed"] else " (no change)")
        )
    if doc["errors"]:
        raise SystemExit(EXIT_FAIL)


__all__ = ["AgentClient", "observe_cmd", "reload_cmd", "revoke_cmd", "status_cmd", "up_cmd"]


@click.group("dev")
def dev() -> None:
    """Development helpers for the quickstart (`cport up` with no config). Not for
    production."""


@dev.command("token")
@click.argument("user")
@click.option("--ttl", type=float, default=600.0, show_default=True, help="Seconds.")
@click.option(
    "--actor",
    default=None,
    help="Mint a delegation token: an AI agent acting for USER (RFC 8693 `act`).",
)
@api_options
@handle_errors
def dev_token(
    user: str,
    ttl: float,
    actor: str | None,
    socket_path: Path | None,
    api_url: str | None,
    admin_token_file: Path | None,
) -> None:
    """Print a token for a quickstart demo user (alice, bob) from the built-in issuer."""
    body: dict[str, Any] = {"user": user, "ttl": ttl}
    if actor:
        body["actor"] = actor
    doc = _client(socket_path, api_url, admin_token_file).call("POST", "/v1/dev/token", json=body)
    click.echo(doc["token"])
