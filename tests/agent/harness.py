"""Test harness for the agent: a real `cport up` process, a real token issuer (JWKS over
loopback HTTP), real upstream services, and helpers to drive them.

Everything listens on 127.0.0.1 on ports the kernel picks; inventory addresses are
documentation-range (the gateway reaches workloads through configured upstreams)."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

CPORT = str(Path(sys.executable).parent / "cport")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Issuer:
    """An ES256 OpenID issuer: discovery and JWKS served on loopback, tokens minted here."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        nums = self.key.public_key().public_numbers()
        self.kid = secrets.token_hex(4)
        self.jwk = {
            "kty": "EC",
            "crv": "P-256",
            "kid": self.kid,
            "alg": "ES256",
            "use": "sig",
            "x": b64(nums.x.to_bytes(32, "big")),
            "y": b64(nums.y.to_bytes(32, "big")),
        }
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.endswith("/.well-known/openid-configuration"):
                    doc: dict[str, Any] = {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks"}
                elif self.path.endswith("/jwks"):
                    doc = {"keys": [issuer.jwk]}
                else:
                    self.send_error(404)
                    return
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def mint(
        self,
        sub: str,
        *,
        groups: list[str] | None = None,
        ttl: float = 600,
        jti: str | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload = {
            "iss": self.url,
            "aud": "cport",
            "sub": sub,
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl),
            "jti": jti or secrets.token_hex(8),
            "groups": groups or [],
            **claims,
        }
        header = {"alg": "ES256", "typ": "JWT", "kid": self.kid}
        signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
        der = self.key.sign(signing.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing + "." + b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class EchoServer:
    """A TCP upstream: sends a banner naming itself, then echoes; answers HTTP requests."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = int(self.sock.getsockname()[1])
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            first = b""
            with contextlib.suppress(TimeoutError):
                conn.settimeout(0.3)
                first = conn.recv(65536)
            conn.settimeout(30)
            if first.startswith(b"GET "):
                body = f"hello from {self.name}\n".encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
                return
            conn.sendall(f"hello from {self.name}\n".encode() + first)
            for _ in range(100_000):
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self.thread.join(2)


ESTATE_POLICIES = """\
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
metadata: {name: db-access, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  ingress:
    - from:
        - users: {issuer: test, claims: {groups: [dba]}}
      ports: [{port: 5432}]
      authentication: required
---
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
metadata: {name: web-access, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  ingress:
    - from:
        - users: {issuer: test}
      ports: [{port: 8080}]
"""

ESTATE_INVENTORY = """\
apiVersion: cport.dev/v1alpha1
kind: Workload
metadata: {name: db, namespace: shop, labels: {app: db}}
spec:
  addresses: [198.51.100.20]
  ports: [{name: postgres, port: 5432}]
---
apiVersion: cport.dev/v1alpha1
kind: Workload
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  addresses: [198.51.100.10]
  ports: [{name: http, port: 8080}]
---
apiVersion: cport.dev/v1alpha1
kind: Workload
metadata: {name: vault, namespace: shop, labels: {app: vault}}
spec:
  addresses: [198.51.100.30]
  ports: [{name: api, port: 8200}]
"""


class AgentProcess:
    """`cport up --config …` as a child process in `root`, with its API socket."""

    def __init__(
        self,
        root: Path,
        issuer: Issuer,
        upstreams: dict[str, int],
        *,
        limits: dict[str, Any] | None = None,
        extra: str = "",
        policies: str = ESTATE_POLICIES,
        inventory: str = ESTATE_INVENTORY,
    ) -> None:
        self.root = root
        self.issuer = issuer
        (root / "policies").mkdir(parents=True, exist_ok=True)
        (root / "inventory").mkdir(parents=True, exist_ok=True)
        (root / "policies" / "shop.yaml").write_text(policies)
        (root / "inventory" / "shop.yaml").write_text(inventory)
        self.gateway_port = free_port()
        self.socket = root / "state" / "agent.sock"
        ups = "\n".join(f"    {k}: 127.0.0.1:{v}" for k, v in upstreams.items())
        lim = json.dumps(limits or {})
        self.config = root / "cport.yaml"
        self.config.write_text(f"""\
node: test-node
stateDir: state
policies: [policies]
inventory: [inventory]
recheckInterval: 0.1
gateway:
  listen: 127.0.0.1:{self.gateway_port}
  limits: {lim}
  upstreams:
{ups}
identity:
  issuers:
    - name: test
      issuer: {issuer.url}
      audiences: [cport]
      jwksUri: {issuer.url}/jwks
{extra}""")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "agent.log"

    def start(self, timeout: float = 20.0) -> AgentProcess:
        self._log = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [CPORT, "up", "--config", str(self.config)],
            cwd=self.root,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cport up exited {self.proc.returncode}:\n{self.logs()}")
            if self.socket.exists():
                with contextlib.suppress(httpx.HTTPError):
                    if self.api("GET", "/readyz").status_code == 200:
                        return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"cport up not ready in {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://cport", timeout=10
        ) as c:
            return c.request(method, path, **kwargs)

    def cli(
        self, *args: str, check: bool = False, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [CPORT, *args, "--socket", str(self.socket)],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"cport {' '.join(args)}: {out.returncode}\n{out.stderr}")
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        code = self.proc.returncode
        self.proc = None
        return code

    def connect_tunnel(
        self, target: str, token: str, *, timeout: float = 10
    ) -> tuple[socket.socket, bytes]:
        """CONNECT through the gateway; returns the socket and the reply head+body."""
        s = socket.create_connection(("127.0.0.1", self.gateway_port), timeout=timeout)
        s.sendall(
            f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
            f"Proxy-Authorization: Bearer {token}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        return s, head


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


@contextlib.contextmanager
def running(agent: AgentProcess) -> Iterator[AgentProcess]:
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


def env_without_proxy() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return env


# -- additions for the stock-client, listener and quickstart tests -----------------------------


def issuer_key_pem(issuer: Issuer) -> bytes:
    """The issuer's private key as PKCS#8 PEM (for a token command running in another
    process)."""
    from cryptography.hazmat.primitives import serialization

    return issuer.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


_TOKEN_SCRIPT = '''\
"""Print a fresh ES256 token for {sub!r} (a cport test's --token-command)."""
import base64, json, secrets, time
from pathlib import Path
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

key = serialization.load_pem_private_key(Path({key!r}).read_bytes(), None)
now = int(time.time())
payload = {{"iss": {iss!r}, "aud": "cport", "sub": {sub!r}, "iat": now, "nbf": now,
           "exp": now + {ttl!r}, "jti": secrets.token_hex(8), "groups": {groups!r}}}
header = {{"alg": "ES256", "typ": "JWT", "kid": {kid!r}}}
signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
r, s = decode_dss_signature(key.sign(signing.encode(), ec.ECDSA(hashes.SHA256())))
print(signing + "." + b64(r.to_bytes(32, "big") + s.to_bytes(32, "big")))
'''


def token_command(
    issuer: Issuer, where: Path, sub: str, *, groups: list[str] | None = None, ttl: int = 600
) -> str:
    """Write a script minting a fresh token with `issuer`'s key on every run; returns the
    command line for `cport connect --token-command`."""
    key = where / "issuer-key.pem"
    if not key.exists():
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(issuer_key_pem(issuer))
    script = where / f"token-{sub}.py"
    script.write_text(
        _TOKEN_SCRIPT.format(
            key=str(key), iss=issuer.url, sub=sub, ttl=ttl, groups=groups or [], kid=issuer.kid
        )
    )
    return f"{sys.executable} {script}"


def read_line(stream: Any, timeout: float) -> bytes:
    """One line from a child's (binary, unbuffered-read) pipe, waiting at most `timeout`
    seconds; what arrived so far (without a newline) when the time is up or the pipe
    closes. Reads byte by byte so nothing past the line is consumed."""
    import select

    fd = stream.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            byte = os.read(fd, 1)
            if not byte:
                break
            buf += byte
    return buf


class ConnectProcess:
    """`cport connect --to TARGET --via GATEWAY …` as a child process; `port` is the local
    port it printed on standard output, `stderr()` what it reported (refusals, refreshes)."""

    def __init__(
        self,
        target: str,
        gateway_port: int,
        root: Path,
        *,
        token_file: Path | None = None,
        token_command: str | None = None,
        timeout: float = 20.0,
    ) -> None:
        args = [
            CPORT,
            "connect",
            "--to",
            target,
            "--via",
            f"127.0.0.1:{gateway_port}",
            "--listen",
            "127.0.0.1:0",
        ]
        if token_file is not None:
            args += ["--token-file", str(token_file)]
        if token_command is not None:
            args += ["--token-command", token_command]
        root.mkdir(parents=True, exist_ok=True)
        self.err_path = root / f"connect-{secrets.token_hex(4)}.err"
        self._err = open(self.err_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=self._err, env=env_without_proxy()
        )
        try:
            self.port = self._read_port(timeout)
        except BaseException:
            self.stop()
            raise

    def _read_port(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        line = read_line(self.proc.stdout, timeout)
        if not line.endswith(b"\n"):
            raise RuntimeError(f"cport connect printed no address:\n{self.stderr()}")
        host, _, port = line.decode().strip().rpartition(":")
        assert host == "127.0.0.1", line
        return int(port)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._err.close()
        return self.proc.returncode

    def __enter__(self) -> ConnectProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def audit_closes(agent: AgentProcess, subject: str, timeout: float = 10.0) -> list[Any]:
    """The close events of `subject` in the agent's audit record (waits, bounded, for one)."""
    found = wait_for(
        lambda: agent.api(
            "GET", "/v1/audit/events", params={"subject": subject, "kind": "close"}
        ).json()["events"],
        timeout=timeout,
    )
    return list(found or [])


class SpiffeCA:
    """A SPIFFE trust domain's CA: issues X.509-SVIDs (leaf, URI SAN, not a CA) and a TLS
    server certificate for 127.0.0.1."""

    def __init__(self, trust_domain: str) -> None:
        import datetime as dt

        from cryptography import x509
        from cryptography.x509.oid import NameOID

        self.trust_domain = trust_domain
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} test CA")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    def pem(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding

        return self.cert.public_bytes(Encoding.PEM)

    def issue(
        self, *, uri: str | None = None, ip: str | None = None, server: bool = False
    ) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) of a leaf: an SVID for `uri`, or a server cert for
        `ip`."""
        import datetime as dt
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = []
        if uri is not None:
            sans.append(x509.UniformResourceIdentifier(uri))
        if ip is not None:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uri or ip or "x")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(minutes=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    def write(self, where: Path, stem: str, **kwargs: Any) -> tuple[Path, Path]:
        """Issue a leaf and write it as `stem`.pem / `stem`.key under `where`."""
        cert, key = self.issue(**kwargs)
        cp, kp = where / f"{stem}.pem", where / f"{stem}.key"
        cp.write_bytes(cert)
        kp.write_bytes(key)
        kp.chmod(0o600)
        return cp, kp


def read_to_eof(s: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything until the peer closes; fails (socket timeout) if it does not within
    `timeout` seconds."""
    s.settimeout(timeout)
    out = b""
    for _ in range(10_000):
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk
    raise AssertionError("the connection kept sending")
