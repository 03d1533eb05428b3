"""Stock clients through `cport connect` and the gateway: psql against a real PostgreSQL,
socat, and a long session that outlives its tokens (refreshed from a token command) or ends
with them (a static token file)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ..audit.pg import PgServer
from .harness import (
    AgentProcess,
    ConnectProcess,
    EchoServer,
    Issuer,
    audit_closes,
    free_port,
    read_line,
    token_command,
    wait_for,
)

DB = "shopdb"
USERS = ("dana", "rita", "dev")


@pytest.fixture(scope="module")
def web() -> Iterator[EchoServer]:
    s = EchoServer("shop/web")
    yield s
    s.close()


@pytest.fixture(scope="module")
def pg_agent(
    tmp_path_factory: pytest.TempPathFactory,
    issuer: Issuer,
    web: EchoServer,
    request: pytest.FixtureRequest,
) -> Iterator[AgentProcess]:
    """An agent whose shop/db:5432 is the real PostgreSQL server (with a login role for each
    test user) and shop/web:8080 an echo service. Without PostgreSQL (outside CI) the psql
    tests skip, through their own `pg` argument, and the others run all the same."""
    try:
        pg: PgServer | None = request.getfixturevalue("pg")
    except pytest.skip.Exception:
        pg = None
    db_port = free_port()
    if pg is not None:
        pg.create_database(DB)
        with psycopg.connect(pg.dsn_for("postgres"), autocommit=True) as conn:
            for user in USERS:
                conn.execute(f"CREATE ROLE {user} LOGIN")
        db_port = pg.port
    a = AgentProcess(
        tmp_path_factory.mktemp("clients"),
        issuer,
        {"shop/db:5432": db_port, "shop/web:8080": web.port},
    )
    a.start()
    yield a
    a.stop()


def token_file(where: Path, token: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    p = where / f"token-{os.urandom(4).hex()}.jwt"
    p.write_text(token + "\n")
    p.chmod(0o600)
    return p


def psql_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


def psql_args(port: int, user: str) -> list[str]:
    return ["psql", "-X", "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", DB]


needs_psql = pytest.mark.skipif(shutil.which("psql") is None, reason="psql not installed")


@needs_psql
def test_psql_allowed_through_cport_connect(
    pg: PgServer, pg_agent: AgentProcess, issuer: Issuer, tmp_path: Path
) -> None:
    tok = token_file(tmp_path, issuer.mint("dana", groups=["dba"]))
    with ConnectProcess("shop/db:5432", pg_agent.gateway_port, tmp_path, token_file=tok) as c:
        out = subprocess.run(
            [*psql_args(c.port, "dana"), "-A", "-t", "-c", "select 1 + 1, current_user"],
            capture_output=True,
            text=True,
            timeout=30,
            env=psql_env(),
            check=False,
        )
        assert out.returncode == 0, out.stderr + c.stderr()
        assert out.stdout.strip() == "2|dana"
    closes = audit_closes(pg_agent, "dana")
    assert closes and closes[0]["workload"] == "shop/db" and closes[0]["verdict"] == "allowed"
    assert closes[0]["bytes_in"] > 0 and closes[0]["bytes_out"] > 0


@needs_psql
def test_psql_denied_sees_the_reason_in_cport_connect(
    pg: PgServer, pg_agent: AgentProcess, issuer: Issuer, tmp_path: Path
) -> None:
    tok = token_file(tmp_path, issuer.mint("dev", groups=["developers"]))
    with ConnectProcess("shop/db:5432", pg_agent.gateway_port, tmp_path, token_file=tok) as c:
        out = subprocess.run(
            [*psql_args(c.port, "dev"), "-c", "select 1"],
            capture_output=True,
            text=True,
            timeout=30,
            env=psql_env(),
            check=False,
        )
        # psql sees only a closed connection; cport connect says why.
        assert out.returncode == 2, out.stderr
        assert "server closed the connection unexpectedly" in out.stderr
        err = wait_for(lambda: "default-deny" in c.stderr() and c.stderr(), timeout=10)
        assert err, c.stderr()
    assert "refused (403 default-deny)" in err
    eid = err.split("cport explain --id ", 1)[1].split()[0]
    doc = pg_agent.api("GET", f"/v1/explanations/{eid}").json()
    assert doc["verdict"] == "denied" and doc["reason"] == "default-deny"
    assert doc["from"]["credential"]["subject"] == "dev"


@needs_psql
def test_revocation_cuts_a_live_psql_session(
    pg: PgServer, pg_agent: AgentProcess, issuer: Issuer, tmp_path: Path
) -> None:
    tok = token_file(tmp_path, issuer.mint("rita", groups=["dba"]))
    with ConnectProcess("shop/db:5432", pg_agent.gateway_port, tmp_path, token_file=tok) as c:
        psql = subprocess.Popen(
            [*psql_args(c.port, "rita"), "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=psql_env(),
        )
        try:
            assert psql.stdin is not None and psql.stdout is not None
            psql.stdin.write(b"select 'alive:' || current_user;\n")
            psql.stdin.flush()
            assert read_line(psql.stdout, 20) == b"alive:rita\n"
            live = pg_agent.api("GET", "/v1/connections").json()["connections"]
            assert [x["subject"] for x in live if x["subject"] == "rita"] == ["rita"]

            out = pg_agent.cli("revoke", "--identity", "rita", "--reason", "test")
            assert out.returncode == 0 and "closed 1" in out.stdout, out.stderr
            # The session is gone: the next statement finds the connection closed, and psql
            # reading a script gives up (exit 2).
            psql.stdin.write(b"select 'still here';\n")
            psql.stdin.flush()
            psql.stdin.close()
            assert psql.wait(30) == 2
            assert psql.stderr is not None
            assert b"connection to server was lost" in psql.stderr.read()
            # A new session is refused, and cport connect says so.
            again = subprocess.run(
                [*psql_args(c.port, "rita"), "-c", "select 1"],
                capture_output=True,
                text=True,
                timeout=30,
                env=psql_env(),
                check=False,
            )
            assert again.returncode == 2
            assert wait_for(lambda: "refused (403 revoked)" in c.stderr(), timeout=10), c.stderr()
        finally:
            if psql.poll() is None:
                psql.kill()
                psql.wait(5)
            for f in (psql.stdout, psql.stderr):
                if f is not None:
                    f.close()
    closes = audit_closes(pg_agent, "rita")
    assert [e["termination"] for e in closes] == ["revoked"]


def _exchange_until_closed(sock: socket.socket, seconds: float) -> tuple[int, bool]:
    """Send a line every 0.5 s and read it back, for up to `seconds`; returns how many
    round trips succeeded and whether the tunnel was closed under us."""
    sock.settimeout(10)
    banner = sock.recv(100)
    assert banner.startswith(b"hello from shop/web"), banner
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        line = f"line {n}\n".encode()
        try:
            sock.sendall(line)
            got = b""
            while len(got) < len(line):
                chunk = sock.recv(100)
                if not chunk:
                    return n, True
                got += chunk
        except (ConnectionResetError, BrokenPipeError):
            return n, True
        assert got == line
        n += 1
        time.sleep(0.5)
    return n, False


TTL = 4  # seconds of life of each token in the long-session tests


def test_long_session_outlives_its_tokens_with_a_token_command(
    pg_agent: AgentProcess, issuer: Issuer, tmp_path: Path
) -> None:
    cmd = token_command(issuer, tmp_path, "lena", ttl=TTL)
    with ConnectProcess("shop/web:8080", pg_agent.gateway_port, tmp_path, token_command=cmd) as c:
        with socket.create_connection(("127.0.0.1", c.port), timeout=10) as s:
            n, closed = _exchange_until_closed(s, 3.5 * TTL)
            assert not closed, f"tunnel closed after {n} round trips:\n{c.stderr()}"
            # Still the one tunnel, now running on a token minted long after the first expired.
            live = [
                x
                for x in pg_agent.api("GET", "/v1/connections").json()["connections"]
                if x["subject"] == "lena"
            ]
            assert len(live) == 1 and live[0]["expiresAt"] > time.time()
        # At least one refresh per expired lifetime, each accepted by the gateway.
        assert c.stderr().count("refreshed credential for tunnel") >= 3, c.stderr()
        assert "refresh-failed" not in c.stderr(), c.stderr()
    closes = audit_closes(pg_agent, "lena")
    assert len(closes) == 1
    assert closes[0]["termination"] in ("client-closed", "client-reset"), closes


def test_long_session_with_a_static_token_file_ends_when_it_expires(
    pg_agent: AgentProcess, issuer: Issuer, tmp_path: Path
) -> None:
    tok = token_file(tmp_path, issuer.mint("omar", ttl=TTL))
    with (
        ConnectProcess("shop/web:8080", pg_agent.gateway_port, tmp_path, token_file=tok) as c,
        socket.create_connection(("127.0.0.1", c.port), timeout=10) as s,
    ):
        n, closed = _exchange_until_closed(s, 3 * TTL)
        assert closed, f"tunnel still up after {n} round trips:\n{c.stderr()}"
    closes = audit_closes(pg_agent, "omar")
    assert [e["termination"] for e in closes] == ["expired"]


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed")
def test_socat_through_cport_connect(
    pg_agent: AgentProcess, issuer: Issuer, tmp_path: Path
) -> None:
    tok = token_file(tmp_path, issuer.mint("sam"))
    with ConnectProcess("shop/web:8080", pg_agent.gateway_port, tmp_path, token_file=tok) as c:
        out = subprocess.run(
            ["socat", "-t", "5", "-", f"TCP:127.0.0.1:{c.port}"],
            input=b"ping over socat\n",
            capture_output=True,
            timeout=30,
            check=False,
        )
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hello from shop/web\nping over socat\n"
    closes = audit_closes(pg_agent, "sam")
    assert closes and closes[0]["workload"] == "shop/web"
