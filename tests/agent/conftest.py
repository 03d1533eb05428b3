"""Agent fixtures: a real issuer, real upstream services, a real `cport up` process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..audit.pg import PgServer, PgUnavailable
from .harness import AgentProcess, EchoServer, Issuer, free_port


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    iss = Issuer()
    yield iss
    iss.close()


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, EchoServer]]:
    servers = {name: EchoServer(name) for name in ("shop/db", "shop/web")}
    yield servers
    for s in servers.values():
        s.close()


def upstream_map(servers: dict[str, EchoServer]) -> dict[str, int]:
    ports = {"shop/db": 5432, "shop/web": 8080}
    out = {f"{name}:{ports[name]}": s.port for name, s in servers.items()}
    out["shop/vault:8200"] = free_port()  # nothing listens there: the upstream is down
    return out


@pytest.fixture(scope="module")
def agent(
    tmp_path_factory: pytest.TempPathFactory, issuer: Issuer, upstreams: dict[str, EchoServer]
) -> Iterator[AgentProcess]:
    """One agent for a module's read-mostly tests (each test that changes policy or
    revokes makes its own)."""
    a = AgentProcess(
        tmp_path_factory.mktemp("agent"),
        issuer,
        upstream_map(upstreams),
        limits={"perIdentityConnections": 3, "handshakeTimeout": "1s", "maxHeaderBytes": 4096},
    )
    a.start()
    yield a
    a.stop()


@pytest.fixture
def fresh_agent(
    tmp_path: Path, issuer: Issuer, upstreams: dict[str, EchoServer]
) -> Iterator[AgentProcess]:
    a = AgentProcess(tmp_path, issuer, upstream_map(upstreams))
    a.start()
    yield a
    a.stop()


def _pg_required() -> bool:
    return (
        os.environ.get("CI", "").lower() in ("true", "1")
        or os.environ.get("CPORT_PRIVILEGED_TESTS") == "1"
    )


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """A throwaway PostgreSQL server on 127.0.0.1 for the stock-client tests; skipped with the
    reason when none can be started — or failed with it when CI=true (as tests/audit does)."""
    try:
        server = PgServer().start()
    except PgUnavailable as exc:
        reason = f"PostgreSQL unavailable: {exc}"
        if _pg_required():
            pytest.fail(f"{reason} (CI=true or CPORT_PRIVILEGED_TESTS=1: not skipping)")
        pytest.skip(reason)
    try:
        yield server
    finally:
        server.stop()
