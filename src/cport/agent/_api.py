"""The agent's local API (aiohttp): a unix socket (owner-only), plus loopback TCP when
configured. Any client that is not on loopback must present the admin credential
(``Authorization: Bearer …`` matching ``api.adminTokenFile``). The OpenAPI document is served
at ``/openapi.json``; `cport status|observe|revoke|reload` are clients of this API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import ipaddress
import json
import os
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cport import __version__
from cport._time import iso_s
from cport.agent._ebpf import GRANT_STATUS
from cport.agent._flows import FlowFilter, FlowRecord
from cport.agent._openapi import OPENAPI
from cport.audit import AuditFilter
from cport.engine import Endpoint, Flow, explain, ports_report, resolve_endpoint
from cport.errors import CportError, CredentialError, InputErrors
from cport.model import PROTO_NUMBERS

if TYPE_CHECKING:
    from cport.agent._agent import Agent

_LOCAL = object()


def _error(status: int, code: str, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, **extra}}, status=status)


class ApiServer:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.settings = agent.settings.api_settings()
        self._admin: bytes | None = None
        if self.settings.admin_token_file is not None:
            try:
                self._admin = self.settings.admin_token_file.read_bytes().strip()
            except OSError as exc:
                raise CportError(
                    f"cannot read the admin token file: {exc.strerror}", code="invalid-config"
                ) from exc
        self.app = web.Application(middlewares=[self._guard, self._errors])
        self._routes()
        for hook in agent.api_hooks:
            hook(self.app)
        self._runner: web.AppRunner | None = None
        self.tcp_address: tuple[str, int] | None = None

    # -- serving -----------------------------------------------------------------------
    async def start(self) -> None:
        # Live streams end when the agent closes its flow hub; nothing else should hold a
        # shutdown for long.
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await self._runner.setup()
        sock_path = self.settings.socket
        sock_path.parent.mkdir(parents=True, exist_ok=True)
        if sock_path.exists() or sock_path.is_symlink():
            sock_path.unlink()  # a stale socket from a killed agent
        old = os.umask(0o177)  # the socket is owner-only from its first moment
        try:
            site = web.UnixSite(self._runner, str(sock_path))
            await site.start()
        finally:
            os.umask(old)
        if self.settings.listen is not None:
            hp = self.settings.listen
            tcp = web.TCPSite(self._runner, hp.host, hp.port)
            await tcp.start()
            server = tcp._server
            if server is not None and server.sockets:  # type: ignore[attr-defined]
                addr = server.sockets[0].getsockname()  # type: ignore[attr-defined]
                self.tcp_address = (addr[0], addr[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with_path = self.settings.socket
        if with_path.exists():
            with_path.unlink()

    # -- middleware --------------------------------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        remote = request.remote
        local = True
        if remote:  # unix-socket requests have no remote address
            try:
                local = ipaddress.ip_address(remote).is_loopback
            except ValueError:
                local = False
        if not local:
            given = request.headers.get("Authorization", "")
            token = given[7:].strip().encode() if given[:7].lower() == "bearer " else b""
            if self._admin is None or not hmac.compare_digest(token, self._admin):
                return _error(
                    401,
                    "admin-credential-required",
                    "a non-local client needs the admin credential",
                )
        result: web.StreamResponse = await handler(request)
        return result

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            result: web.StreamResponse = await handler(request)
            return result
        except InputErrors as exc:
            return web.json_response(
                {
                    "error": {
                        "code": exc.code,
                        "message": str(exc),
                        "errors": [e.to_json() for e in exc.errors],
                    }
                },
                status=400,
            )
        except CredentialError as exc:
            return _error(401, exc.code, exc.message)
        except CportError as exc:
            return _error(400, exc.code, exc.message)
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            return _error(400, "bad-request", f"{type(exc).__name__}: {exc}")

    # -- routes ------------------------------------------------------------------------
    def _routes(self) -> None:
        r = self.app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/openapi.json", self.openapi)
        r.add_get("/metrics", self.metrics)
        r.add_get("/v1/status", self.status)
        r.add_post("/v1/reload", self.reload)
        r.add_post("/v1/explain", self.explain)
        r.add_get("/v1/explanations/{id}", self.explanation)
        r.add_get("/v1/ports/{namespace}/{name}", self.ports)
        r.add_get("/v1/flows", self.flows)
        r.add_get("/v1/connections", self.connections)
        r.add_get("/v1/audit/events", self.audit_events)
        r.add_get("/v1/audit/who", self.audit_who)
        r.add_get("/v1/revocations", self.revocations)
        r.add_post("/v1/revocations", self.revoke)
        r.add_delete("/v1/revocations/{id}", self.unrevoke)
        r.add_get("/v1/grants", self.grants)
        r.add_post("/v1/grants", self.grant)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        a = self.agent
        problems = []
        if not a.ready:
            problems.append("starting or stopping")
        if (problem := a.audit_problem()) is not None:
            problems.append(f"audit: {problem}")
        out_of_sync = [n for n, rev in a.realised.items() if rev != a.state.table.revision]
        if out_of_sync:
            problems.append("enforcers behind the table: " + ", ".join(out_of_sync))
        return web.json_response(
            {"ready": not problems, "problems": problems}, status=200 if not problems else 503
        )

    async def openapi(self, request: web.Request) -> web.Response:
        doc = dict(OPENAPI)
        doc["info"] = {**OPENAPI["info"], "version": __version__}
        return web.json_response(doc)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.agent.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.agent.status())

    async def reload(self, request: web.Request) -> web.Response:
        out = await self.agent.reload(force=True)
        return web.json_response(out, status=200 if not out["errors"] else 422)

    async def explain(self, request: web.Request) -> web.Response:
        body = await request.json()
        state = self.agent.state
        table = state.table
        inv = state.bundle.inventory
        port_text = str(body["port"])
        num, _, proto = port_text.partition("/")
        proto_num = PROTO_NUMBERS[(proto or "TCP").upper()]
        credential = None
        if "token" in body:
            credential = await self.agent.verify(str(body["token"]))
            ident, table = await self.agent.identity_for(credential.labels)
            src = Endpoint(ident, credential.labels, credential.subject)
        else:
            src = resolve_endpoint(table, inv, str(body["from"]))
        dst = resolve_endpoint(table, inv, str(body["to"]))
        exp = explain(
            table,
            Flow(src.identity, dst.identity, proto_num, int(num), credential is not None),
            src,
            dst,
        )
        doc = exp.to_json()
        if credential is not None:
            doc["from"]["credential"] = credential.to_json()  # type: ignore[index]
        return web.json_response(doc)

    async def explanation(self, request: web.Request) -> web.Response:
        doc = self.agent.explanations.get(request.match_info["id"])
        if doc is None:
            return _error(
                404, "unknown-explanation", "no such explanation id (the agent keeps the last 4096)"
            )
        return web.json_response(doc)

    async def ports(self, request: web.Request) -> web.Response:
        state = self.agent.state
        w = state.bundle.inventory.find(request.match_info["namespace"], request.match_info["name"])
        return web.json_response(ports_report(state.table, w).to_json())

    def _flow_filter(self, request: web.Request) -> FlowFilter:
        q = request.query
        verdicts = frozenset(v for v in q.getall("verdict", []) for v in v.split(",") if v)
        port = q.get("port")
        return FlowFilter(
            verdicts, q.get("from") or None, q.get("to") or None, int(port) if port else None
        )

    async def flows(self, request: web.Request) -> web.StreamResponse:
        flt = self._flow_filter(request)
        limit = int(request.query.get("limit", "100"))
        recent = self.agent.flows.recent(flt, limit)
        if request.query.get("follow") not in ("1", "true", "yes"):
            return web.json_response({"flows": [r.to_json() for r in recent]})
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        hub = self.agent.flows
        queue = hub.subscribe()
        try:
            for rec in recent:
                await resp.write(b"data: " + json.dumps(rec.to_json()).encode() + b"\n\n")
            while True:
                try:
                    item: FlowRecord | None = await asyncio.wait_for(queue.get(), 15.0)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                if item is None:  # the agent is stopping
                    break
                dropped = hub.take_dropped(queue)
                if dropped:
                    await resp.write(f"event: dropped\ndata: {dropped}\n\n".encode())
                if flt(item):
                    await resp.write(b"data: " + json.dumps(item.to_json()).encode() + b"\n\n")
        except ConnectionResetError:
            pass
        finally:
            hub.unsubscribe(queue)
        return resp

    async def connections(self, request: web.Request) -> web.Response:
        return web.json_response({"connections": [c.to_json() for c in self.agent.registry]})

    def _audit_filter(self, request: web.Request) -> AuditFilter:
        q = request.query

        def num(key: str) -> int | None:
            return int(q[key]) if q.get(key) else None

        return AuditFilter(
            since_ns=num("since_ns"),
            until_ns=num("until_ns"),
            verdict=q.get("verdict"),
            reason=q.get("reason"),
            workload=q.get("workload"),
            port=num("port"),
            peer_identity=num("peer_identity"),
            subject=q.get("subject"),
            policy=q.get("policy"),
            kind=q.get("kind"),
        )

    async def audit_events(self, request: web.Request) -> web.Response:
        store = self.agent.store
        if store is None:
            return _error(503, "audit-store-unavailable", "the agent is not running")
        flt = self._audit_filter(request)
        limit = int(request.query.get("limit", "100"))
        after = int(request.query.get("after_seq", "0"))

        def run() -> list[dict[str, object]]:
            return [
                {"seq": s.seq, **s.event.to_json()}
                for s in store.query(flt, limit=limit, after_seq=after)
            ]

        events = await asyncio.get_running_loop().run_in_executor(None, run)
        return web.json_response({"events": events})

    async def audit_who(self, request: web.Request) -> web.Response:
        store = self.agent.store
        if store is None:
            return _error(503, "audit-store-unavailable", "the agent is not running")
        flt = self._audit_filter(request)
        if flt.kind is None:  # count attempts, not each connection's decision and close
            flt = dataclasses.replace(flt, kind="decision")
        rows = await asyncio.get_running_loop().run_in_executor(None, store.who, flt)
        return web.json_response({"who": [r.to_json() for r in rows]})

    async def revocations(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"revocations": [_rev_json(r) for r in self.agent.revocations.list()]}
        )

    async def revoke(self, request: web.Request) -> web.Response:
        body = await request.json()
        kinds = [k for k in ("tokenId", "identity") if body.get(k)]
        if len(kinds) != 1:
            return _error(400, "invalid-revocation", "give exactly one of tokenId or identity")
        kind = "token-id" if kinds[0] == "tokenId" else "identity"
        until = body.get("until")
        rev = self.agent.revocations.add(
            kind,
            str(body[kinds[0]]),
            until=float(until) if until is not None else None,
            reason=str(body.get("reason", "")),
        )
        closed = self.agent.sweep()
        return web.json_response({"revocation": _rev_json(rev), "closed": closed}, status=201)

    async def unrevoke(self, request: web.Request) -> web.Response:
        if not self.agent.revocations.remove(request.match_info["id"]):
            return _error(404, "unknown-revocation", "no such revocation")
        return web.json_response({"removed": request.match_info["id"]})

    async def grants(self, request: web.Request) -> web.Response:
        ebpf = self.agent.ebpf
        items = [] if ebpf is None else [g.to_json() for g in ebpf.grants.values()]
        return web.json_response({"grants": items})

    async def grant(self, request: web.Request) -> web.Response:
        ebpf = self.agent.ebpf
        if ebpf is None:
            return _error(
                409,
                "no-kernel-enforcer",
                "grants open auth-required ports in the eBPF datapath; this agent "
                "runs without one (cport up --datapath ebpf)",
            )
        body = await request.json()
        credential = await self.agent.verify(str(body["token"]))
        try:
            g = await ebpf.grant(credential, str(body["address"]))
        except CportError as exc:
            status = GRANT_STATUS.get(exc.code)
            if status is None:
                raise  # 400 with its code
            return _error(status, exc.code, exc.message)
        return web.json_response({"grant": g.to_json()}, status=201)


def _rev_json(r: Any) -> dict[str, object]:
    return {
        "id": r.id,
        "kind": r.kind,
        "value": r.value,
        "created": r.created,
        "until": r.until,
        "reason": r.reason,
        "createdIso": iso_s(r.created),
    }


__all__ = ["ApiServer"]
