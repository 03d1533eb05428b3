"""`cport connect`: a local listener that tunnels each connection through a cport gateway
(like ``pomerium-cli tcp``), so stock clients (psql, ssh, curl) reach a workload port with
the user's credential.

The token comes from a file (read again whenever a fresh one is needed, so rotation works)
or a command (run again before the token in use expires). Long sessions survive expiry: the
gateway names each tunnel (``Cport-Connection``) and, before the token expires, the connector
presents a fresh token for it on a side request (``Cport-Refresh``); the gateway accepts it
only for the same identity, and extends the tunnel's life to the new expiry.

With ``--grant`` (:class:`Granter`) there is no tunnel: the gateway decides the attempt,
then grants this machine's address (as the gateway sees it) in the kernel's eBPF datapath
for the credential's identity, so clients connect to the workload directly; the grant is
asked for again with a fresh token before it expires.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import shlex
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cport.errors import CportError

log = logging.getLogger("cport.connect")


def token_expiry(token: str) -> tuple[float | None, float | None]:
    """(iat, exp) read from a JWT's payload *without verifying it* — only to schedule the
    refresh; the gateway verifies."""
    parts = token.split(".")
    if len(parts) != 3:
        return None, None
    try:
        pad = "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + pad))
    except (ValueError, TypeError):
        return None, None
    iat = claims.get("iat") if isinstance(claims, dict) else None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return (
        float(iat) if isinstance(iat, (int, float)) else None,
        float(exp) if isinstance(exp, (int, float)) else None,
    )


class TokenSource:
    """The user's credential, fetched again when the one held is near its expiry."""

    def __init__(
        self,
        *,
        file: Path | None = None,
        command: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (file is None) == (command is None):
            raise CportError(
                "give one of a token file or a token command", code="invalid-token-input"
            )
        self.file = file
        self.command = command
        self.clock = clock
        self._token: str | None = None

    def _fetch(self) -> str:
        if self.file is not None:
            try:
                text = self.file.read_text().strip()
            except OSError as exc:
                raise CportError(
                    f"cannot read token file {self.file}: {exc.strerror}",
                    code="invalid-token-input",
                ) from exc
        else:
            assert self.command is not None
            try:
                out = subprocess.run(
                    shlex.split(self.command),
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise CportError(
                    f"token command failed: {exc}", code="invalid-token-input"
                ) from exc
            if out.returncode != 0:
                raise CportError(
                    f"token command exited {out.returncode}: {out.stderr.strip()[:200]}",
                    code="invalid-token-input",
                )
            text = out.stdout.strip()
        if text[:7].lower() == "bearer ":
            text = text[7:].strip()
        if not text:
            raise CportError("the token source gave an empty token", code="invalid-token-input")
        return text

    def refresh_at(self, token: str) -> float | None:
        """When to replace `token`: three quarters into its life, and never later than 30 s
        before it expires; None when it does not say."""
        iat, exp = token_expiry(token)
        if exp is None:
            return None
        start = iat if iat is not None and iat < exp else self.clock()
        return min(start + 0.75 * (exp - start), exp - min(30.0, 0.25 * (exp - start)))

    def current(self) -> str:
        tok = self._token
        if tok is not None:
            due = self.refresh_at(tok)
            if due is None or self.clock() < due:
                return tok
        self._token = self._fetch()
        return self._token


@dataclass
class GatewayReply:
    status: int
    headers: dict[str, str]
    body: dict[str, object]
    leftover: bytes


async def _read_reply(
    sock: socket.socket, timeout: float, *, body_on_success: bool = False
) -> GatewayReply:
    loop = asyncio.get_running_loop()
    buf = b""
    deadline = loop.time() + timeout
    while b"\r\n\r\n" not in buf:
        if len(buf) > 65536:
            raise CportError("the gateway's reply head is too large", code="bad-gateway-reply")
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise CportError("the gateway did not answer in time", code="gateway-timeout")
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), remaining)
        if not chunk:
            raise CportError("the gateway closed the connection", code="bad-gateway-reply")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise CportError(
            f"unexpected gateway reply {lines[0]!r}", code="bad-gateway-reply"
        ) from None
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    body: dict[str, object] = {}
    if status != 200 or body_on_success:
        length = int(headers.get("content-length", "0") or 0)
        while len(rest) < length:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout)
            if not chunk:
                break
            rest += chunk
        with contextlib.suppress(ValueError):
            doc = json.loads(rest[:length] or b"{}")
            body = doc if isinstance(doc, dict) else {}
        rest = b""
    return GatewayReply(status, headers, body, rest)


def authority(target: str) -> str:
    """``NAMESPACE/WORKLOAD:PORT`` → the CONNECT authority ``WORKLOAD.NAMESPACE:PORT``."""
    ref, _, port = target.rpartition(":")
    ns, slash, name = ref.partition("/")
    if not slash or not ns or not name or not port.isdigit():
        raise CportError(f"--to {target!r} is not NAMESPACE/WORKLOAD:PORT", code="invalid-target")
    return f"{name}.{ns}:{port}"


class Connector:
    def __init__(
        self,
        target: str,
        gateway: tuple[str, int],
        listen: tuple[str, int],
        tokens: TokenSource,
        *,
        timeout: float = 10.0,
        on_event: Callable[[str, dict[str, object]], None] | None = None,
    ) -> None:
        self.authority = authority(target)
        self.gateway = gateway
        self.listen = listen
        self.tokens = tokens
        self.timeout = timeout
        self.on_event = on_event or (lambda kind, doc: None)
        self._server: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.getsockname()[:2]
        return host, port

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.listen[0] else socket.AF_INET
        srv = socket.socket(family, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(self.listen)
        srv.listen(512)
        srv.setblocking(False)
        self._server = srv

    async def serve_forever(self) -> None:
        assert self._server is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                conn, _ = await loop.sock_accept(self._server)
                conn.setblocking(False)
                task = asyncio.create_task(self._handle(conn))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()

    async def _token(self) -> str:
        return await asyncio.get_running_loop().run_in_executor(None, self.tokens.current)

    async def _open(self, token: str, extra: str = "") -> tuple[socket.socket, GatewayReply]:
        from cport.agent._gateway import open_upstream
        from cport.config import HostPort

        sock = await open_upstream(HostPort(*self.gateway), self.timeout)
        loop = asyncio.get_running_loop()
        head = (
            f"CONNECT {self.authority} HTTP/1.1\r\nHost: {self.authority}\r\n"
            f"Proxy-Authorization: Bearer {token}\r\n{extra}\r\n"
        )
        try:
            await loop.sock_sendall(sock, head.encode())
            reply = await _read_reply(sock, self.timeout)
        except BaseException:
            sock.close()
            raise
        return sock, reply

    async def _handle(self, client: socket.socket) -> None:
        from cport.proxy._relay import relay

        loop = asyncio.get_running_loop()
        up: socket.socket | None = None
        refresher: asyncio.Task[None] | None = None
        try:
            token = await self._token()
            up, reply = await self._open(token)
            if reply.status != 200:
                self.on_event("refused", {"status": reply.status, **reply.body})
                return
            conn_id = reply.headers.get("cport-connection", "")
            self.on_event("open", {"connection": conn_id})
            if reply.leftover:
                await loop.sock_sendall(client, reply.leftover)
            if conn_id:
                refresher = asyncio.create_task(self._keep_fresh(conn_id, token))
            result = await relay(client, up)
            self.on_event(
                "close",
                {
                    "connection": conn_id,
                    "endedBy": result.ended_by,
                    "bytesUp": result.bytes_up,
                    "bytesDown": result.bytes_down,
                },
            )
        except CportError as exc:
            self.on_event("error", {"reason": exc.code, "message": exc.message})
        except OSError as exc:
            self.on_event("error", {"reason": "gateway-unreachable", "message": str(exc)})
        finally:
            if refresher is not None:
                refresher.cancel()
            if up is not None:
                up.close()
            client.close()

    async def _keep_fresh(self, conn_id: str, token: str) -> None:
        """Present a fresh token for the tunnel before the one it runs on expires."""
        while True:
            due = self.tokens.refresh_at(token)
            if due is None:
                return
            await asyncio.sleep(max(0.05, due - time.time()))
            try:
                fresh = await self._token()
                if fresh == token:  # the source has nothing newer yet: ask again shortly
                    await asyncio.sleep(1.0)
                    continue
                sock, reply = await self._open(fresh, f"Cport-Refresh: {conn_id}\r\n")
                sock.close()
            except (CportError, OSError) as exc:
                self.on_event("refresh-failed", {"connection": conn_id, "message": str(exc)})
                await asyncio.sleep(1.0)
                continue
            if reply.status == 200:
                token = fresh
                self.on_event("refreshed", {"connection": conn_id, **reply.body})
            else:
                self.on_event(
                    "refresh-failed", {"connection": conn_id, "status": reply.status, **reply.body}
                )
                await asyncio.sleep(1.0)


#: Gateway refusals worth asking again about (the agent is busy or catching up), not final.
_TRANSIENT = frozenset(
    {"grant-not-realised", "audit-unavailable", "too-many-connections", "handshake-timeout"}
)


class GrantRefused(CportError):
    """The gateway refused a grant: `code` is its reason, `status` the HTTP status (0: the
    gateway could not be reached or did not answer), `body` its JSON (explanation id, …)."""

    def __init__(
        self, message: str, *, code: str, status: int = 0, body: dict[str, object] | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.body = body or {}

    @property
    def transient(self) -> bool:
        """Worth asking again: the gateway is busy, catching up or out of reach."""
        return self.status == 0 or self.status >= 500 or self.code in _TRANSIENT

    def to_json(self) -> dict[str, object]:
        extra = {k: v for k, v in self.body.items() if k not in ("reason", "message")}
        return {**super().to_json(), "status": self.status, **extra}


@dataclass(frozen=True, slots=True)
class DirectGrant:
    """What the gateway granted: `address` (this machine, as the gateway saw it) may reach
    `connect_to` directly as `identity` until `expires_at`."""

    identity: int
    address: str
    connect_to: str
    expires_at: float
    doc: dict[str, object]


class Granter:
    """`cport connect --grant`: ask the gateway (``CONNECT`` with ``Cport-Grant: direct``)
    to grant this machine's address for the credential's identity in the kernel, then ask
    again with a fresh token before each grant expires. :meth:`run` returns only by
    cancellation; a refusal raises :class:`CportError` with the gateway's reason code
    (transient ones — 5xx, an unreachable gateway after the first grant — are retried)."""

    def __init__(
        self,
        target: str,
        gateway: tuple[str, int],
        tokens: TokenSource,
        *,
        timeout: float = 10.0,
        retry: float = 1.0,
        on_event: Callable[[str, dict[str, object]], None] | None = None,
    ) -> None:
        self.authority = authority(target)
        self.gateway = gateway
        self.tokens = tokens
        self.timeout = timeout
        self.retry = retry
        self.on_event = on_event or (lambda kind, doc: None)
        self.current: DirectGrant | None = None

    async def request(self, token: str) -> DirectGrant:
        """One grant request; :class:`CportError` with the gateway's reason when refused
        (``status`` and the body in its fields), or ``gateway-unreachable``."""
        from cport.agent._gateway import open_upstream
        from cport.config import HostPort

        loop = asyncio.get_running_loop()
        head = (
            f"CONNECT {self.authority} HTTP/1.1\r\nHost: {self.authority}\r\n"
            f"Proxy-Authorization: Bearer {token}\r\nCport-Grant: direct\r\n\r\n"
        )
        try:
            sock = await open_upstream(HostPort(*self.gateway), self.timeout)
        except OSError as exc:
            raise GrantRefused(
                f"cannot reach the gateway {self.gateway[0]}:{self.gateway[1]}: {exc}",
                code="gateway-unreachable",
            ) from exc
        try:
            await loop.sock_sendall(sock, head.encode())
            reply = await _read_reply(sock, self.timeout, body_on_success=True)
        except OSError as exc:
            raise GrantRefused(f"the gateway failed: {exc}", code="gateway-unreachable") from exc
        except CportError as exc:  # no answer in time, or not HTTP
            raise GrantRefused(exc.message, code=exc.code) from exc
        finally:
            sock.close()
        if reply.status != 200:
            reason = str(reply.body.get("reason") or reply.headers.get("cport-reason") or "")
            message = str(reply.body.get("message") or f"the gateway answered {reply.status}")
            if reply.body.get("explanationId"):
                message += f" (see: cport explain --id {reply.body['explanationId']})"
            raise GrantRefused(
                message,
                code=reason or f"http-{reply.status}",
                status=reply.status,
                body=reply.body,
            )
        h = reply.headers
        try:
            return DirectGrant(
                int(h["cport-identity"]),
                h["cport-address"],
                str(reply.body.get("connectTo") or h.get("cport-connect-to", "")),
                float(h["cport-expires-at"]),
                reply.body,
            )
        except (KeyError, ValueError):
            raise CportError(
                "the gateway's 200 is not a grant (is it a cport gateway with Cport-Grant?)",
                code="bad-gateway-reply",
            ) from None

    async def _token(self) -> str:
        return await asyncio.get_running_loop().run_in_executor(None, self.tokens.current)

    async def run(self) -> None:
        token = await self._token()
        for attempt in range(3):  # a busy agent (5xx) gets two more tries; the rest is final
            try:
                self.current = await self.request(token)
                break
            except GrantRefused as exc:
                if exc.status < 500 or attempt == 2:
                    raise
                self.on_event("retry", {"reason": exc.code, "message": exc.message})
                await asyncio.sleep(self.retry)
        assert self.current is not None
        self.on_event("granted", self._doc(self.current))
        lapsed = False
        while True:
            grant = self.current
            due = self.tokens.refresh_at(token)
            if due is None:  # an opaque token: three quarters into the grant's life
                due = time.time() + 0.75 * max(0.0, grant.expires_at - time.time())
            await asyncio.sleep(max(0.05, due - time.time()))
            while True:
                if not lapsed and time.time() >= grant.expires_at:
                    lapsed = True
                    self.on_event("expired", self._doc(grant))
                fresh = await self._token()
                if fresh == token:  # the source has nothing newer yet: ask again shortly
                    await asyncio.sleep(self.retry)
                    continue
                try:
                    self.current = await self.request(fresh)
                except GrantRefused as exc:
                    if not exc.transient:
                        raise
                    self.on_event("retry", {"reason": exc.code, "message": exc.message})
                    await asyncio.sleep(self.retry)
                    continue
                token, lapsed = fresh, False
                self.on_event("regranted", self._doc(self.current))
                break

    @staticmethod
    def _doc(g: DirectGrant) -> dict[str, object]:
        return {
            **g.doc,
            "identity": g.identity,
            "address": g.address,
            "connectTo": g.connect_to,
            "expiresAt": g.expires_at,
        }


__all__ = [
    "Connector",
    "DirectGrant",
    "GatewayReply",
    "GrantRefused",
    "Granter",
    "TokenSource",
    "authority",
    "token_expiry",
]
