"""The embedded quickstart: `cport up` with no configuration.

DEVELOPMENT ONLY. It runs the bundled example estate (package data under
``cport/agent/quickstart``) with every workload port served by a small local service on a
loopback port, a development OpenID issuer inside the agent (discovery and JWKS under
``/dev-issuer`` on the API's loopback port; tokens for the demo users from
``cport dev token USER``), the CONNECT gateway, and SQLite audit in ``./.cport/``. The
issuer's key is generated on first use and kept in ``./.cport/dev-issuer.pem``; anyone who
can read that file can mint tokens, which is why the quickstart binds only to loopback and
must never front anything real.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import os
import secrets
import sys
import time
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cport.config import (
    AgentSettings,
    ApiSettings,
    Config,
    GatewaySettings,
    HostPort,
    IdentitySettings,
    Target,
)
from cport.identity import IssuerConfig
from cport.model import load

if TYPE_CHECKING:
    from cport.agent._agent import Agent

ISSUER_NAME = "corp-okta"  # what the estate's policies call their OIDC issuer
AUDIENCE = "cport"
USERS: dict[str, dict[str, Any]] = {
    "alice": {"email": "alice@example.com", "groups": ["dba", "sre"]},
    "bob": {"email": "bob@example.com", "groups": ["developers"]},
}
DEFAULT_GATEWAY = "127.0.0.1:8443"
DEFAULT_API = "127.0.0.1:9464"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class DevIssuer:
    """A minimal OpenID issuer for the quickstart: one Ed25519 key, discovery, JWKS, and
    tokens for the demo users. Not for production."""

    def __init__(self, state_dir: Path, issuer_url: str) -> None:
        self.url = issuer_url
        path = state_dir / "dev-issuer.pem"
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), None)
            assert isinstance(key, ed25519.Ed25519PrivateKey)
            self.key = key
        else:
            self.key = ed25519.Ed25519PrivateKey.generate()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(
                    self.key.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                )
        raw = self.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.kid = hashlib.sha256(raw).hexdigest()[:16]
        self.jwk = {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64(raw),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }

    def mint(self, user: str, ttl: float = 600.0, actor: str | None = None) -> str:
        if user not in USERS:
            raise KeyError(f"unknown demo user {user!r}; one of {', '.join(USERS)}")
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": user,
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl),
            "jti": secrets.token_hex(8),
            **USERS[user],
        }
        if actor:
            claims["act"] = {"sub": actor}
        header = {"alg": "EdDSA", "typ": "JWT", "kid": self.kid}
        signing = (
            _b64(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64(json.dumps(claims, separators=(",", ":")).encode())
        )
        return signing + "." + _b64(self.key.sign(signing.encode()))

    def routes(self, app: web.Application) -> None:
        async def discovery(request: web.Request) -> web.Response:
            return web.json_response(
                {
                    "issuer": self.url,
                    "jwks_uri": self.url + "/jwks",
                    "id_token_signing_alg_values_supported": ["EdDSA"],
                    "subject_types_supported": ["public"],
                    "response_types_supported": ["id_token"],
                }
            )

        async def jwks(request: web.Request) -> web.Response:
            return web.json_response({"keys": [self.jwk]})

        async def token(request: web.Request) -> web.Response:
            body = await request.json()
            user = str(body.get("user", ""))
            if user not in USERS:
                return web.json_response(
                    {
                        "error": {
                            "code": "unknown-user",
                            "message": f"unknown demo user {user!r}; one of {', '.join(USERS)}",
                        }
                    },
                    status=404,
                )
            tok = self.mint(user, float(body.get("ttl", 600)), body.get("actor"))
            return web.json_response({"token": tok, "user": user, "devOnly": True})

        app.router.add_get("/dev-issuer/.well-known/openid-configuration", discovery)
        app.router.add_get("/dev-issuer/jwks", jwks)
        app.router.add_post("/v1/dev/token", token)


async def _serve_local(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str
) -> None:
    """A stand-in for a workload port: answers HTTP with a greeting, anything else with a
    banner and an echo."""
    try:
        try:
            first = await asyncio.wait_for(reader.read(65536), 0.3)
        except TimeoutError:
            first = b""
        if first.split(b" ", 1)[0] in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE"):
            body = f"hello from {name} (cport quickstart service)\n".encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            return
        writer.write(f"hello from {name} (cport quickstart echo service)\n".encode() + first)
        await writer.drain()
        for _ in range(1_000_000):
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def _host_port(text: str) -> HostPort:
    host, _, port = text.rpartition(":")
    return HostPort(host.strip("[]"), int(port))


async def run_quickstart(state_dir: Path = Path(".cport")) -> None:
    from cport.agent._agent import Agent

    root = Path(str(files("cport.agent") / "quickstart"))
    policies, inventory = root / "policies", root / "inventory"
    gateway = _host_port(os.environ.get("CPORT_QUICKSTART_GATEWAY", DEFAULT_GATEWAY))
    api = _host_port(os.environ.get("CPORT_QUICKSTART_API", DEFAULT_API))
    state_dir.mkdir(parents=True, exist_ok=True)
    bundle = load([policies, inventory])
    servers: list[asyncio.Server] = []
    upstreams: dict[Target, HostPort] = {}
    for w in bundle.inventory:
        for cp in w.ports:
            name = f"{w.ref}:{cp.port}"
            srv = await asyncio.start_server(
                functools.partial(_serve_local, name=name), "127.0.0.1", 0
            )
            servers.append(srv)
            upstreams[Target(w.namespace, w.name, cp.port)] = HostPort(
                "127.0.0.1", srv.sockets[0].getsockname()[1]
            )
    issuer_url = f"http://{api}/dev-issuer"
    dev = DevIssuer(state_dir, issuer_url)
    config = Config(
        path="<quickstart>",
        identity=IdentitySettings(
            issuers=[
                IssuerConfig(
                    name=ISSUER_NAME,
                    issuer=issuer_url,
                    audiences=(AUDIENCE,),
                    algorithms=("EdDSA",),
                    jwks_uri=issuer_url + "/jwks",
                )
            ]
        ),
        agent=AgentSettings(
            state_dir=state_dir,
            policies=(policies,),
            inventory=(inventory,),
            api=ApiSettings(socket=state_dir / "agent.sock", listen=api),
            gateway=GatewaySettings(listen=gateway, upstreams=upstreams),
        ),
    )
    agent = Agent(config)
    agent.api_hooks.append(dev.routes)
    agent.install_signal_handlers()
    agent.on_ready.append(lambda a: _print_welcome(a, gateway, issuer_url))
    try:
        await agent.run()
    finally:
        for srv in servers:
            srv.close()


def _print_welcome(agent: Agent, gateway: HostPort, issuer: str) -> None:
    sock = agent.settings.api_settings().socket
    users = ", ".join(f"{u} ({' '.join(d['groups'])})" for u, d in USERS.items())
    print(
        f"""
cport quickstart — DEVELOPMENT ONLY: the built-in issuer ({issuer}) is not for production.
  estate     the bundled example (cport ports payments/ledger-db -p … shows it); every
             workload port is a local service on loopback
  gateway    {gateway}  (HTTP CONNECT, Proxy-Authorization: Bearer <token>)
  API        {sock}  (cport status · observe · who · revoke)
  audit      {agent.settings.state_dir}/audit.db
  users      {users}

Try, in another terminal:
  cport dev token alice > alice.jwt; cport dev token bob > bob.jwt
  curl -p -x http://{gateway} --proxy-header "Proxy-Authorization: Bearer $(cat alice.jwt)" \\
       http://prometheus.monitoring:9090/        # allowed: alice is an SRE
  curl -p -x http://{gateway} --proxy-header "Proxy-Authorization: Bearer $(cat bob.jwt)" \\
       http://prometheus.monitoring:9090/        # 403, with the reason and an explanation id
  cport connect --to payments/ledger-db:5432 --via {gateway} --token-file alice.jwt \\
       --listen 127.0.0.1:15432                  # then: nc 127.0.0.1 15432
  cport observe --follow          cport who          cport revoke --identity alice
""",
        file=sys.stderr,
        flush=True,
    )


__all__ = ["USERS", "DevIssuer", "run_quickstart"]
