"""The proxy enforcer's two fronts.

* :class:`Gateway` — HTTP CONNECT with ``Proxy-Authorization: Bearer <token>``. Targets are
  ``workload.namespace:port`` or an inventory address. 407 without a (valid) credential, 403
  with a JSON body (reason code, explanation id) when policy refuses, 502 when the upstream
  cannot be reached, 429/503 for the per-identity and global caps.
* :class:`PortListener` — fronts one workload port; the peer is identified by its source
  address (inventory, else CIDR/world) or by a SPIFFE X.509-SVID over mutual TLS.

Both decide through :func:`cport.agent._decide.evaluate`, register the connection for live
re-checks, relay with :func:`cport.proxy.relay` and write a decision and a close event.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import secrets
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any

from cport.agent._conns import LiveConnection
from cport.agent._decide import Attempt, Outcome, audit_event, evaluate
from cport.agent._flows import FlowRecord
from cport.audit import AuditEvent
from cport.config import HostPort, Limits, ListenerSettings, Target
from cport.engine import Table, resolve_endpoint
from cport.errors import CportError, CredentialError
from cport.identity import Labels, VerifiedIdentity
from cport.model import Workload
from cport.proxy import (
    ProxyRequestError,
    RelayCounters,
    http_response,
    read_connect_head,
    relay,
    relay_streams,
)

if TYPE_CHECKING:
    from cport.agent._agent import Agent

log = logging.getLogger("cport.agent")


class Refused(CportError):
    """A connection attempt refused before relaying; `status` is the HTTP status."""

    def __init__(self, status: int, code: str, message: str, **extra: object) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.extra = extra

    def response(self) -> bytes:
        """The refusal as the client sees it: the status, ``Cport-Reason`` and a JSON body
        with the reason code, the message and any extra fields."""
        body: dict[str, object] = {"reason": self.code, "message": self.message, **self.extra}
        return http_response(self.status, body=body, headers={"Cport-Reason": self.code})


def _workload_id(table: Table, w: Workload) -> int:
    """The workload's identity in `table`; a reload may have removed it since it was found."""
    num = table.workload_ids.get((w.namespace, w.name))
    if num is None:
        raise Refused(403, "workload-removed", f"{w.ref} is no longer in the inventory")
    return num


def listen_socket(hp: HostPort, backlog: int = 4096) -> socket.socket:
    family = socket.AF_INET6 if ":" in hp.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((hp.host, hp.port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


async def open_upstream(hp: HostPort, timeout: float) -> socket.socket:
    loop = asyncio.get_running_loop()
    try:  # an address needs no resolver round trip through the executor
        ip = ipaddress.ip_address(hp.host)
        fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        infos: list[Any] = [(fam, socket.SOCK_STREAM, 0, "", (hp.host, hp.port))]
    except ValueError:
        infos = await loop.getaddrinfo(hp.host, hp.port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await _connect(loop, sock, addr, timeout)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:  # cancelled (shutdown): never leak the socket
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise last or OSError("no address")


async def _connect(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, addr: Any, timeout: float
) -> None:
    """Connect a non-blocking socket within `timeout` seconds (``OSError`` otherwise).

    What ``wait_for(loop.sock_connect(...))`` does, without the task and the extra futures
    `wait_for` makes for every connection: one writer callback and one timer."""
    err = sock.connect_ex(addr)
    if err == 0:
        return
    if err not in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
        raise OSError(err, os.strerror(err))
    fd = sock.fileno()
    done: asyncio.Future[None] = loop.create_future()

    def writable() -> None:
        if not done.done():
            done.set_result(None)

    def expired() -> None:
        if not done.done():
            done.set_exception(OSError(errno.ETIMEDOUT, f"timed out after {timeout:g}s"))

    loop.add_writer(fd, writable)
    timer = loop.call_later(timeout, expired)
    try:
        await done
    finally:
        timer.cancel()
        loop.remove_writer(fd)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


class _Front:
    """What the gateway and listeners share: accept loop, caps, relay and records."""

    enforcer = "proxy"

    def __init__(self, agent: Agent, listen: HostPort, limits: Limits) -> None:
        self.agent = agent
        self.listen = listen
        self.limits = limits
        self._sock: socket.socket | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self._backoff: asyncio.TimerHandle | None = None
        self.address = listen  # the bound address once started (port 0 resolved)

    async def start(self) -> None:
        self._sock = listen_socket(self.listen)
        host, port = self._sock.getsockname()[:2]
        self.address = HostPort(host, port)
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._on_acceptable)

    async def stop_accepting(self) -> None:
        if self._backoff is not None:
            self._backoff.cancel()
        if self._sock is not None and self._sock.fileno() >= 0:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()

    async def drain(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    def _on_acceptable(self) -> None:
        """Accept every pending connection (up to a batch) in one wake-up: cheaper than a
        future per `sock_accept`, and fair to connections already being served."""
        assert self._sock is not None
        for _ in range(64):
            try:
                conn, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: pause accepting, keep serving
                log.warning("accept on %s failed: %s", self.listen, exc)
                loop = asyncio.get_running_loop()
                fd = self._sock.fileno()
                loop.remove_reader(fd)
                self._backoff = loop.call_later(0.05, loop.add_reader, fd, self._on_acceptable)
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task: asyncio.Task[object] = asyncio.create_task(
                self._serve(conn, (str(addr[0]), int(addr[1])))
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket, client: tuple[str, int]) -> object:
        raise NotImplementedError

    # -- shared steps ------------------------------------------------------------------
    def _caps(self, identity: int | None) -> None:
        agent = self.agent
        if agent.audit_problem() is not None:
            raise Refused(
                503,
                "audit-unavailable",
                "the audit store cannot be written; refusing until it recovers",
            )
        # Connections still in their handshake count too: the cap holds however many
        # attempts arrive at once.
        if len(self._tasks) > self.limits.max_connections:
            raise Refused(
                503,
                "too-many-connections",
                f"this listener serves {len(self._tasks) - 1} connections, its maximum",
            )
        if identity is not None and not agent.reserve(
            identity, self.limits.per_identity_connections
        ):
            raise Refused(
                429,
                "identity-connection-cap",
                f"identity {identity} already holds "
                f"{self.limits.per_identity_connections} connections",
            )

    def _decide(self, attempt: Attempt) -> Outcome:
        agent = self.agent
        table = agent.state.table
        outcome = evaluate(table, attempt, agent.explanations)
        d = outcome.decision
        agent.metrics.decisions.labels(d.verdict.value, d.reason.value).inc()
        agent.submit(
            audit_event(
                attempt,
                node=agent.node,
                enforcer=self.enforcer,
                verdict=d.verdict.value,
                reason=d.reason.value,
                table_revision=table.revision,
                refs=outcome.refs,
                extra={"explanation_id": outcome.explanation_id}
                if outcome.explanation_id
                else None,
            )
        )
        agent.flows.publish(
            _flow_record(
                "open" if d.allowed else "refused",
                self.enforcer,
                attempt,
                outcome,
                explanation_id=outcome.explanation_id,
            )
        )
        return outcome

    def _refused_record(
        self,
        client: tuple[str, int],
        exc: Refused,
        peer: str = "",
        identity: int = 0,
        workload: str = "",
        port: int = 0,
        credential: VerifiedIdentity | None = None,
    ) -> None:
        """A refusal before any policy decision (bad request, bad credential, caps)."""
        agent = self.agent
        agent.metrics.decisions.labels("denied", exc.code).inc()
        agent.submit(
            AuditEvent(
                time_ns=time.time_ns(),
                kind="decision",
                node=agent.node,
                enforcer=self.enforcer,
                verdict="denied",
                reason=exc.code,
                src_ip=client[0],
                src_port=client[1],
                peer_identity=identity,
                subject=credential.subject if credential else peer,
                issuer=credential.issuer if credential else "",
                credential_kind=credential.kind if credential else "",
                token_id=credential.token_id if credential else "",
                workload=workload,
                port=port,
                dst_port=port,
                table_revision=agent.state.table.revision,
                extra={"message": exc.message},
            )
        )
        agent.flows.publish(
            FlowRecord(
                time.time_ns(),
                "refused",
                self.enforcer,
                "denied",
                exc.code,
                peer or client[0],
                identity,
                workload,
                port,
                src=f"{client[0]}:{client[1]}",
                token_id=credential.token_id if credential else "",
            )
        )

    async def _run_connection(
        self,
        attempt: Attempt,
        outcome: Outcome,
        upstream_addr: HostPort,
        relay_call: object,
        upstream: socket.socket | None,
        conn_id: str | None = None,
    ) -> None:
        """Register, relay (via `relay_call(counters)`), and record the close."""
        agent = self.agent
        counters = RelayCounters()
        live = LiveConnection(
            id=conn_id or secrets.token_hex(8),
            enforcer=self.enforcer,
            peer=attempt.peer,
            peer_identity=attempt.peer_identity,
            credential=attempt.credential,
            namespace=attempt.workload.namespace,
            workload=attempt.workload.name,
            port=attempt.port,
            client=f"{attempt.client[0]}:{attempt.client[1]}",
            upstream=str(upstream_addr),
            counters=counters,
            task=asyncio.current_task(),
        )
        agent.registry.add(live)
        agent.metrics.open_connections.inc()
        started = time.monotonic_ns()
        termination = "error"
        try:
            # A revocation or policy change may have landed while connecting.
            agent.recheck_one(live)
            if live.close_reason is None:
                result = await relay_call(counters)  # type: ignore[operator]
                termination = result.ended_by
        except asyncio.CancelledError:
            termination = live.close_reason or "shutdown"
        finally:
            agent.registry.remove(live)
            agent.metrics.open_connections.dec()
            if live.close_reason is not None:
                termination = live.close_reason
            if upstream is not None:  # None: a stream transport owns (and closes) it
                with contextlib.suppress(OSError):
                    upstream.close()
            self._record_close(
                attempt,
                outcome,
                upstream_addr,
                termination,
                counters=counters,
                duration_ns=time.monotonic_ns() - started,
                client=live.client,
            )

    def _record_close(
        self,
        attempt: Attempt,
        outcome: Outcome,
        upstream_addr: HostPort,
        termination: str,
        *,
        counters: RelayCounters | None = None,
        duration_ns: int = 0,
        client: str = "",
    ) -> None:
        """The close event and flow record of an allowed attempt (relayed or not)."""
        agent = self.agent
        counters = counters or RelayCounters()
        duration = duration_ns
        d = outcome.decision
        agent.submit(
            audit_event(
                attempt,
                node=agent.node,
                enforcer=self.enforcer,
                kind="close",
                verdict=d.verdict.value,
                reason=d.reason.value,
                table_revision=agent.state.table.revision,
                refs=outcome.refs,
                server=(upstream_addr.host, upstream_addr.port),
                bytes_in=counters.bytes_up,
                bytes_out=counters.bytes_down,
                duration_ns=duration,
                termination=termination,
            )
        )
        agent.flows.publish(
            _flow_record(
                "close",
                self.enforcer,
                attempt,
                outcome,
                src=client,
                bytes_up=counters.bytes_up,
                bytes_down=counters.bytes_down,
                duration_ms=duration / 1e6,
                termination=termination,
            )
        )


def _flow_record(
    event: str, enforcer: str, attempt: Attempt, outcome: Outcome, src: str = "", **more: Any
) -> FlowRecord:
    """The live-flow line of a decided attempt (`cport observe`): who, which port, the verdict
    and the policies; `src` defaults to the attempt's client address."""
    d = outcome.decision
    cred = attempt.credential
    return FlowRecord(
        time.time_ns(),
        event,
        enforcer,
        d.verdict.value,
        d.reason.value,
        attempt.peer,
        attempt.peer_identity,
        attempt.workload.ref,
        attempt.port,
        src=src or f"{attempt.client[0]}:{attempt.client[1]}",
        policies=outcome.policy_names,
        token_id=cred.token_id if cred else "",
        **more,
    )


class Gateway(_Front):
    enforcer = "proxy-gateway"

    def __init__(
        self, agent: Agent, listen: HostPort, limits: Limits, upstreams: dict[Target, HostPort]
    ) -> None:
        super().__init__(agent, listen, limits)
        self.upstreams = upstreams

    def _target(self, host: str, port: int) -> tuple[Workload, HostPort]:
        """`workload.namespace` or an inventory address → the workload and where it is."""
        inv = self.agent.state.bundle.inventory
        w: Workload | None = None
        try:
            # Names (the usual target) never look like addresses: spare the exceptions
            # ip_address raises building its message.
            if not (host[:1].isdigit() or ":" in host):
                raise ValueError(host)
            ipaddress.ip_address(host)
            w = inv.by_address(host)
        except ValueError:
            name, dot, ns = host.partition(".")
            if dot and ns and "." not in ns:
                try:
                    w = inv.find(ns, name)
                except CportError:
                    w = None
        if w is None:
            raise Refused(
                403,
                "unknown-target",
                f"{host}:{port} is not a workload in the inventory",
                hint="name targets workload.namespace:port",
            )
        up = self.upstreams.get(Target(w.namespace, w.name, port))
        if up is None:
            if not w.addresses:
                raise Refused(
                    502, "no-upstream", f"{w.ref} has no address and no configured upstream"
                )
            up = HostPort(w.addresses[0], port)
        return w, up

    async def _refresh(self, conn: socket.socket, conn_id: str, cred: VerifiedIdentity) -> None:
        """A fresh credential for a live tunnel (`Cport-Refresh: <connection id>`): accepted
        only for the identity the tunnel was opened with; the tunnel then lives until the new
        expiry (and is re-checked against policy and revocations as always)."""
        live = self.agent.registry.get(conn_id)
        if live is None or live.credential is None:
            raise Refused(404, "unknown-connection", "no live tunnel with that id")
        identity, _ = await self.agent.identity_for(cred.labels)
        if identity != live.peer_identity:
            raise Refused(
                403,
                "identity-mismatch",
                "a refresh must carry a credential of the tunnel's own identity",
            )
        live.credential = cred
        self.agent.recheck_one(live)
        if live.close_reason is not None:
            raise Refused(403, live.close_reason, "the tunnel is no longer allowed")
        await asyncio.get_running_loop().sock_sendall(
            conn,
            (
                f"HTTP/1.1 200 Refreshed\r\nCport-Connection: {conn_id}\r\n"
                f"Cport-Expires-At: {cred.expires_at:.0f}\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
        )

    async def _serve(self, conn: socket.socket, client: tuple[str, int]) -> object:
        agent = self.agent
        loop = asyncio.get_running_loop()
        peer = ""
        identity = 0
        workload = ""
        port = 0
        cred: VerifiedIdentity | None = None
        upstream: socket.socket | None = None
        reserved: int | None = None
        try:
            self._caps(None)
            try:
                req = await read_connect_head(
                    conn,
                    max_bytes=self.limits.max_header_bytes,
                    timeout=self.limits.handshake_timeout,
                )
            except ProxyRequestError as exc:
                raise Refused(exc.status, exc.code, exc.message) from None
            port = req.port
            workload = req.host
            if req.bearer is None:
                raise Refused(407, "missing-credential", "send Proxy-Authorization: Bearer <token>")
            cred = await agent.verify(req.bearer)
            peer = cred.subject + (f" via {cred.actor}" if cred.actor else "")
            refresh = req.headers.get("cport-refresh")
            if refresh is not None:
                await self._refresh(conn, refresh, cred)
                return None
            grant = req.headers.get("cport-grant")  # `cport connect --grant`: no tunnel
            w, up_addr = self._target(req.host, req.port)
            workload = w.ref
            if grant is not None:
                from cport.agent._ebpf import direct_target

                up_addr = direct_target(agent, grant, w, req.port)
            identity, table = await agent.identity_for(cred.labels)
            rev = agent.revocations.match(cred, identity, time.time())
            if rev is not None:
                raise Refused(
                    403, "revoked", f"revoked ({rev.kind} {rev.value})", revocation=rev.id
                )
            if grant is None:  # a grant holds no connection: no slot to take
                self._caps(identity)
                reserved = identity
            attempt = Attempt(
                identity, cred.labels, peer, cred, w, _workload_id(table, w), req.port, client
            )
            outcome = self._decide(attempt)
            if not outcome.allowed:
                denial: dict[str, object] = {
                    "verdict": outcome.decision.verdict.value,
                    "reason": outcome.decision.reason.value,
                    "explanationId": outcome.explanation_id,
                    "message": f"{peer} may not reach {w.ref}:{req.port}",
                    "policies": list(outcome.policy_names),
                    "explain": f"cport explain --id {outcome.explanation_id}",
                }
                await loop.sock_sendall(
                    conn,
                    http_response(
                        403,
                        body=denial,
                        headers={
                            "Cport-Reason": outcome.decision.reason.value,
                            "Cport-Explanation": outcome.explanation_id,
                        },
                    ),
                )
                return None
            if grant is not None:
                from cport.agent._ebpf import serve_grant

                await serve_grant(self, conn, attempt, outcome, up_addr)
                return None
            try:
                upstream = await open_upstream(up_addr, self.limits.connect_timeout)
            except OSError as exc:
                # Allowed, then not reached: the attempt's record is its close event, not a
                # second decision.
                self._record_close(attempt, outcome, up_addr, "upstream-unreachable")
                await loop.sock_sendall(
                    conn,
                    http_response(
                        502,
                        body={
                            "reason": "upstream-unreachable",
                            "message": f"cannot reach {w.ref}:{req.port} at {up_addr}: {exc}",
                        },
                        headers={"Cport-Reason": "upstream-unreachable"},
                    ),
                )
                return None
            conn_id = secrets.token_hex(8)
            await loop.sock_sendall(
                conn,
                (
                    "HTTP/1.1 200 Connection established\r\n"
                    f"Cport-Connection: {conn_id}\r\n"
                    f"Cport-Expires-At: {cred.expires_at:.0f}\r\n\r\n"
                ).encode(),
            )
            up = upstream

            async def go(counters: RelayCounters) -> object:
                return await relay(conn, up, initial_up=req.leftover, counters=counters)

            await self._run_connection(attempt, outcome, up_addr, go, upstream, conn_id)
            upstream = None
        except Refused as exc:
            self._refused_record(client, exc, peer, identity, workload, port, cred)
            with contextlib.suppress(OSError):
                await loop.sock_sendall(conn, exc.response())
        except CportError as exc:  # a bad credential (407), or any other refusal with its code
            status = 407 if isinstance(exc, CredentialError) else 403
            refused = Refused(status, exc.code, exc.message)
            self._refused_record(client, refused, peer, identity, workload, port)
            with contextlib.suppress(OSError):
                await loop.sock_sendall(conn, refused.response())
        except (OSError, asyncio.CancelledError):
            pass
        except Exception:  # never let one connection take the gateway down
            log.exception("gateway connection from %s failed", client)
        finally:
            if reserved is not None:
                agent.release(reserved)
            if upstream is not None:
                upstream.close()
            with contextlib.suppress(OSError):
                conn.close()
        return None


class PortListener(_Front):
    """Fronts one workload port. Peers: by source address, or by SPIFFE SVID over mTLS."""

    enforcer = "proxy-listener"

    def __init__(self, agent: Agent, settings: ListenerSettings) -> None:
        super().__init__(agent, settings.listen, settings.limits)
        self.settings = settings
        self._ssl: ssl.SSLContext | None = None
        if settings.identify == "spiffe":
            assert settings.tls_cert is not None and settings.tls_key is not None
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.check_hostname = False
            for bundle in agent.config.identity.spiffe_bundles.values():
                for cert in bundle.roots:
                    from cryptography.hazmat.primitives.serialization import Encoding

                    ctx.load_verify_locations(cadata=cert.public_bytes(Encoding.PEM).decode())
            self._ssl = ctx

    def _workload(self) -> tuple[Workload, HostPort]:
        t = self.settings.target
        try:
            w = self.agent.state.bundle.inventory.find(t.namespace, t.name)
        except CportError:
            raise Refused(
                0, "workload-removed", f"{t.namespace}/{t.name} is not in the inventory"
            ) from None
        up = self.settings.upstream
        if up is None:
            if not w.addresses:
                raise Refused(502, "no-upstream", f"{w.ref} has no address and no upstream")
            up = HostPort(w.addresses[0], t.port)
        return w, up

    def _peer_by_address(self, client: tuple[str, int]) -> tuple[int, Labels, str]:
        state = self.agent.state
        ep = resolve_endpoint(state.table, state.bundle.inventory, f"cidr:{client[0]}")
        return ep.identity, ep.labels, ep.display

    async def _serve(self, conn: socket.socket, client: tuple[str, int]) -> object:
        agent = self.agent
        t = self.settings.target
        peer = client[0]
        identity = 0
        cred: VerifiedIdentity | None = None
        upstream: socket.socket | None = None
        writer: asyncio.StreamWriter | None = None
        reserved: int | None = None
        try:
            self._caps(None)
            w, up_addr = self._workload()
            reader: asyncio.StreamReader | None = None
            if self._ssl is not None:
                try:
                    reader, writer = await asyncio.wait_for(
                        _accept_tls(conn, self._ssl), self.limits.handshake_timeout
                    )
                except (TimeoutError, ssl.SSLError, OSError) as exc:
                    raise Refused(
                        0, "tls-handshake-failed", f"TLS handshake failed: {exc}"
                    ) from None
                assert writer is not None
                der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
                if der is None:
                    raise Refused(0, "missing-credential", "no client certificate (SVID)")
                # OpenSSL has checked the chain against the bundle roots; cport's SPIFFE
                # rules (one URI SAN, not a CA, trust domain of the ID) run on the leaf.
                cred = agent.verify_svid(der)
                peer = cred.subject
                identity, table = await agent.identity_for(cred.labels)
                labels = cred.labels
            else:
                identity, labels, peer = self._peer_by_address(client)
                table = agent.state.table
            rev = agent.revocations.match(cred, identity, time.time())
            if rev is not None:
                raise Refused(0, "revoked", f"revoked ({rev.kind} {rev.value})")
            self._caps(identity)
            reserved = identity
            attempt = Attempt(
                identity, labels, peer, cred, w, _workload_id(table, w), t.port, client
            )
            outcome = self._decide(attempt)
            if not outcome.allowed:
                return None  # the client sees the connection closed; observe shows why
            try:
                upstream = await open_upstream(up_addr, self.limits.connect_timeout)
            except OSError:
                self._record_close(attempt, outcome, up_addr, "upstream-unreachable")
                return None
            up = upstream
            owned: socket.socket | None = upstream
            if reader is not None and writer is not None:
                ur, uw = await asyncio.open_connection(sock=up)
                owned = None  # the stream transport owns the socket from here on
                r, wr = reader, writer

                async def go(counters: RelayCounters) -> object:
                    try:
                        return await relay_streams(r, wr, ur, uw, counters=counters)
                    except asyncio.CancelledError:
                        uw.transport.abort()  # a revoked peer's unsent bytes are dropped
                        raise
                    finally:
                        uw.close()
            else:

                async def go(counters: RelayCounters) -> object:
                    return await relay(conn, up, counters=counters)

            upstream = None
            await self._run_connection(attempt, outcome, up_addr, go, owned)
        except Refused as exc:
            self._refused_record(
                client, exc, peer, identity, f"{t.namespace}/{t.name}", t.port, cred
            )
        except CportError as exc:  # a bad SVID, a vanished workload, …: refused with its code
            self._refused_record(
                client,
                Refused(0, exc.code, exc.message),
                peer,
                identity,
                f"{t.namespace}/{t.name}",
                t.port,
                cred,
            )
        except (OSError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("listener connection from %s failed", client)
        finally:
            if reserved is not None:
                agent.release(reserved)
            if upstream is not None:
                upstream.close()
            if writer is not None:
                # The TLS transport owns `conn`: it closes it after its shutdown. Closing the
                # descriptor under it would let a new socket reuse the number while the
                # transport still has it registered with the event loop.
                writer.close()
            else:
                with contextlib.suppress(OSError):
                    conn.close()
        return None


async def _accept_tls(
    conn: socket.socket, ctx: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn, ssl=ctx)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


__all__ = ["Gateway", "PortListener", "Refused", "listen_socket", "open_upstream"]
