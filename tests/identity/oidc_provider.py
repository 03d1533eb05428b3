"""A real OpenID Provider on loopback for tests of cport's JWT verifier.

`OidcProvider` runs `node tests/identity/oidc/provider.mjs` (panva's `oidc-provider` 9.x) on
127.0.0.1, with signing keys generated here at test time (never stored in the repository): the
test decides which keys the provider holds and in which order, so key rotation, unknown `kid`s and
provider outages are all real. Tokens come from a real `client_credentials` request with an RFC 8707
`resource` parameter and are JWT access tokens (`typ: at+jwt`) carrying `iss`, `sub`, `aud`,
`exp`, `iat`, `jti`, `client_id`, `scope` (when granted), `groups`, `email` and, for the `agent`
client or the `delegated` scope, `act`. See provider.mjs for the provider side.

Needs `node` and `tests/identity/oidc/node_modules` (run `scripts/setup-oidc`) and the
`cryptography` package. Usage::

    @pytest.fixture
    def oidc() -> Iterator[OidcProvider]:
        with OidcProvider(alg="ES256") as provider:
            yield provider

    def test_verifies(oidc: OidcProvider) -> None:
        token = oidc.token(scope="read")
        ...                                  # verify against oidc.issuer / oidc.jwks_uri
        oidc.rotate(keep_old=False)          # restart with a fresh key only
        oidc.stop(); ...; oidc.start()       # outage and recovery on the same port
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = [
    "AGENT_CLIENT",
    "DEFAULT_AUDIENCE",
    "DEFAULT_CLIENT",
    "DEFAULT_RESOURCE",
    "Alg",
    "OidcProvider",
    "OidcProviderError",
    "OidcProviderUnavailable",
    "OidcTokenError",
    "SigningKey",
    "free_loopback_port",
    "http_get_json",
]

Alg = Literal["ES256", "RS256", "EdDSA"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

NODE_PROJECT = Path(__file__).resolve().parent / "oidc"
PROVIDER_SCRIPT = NODE_PROJECT / "provider.mjs"
SETUP_SCRIPT = "scripts/setup-oidc"

DEFAULT_CLIENT = "cport-test"
AGENT_CLIENT = "agent"
DEFAULT_AUDIENCE = "cport"
DEFAULT_RESOURCE = "urn:cport:test"

READY_TIMEOUT = 10.0
STOP_GRACE = 5.0
HTTP_TIMEOUT = 5.0

# Loopback only: never let an http(s)_proxy variable route test traffic elsewhere.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class OidcProviderError(RuntimeError):
    """The provider could not be started or stopped."""


class OidcProviderUnavailable(OidcProviderError):
    """node or the Node project's dependencies are missing."""


class OidcTokenError(RuntimeError):
    """The token endpoint refused a request; `status` and `body` are the provider's answer."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"token request failed: HTTP {status}: {body}")
        self.status = status
        self.body = body


def _b64url_uint(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode("ascii")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class SigningKey:
    """One provider key: the private key stays in the test process and the provider's key file."""

    kid: str
    alg: Alg
    private_key: PrivateKey

    @classmethod
    def generate(cls, alg: Alg) -> SigningKey:
        key: PrivateKey
        if alg == "ES256":
            key = ec.generate_private_key(ec.SECP256R1())
        elif alg == "RS256":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "EdDSA":
            key = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(f"unsupported alg {alg!r} (ES256, RS256 or EdDSA)")
        return cls(kid=f"{alg.lower()}-{secrets.token_hex(6)}", alg=alg, private_key=key)

    @property
    def public_jwk(self) -> dict[str, str]:
        """The public JWK, as the provider publishes it (plus `alg` and `use`)."""
        return {k: v for k, v in self.private_jwk.items() if k in _PUBLIC_MEMBERS}

    @property
    def private_jwk(self) -> dict[str, str]:
        jwk: dict[str, str] = {"kid": self.kid, "alg": self.alg, "use": "sig"}
        key = self.private_key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            numbers = key.private_numbers()
            jwk |= {
                "kty": "EC",
                "crv": "P-256",
                "x": _b64url_uint(numbers.public_numbers.x, 32),
                "y": _b64url_uint(numbers.public_numbers.y, 32),
                "d": _b64url_uint(numbers.private_value, 32),
            }
        elif isinstance(key, rsa.RSAPrivateKey):
            rsa_numbers = key.private_numbers()
            public = rsa_numbers.public_numbers
            jwk |= {
                "kty": "RSA",
                "n": _b64url_uint(public.n),
                "e": _b64url_uint(public.e),
                "d": _b64url_uint(rsa_numbers.d),
                "p": _b64url_uint(rsa_numbers.p),
                "q": _b64url_uint(rsa_numbers.q),
                "dp": _b64url_uint(rsa_numbers.dmp1),
                "dq": _b64url_uint(rsa_numbers.dmq1),
                "qi": _b64url_uint(rsa_numbers.iqmp),
            }
        else:
            raw = serialization.Encoding.Raw
            jwk |= {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": _b64url(key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)),
                "d": _b64url(
                    key.private_bytes(
                        raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
                    )
                ),
            }
        return jwk


_PUBLIC_MEMBERS = frozenset({"kid", "alg", "use", "kty", "crv", "x", "y", "n", "e"})


def free_loopback_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get_json(url: str, timeout: float = HTTP_TIMEOUT) -> Any:
    """GET a JSON document without any proxy (the provider lives on loopback)."""
    with _OPENER.open(url, timeout=timeout) as response:
        return json.load(response)


class OidcProvider:
    """A running (after `start()` or `with`) oidc-provider process on 127.0.0.1.

    The port is chosen on the first start and kept for the object's life, so `stop()` then
    `start()` brings the same issuer back. `close()` (or leaving the `with` block) stops the
    process and deletes the temporary directory holding the private keys.
    """

    def __init__(
        self,
        *,
        alg: Alg = "ES256",
        ttl: int = 300,
        audience: str = DEFAULT_AUDIENCE,
        resource: str = DEFAULT_RESOURCE,
        secret: str | None = None,
        claims: dict[str, dict[str, Any]] | None = None,
        port: int | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        """`claims` maps a client_id to the extra claims its tokens carry, replacing that
        client's defaults (a new client_id becomes a further client with the same secret)."""
        self.alg: Alg = alg
        self.ttl = ttl
        self.audience = audience
        self.resource = resource
        self.secret = secret if secret is not None else secrets.token_urlsafe(24)
        self.claims = claims
        self.ready_timeout = ready_timeout
        self.keys: list[SigningKey] = [SigningKey.generate(alg)]
        self._port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._starts = 0

    # -- properties ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            self._port = free_loopback_port()
        return self._port

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def jwks_uri(self) -> str:
        """The provider's jwks_uri (oidc-provider's default route, as discovery advertises it)."""
        return f"{self.issuer}/jwks"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    @property
    def kid(self) -> str:
        """The kid new tokens are signed with (the first key)."""
        return self.keys[0].kid

    @property
    def public_jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [key.public_jwk for key in self.keys]}

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start node on `port` and wait for its READY line; raise with node's output if not."""
        if self.running:
            raise OidcProviderError(f"provider already running (pid {self.pid})")
        self._reap()
        node = _check_node()
        workdir = self._workdir()
        keys_file = workdir / "jwks.json"
        _write_private(keys_file, {"keys": [key.private_jwk for key in self.keys]})
        argv = [
            node,
            str(PROVIDER_SCRIPT),
            f"--port={self.port}",
            f"--issuer={self.issuer}",
            f"--keys={keys_file}",
            f"--secret={self.secret}",
            f"--alg={self.alg}",
            f"--ttl={self.ttl}",
            f"--audience={self.audience}",
            f"--resource={self.resource}",
        ]  # fmt: skip
        if self.claims is not None:
            claims_file = workdir / "claims.json"
            _write_private(claims_file, self.claims)
            argv += [f"--claims={claims_file}"]

        self._starts += 1
        out_path = workdir / f"stdout.{self._starts}.log"
        err_path = workdir / f"stderr.{self._starts}.log"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            self._proc = subprocess.Popen(
                argv,
                cwd=NODE_PROJECT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # a ^C in the terminal reaches pytest, not node
            )
        ready = f"READY {self.issuer}"
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if ready in out_path.read_text(errors="replace").splitlines():
                return self
            code = self._proc.poll()
            if code is not None or time.monotonic() > deadline:
                self.stop()
                why = f"exited with {code}" if code is not None else "timed out"
                raise OidcProviderError(
                    f"oidc provider {why} before {ready!r} ({self.ready_timeout:g} s)\n"
                    f"command: {' '.join(argv[:2])} --port {self.port} ...\n"
                    f"stdout:\n{out_path.read_text(errors='replace')}"
                    f"stderr:\n{err_path.read_text(errors='replace')}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM the node process (its own pid only), SIGKILL after 5 s; always reap it."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_GRACE)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            self._reap()

    def close(self) -> None:
        """Stop the provider and delete the temporary key files."""
        try:
            self.stop()
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def rotate(self, new_alg: Alg | None = None, keep_old: bool = True) -> SigningKey:
        """Put a fresh key first (new tokens use it); keep the previous keys after it, or drop
        them. A running provider is restarted on the same port; a stopped one stays stopped.
        `new_alg` also switches the algorithm new tokens are signed with."""
        alg = new_alg or self.alg
        key = SigningKey.generate(alg)
        was_running = self.running
        self.stop()
        self.alg = alg
        self.keys = [key, *self.keys] if keep_old else [key]
        if was_running:
            self.start()
        return key

    def stderr(self) -> str:
        """What node wrote to stderr during the latest start."""
        if self._dir is None or self._starts == 0:
            return ""
        return (self._dir / f"stderr.{self._starts}.log").read_text(errors="replace")

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Last resort against a leaked node process; close() is the supported way.
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        workdir = getattr(self, "_dir", None)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    # -- tokens ----------------------------------------------------------------------------------

    def token_response(
        self,
        scope: str | None = None,
        client: str = DEFAULT_CLIENT,
        *,
        resource: str | None = None,
        secret: str | None = None,
    ) -> dict[str, Any]:
        """The token endpoint's JSON answer to a client_credentials request (client_secret_basic).

        `resource=""` leaves the parameter out, which gets an opaque (non-JWT) token."""
        form = {"grant_type": "client_credentials"}
        resource = self.resource if resource is None else resource
        if resource:
            form["resource"] = resource
        if scope:
            form["scope"] = scope
        user = urllib.parse.quote(client, safe="")
        password = urllib.parse.quote(self.secret if secret is None else secret, safe="")
        basic = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        request = urllib.request.Request(
            self.token_endpoint,
            data=urllib.parse.urlencode(form).encode("ascii"),
            headers={
                "Authorization": f"Basic {basic}",
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
            method="POST",
        )
        try:
            with _OPENER.open(request, timeout=HTTP_TIMEOUT) as response:
                answer: dict[str, Any] = json.load(response)
                return answer
        except urllib.error.HTTPError as error:
            with error:
                body = error.read().decode(errors="replace")
            raise OidcTokenError(error.code, body) from None

    def token(
        self,
        scope: str | None = None,
        client: str = DEFAULT_CLIENT,
        *,
        resource: str | None = None,
    ) -> str:
        """A fresh access token (a JWT, unless `resource=""`)."""
        token: str = self.token_response(scope, client, resource=resource)["access_token"]
        return token

    # -- internals -------------------------------------------------------------------------------

    def _workdir(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="cport-oidc-"))
        return self._dir

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def _write_private(path: Path, document: object) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle)


def _check_node() -> str:
    node = shutil.which("node")
    if node is None:
        raise OidcProviderUnavailable(
            f"node is not installed; run {SETUP_SCRIPT} (it installs nodejs and npm as root on "
            "Debian) or install Node.js >= 20.19"
        )
    if not (NODE_PROJECT / "node_modules" / "oidc-provider" / "package.json").is_file():
        raise OidcProviderUnavailable(
            f"{NODE_PROJECT / 'node_modules'} is missing oidc-provider; run {SETUP_SCRIPT}"
        )
    return node
