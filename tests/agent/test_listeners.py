"""Per-port listeners (`listeners:` in the agent's configuration): peers identified by their
source address (loopback resolves to a CIDR identity), and by an X.509-SVID over mutual TLS
checked against `identity.spiffe.trustBundles`."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .harness import (
    ESTATE_INVENTORY,
    AgentProcess,
    EchoServer,
    Issuer,
    SpiffeCA,
    free_port,
    wait_for,
)

TRUST_DOMAIN = "test.example"
CLIENT_ID = "spiffe://test.example/ns/shop/sa/client"

POLICIES = """\
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
metadata: {name: web-from-loopback, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  ingress:
    - from:
        - cidr: [127.0.0.0/8]
      ports: [{port: 8080}]
---
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
metadata: {name: vault-for-shop-workloads, namespace: shop}
spec:
  selector: {matchLabels: {app: vault}}
  ingress:
    - from:
        - spiffe: {id: "spiffe://test.example/ns/shop/sa/*"}
      ports: [{port: 8200}]
"""


@dataclass
class Estate:
    agent: AgentProcess
    web_port: int  # identify: address, loopback allowed
    db_port: int  # identify: address, loopback refused
    vault_port: int  # identify: spiffe
    ca: SpiffeCA
    tls: Path


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory, issuer: Issuer) -> Iterator[Estate]:
    root = tmp_path_factory.mktemp("listeners")
    tls = root / "tls"
    tls.mkdir()
    ca = SpiffeCA(TRUST_DOMAIN)
    (tls / "bundle.pem").write_bytes(ca.pem())
    ca.write(tls, "server", ip="127.0.0.1", server=True)
    servers = {name: EchoServer(name) for name in ("shop/web", "shop/db", "shop/vault")}
    ports = {name: free_port() for name in servers}
    extra = f"""\
  spiffe:
    trustBundles:
      {TRUST_DOMAIN}: tls/bundle.pem
listeners:
  - listen: 127.0.0.1:{ports["shop/web"]}
    to: shop/web:8080
    upstream: 127.0.0.1:{servers["shop/web"].port}
    identify: address
  - listen: 127.0.0.1:{ports["shop/db"]}
    to: shop/db:5432
    upstream: 127.0.0.1:{servers["shop/db"].port}
  - listen: 127.0.0.1:{ports["shop/vault"]}
    to: shop/vault:8200
    upstream: 127.0.0.1:{servers["shop/vault"].port}
    identify: spiffe
    tls: {{cert: tls/server.pem, key: tls/server.key}}
"""
    agent = AgentProcess(
        root, issuer, {}, extra=extra, policies=POLICIES, inventory=ESTATE_INVENTORY
    )
    try:
        agent.start()
        yield Estate(agent, ports["shop/web"], ports["shop/db"], ports["shop/vault"], ca, tls)
    finally:
        agent.stop()
        for s in servers.values():
            s.close()


def flows(agent: AgentProcess, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = agent.api("GET", "/v1/flows", params=params).json()["flows"]
    return out


def plain_banner(port: int) -> bytes:
    """Connect, wait for the upstream's banner; b"" when the listener closes on us."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            return s.recv(100)
        except ConnectionResetError:
            return b""


def tls_banner(est: Estate, cert: tuple[Path, Path] | None) -> bytes | Exception:
    """Mutual TLS to the SPIFFE listener as a client with `cert` (or none); the upstream's
    banner, or b"" / the TLS error when the listener refuses."""
    ctx = ssl.create_default_context(cafile=str(est.tls / "bundle.pem"))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    with socket.create_connection(("127.0.0.1", est.vault_port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                return s.recv(100)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
            return exc


def test_status_lists_every_listener(estate: Estate) -> None:
    st = estate.agent.api("GET", "/v1/status").json()
    assert st["listeners"]["proxy-listener shop/web:8080"] == f"127.0.0.1:{estate.web_port}"
    assert st["listeners"]["proxy-listener shop/vault:8200"] == f"127.0.0.1:{estate.vault_port}"
    assert st["enforcers"]["proxy-listener"]["inSync"]


def test_address_listener_allows_the_loopback_cidr(estate: Estate) -> None:
    assert plain_banner(estate.web_port) == b"hello from shop/web\n"
    opened = wait_for(lambda: flows(estate.agent, to="shop/web", verdict="allowed"))
    assert opened, flows(estate.agent)
    rec = opened[0]
    assert rec["enforcer"] == "proxy-listener" and rec["event"] == "open"
    assert rec["peer"] == "127.0.0.1 (cidr 127.0.0.0/8)"
    assert rec["peer_identity"] >= 1 << 24  # a CIDR identity, not world (2)
    assert rec["policies"] == ["shop/web-from-loopback"]


def test_address_listener_refuses_the_same_peer_on_another_port(estate: Estate) -> None:
    assert plain_banner(estate.db_port) == b""  # closed: the upstream never saw it
    refused = wait_for(lambda: flows(estate.agent, to="shop/db", verdict="denied"))
    assert refused, flows(estate.agent)
    rec = refused[0]
    assert rec["event"] == "refused" and rec["reason"] == "default-deny"
    assert rec["peer"] == "127.0.0.1 (cidr 127.0.0.0/8)"
    assert rec["policies"] == ["shop/db-access"]
    doc = estate.agent.api("GET", f"/v1/explanations/{rec['explanation_id']}").json()
    assert doc["verdict"] == "denied" and doc["reason"] == "default-deny"
    out = estate.agent.cli("observe", "--to", "shop/db")
    assert "REFUSED DENIED (default-deny)" in out.stdout, out.stdout


def test_spiffe_listener_admits_an_svid_of_the_trust_domain(estate: Estate, tmp_path: Path) -> None:
    cert = estate.ca.write(tmp_path, "client", uri=CLIENT_ID)
    assert tls_banner(estate, cert) == b"hello from shop/vault\n"
    opened = wait_for(lambda: flows(estate.agent, **{"from": CLIENT_ID, "verdict": "allowed"}))
    assert opened, flows(estate.agent)
    assert opened[0]["enforcer"] == "proxy-listener"
    assert opened[0]["policies"] == ["shop/vault-for-shop-workloads"]
    events = wait_for(
        lambda: estate.agent.api(
            "GET", "/v1/audit/events", params={"subject": CLIENT_ID, "kind": "close"}
        ).json()["events"]
    )
    assert events and events[0]["credential_kind"] == "spiffe-x509"
    assert events[0]["issuer"] == TRUST_DOMAIN


def test_spiffe_listener_refuses_an_id_outside_the_policy(estate: Estate, tmp_path: Path) -> None:
    other = "spiffe://test.example/ns/billing/sa/client"
    cert = estate.ca.write(tmp_path, "billing", uri=other)
    for _ in range(3):
        got = tls_banner(estate, cert)
        assert not isinstance(got, bytes) or got == b"", got
    refused = wait_for(lambda: len(r := flows(estate.agent, **{"from": other})) == 3 and r)
    assert refused, flows(estate.agent)
    assert {r["reason"] for r in refused} == {"default-deny"}
    assert refused[0]["policies"] == ["shop/vault-for-shop-workloads"]
    # The agent keeps serving after closing refused TLS connections (a regression: closing
    # the socket under its TLS transport let the loop lose track of a reused descriptor,
    # and the API stopped answering).
    assert estate.agent.api("GET", "/healthz").json() == {"status": "ok"}
    ok = estate.ca.write(tmp_path, "client", uri=CLIENT_ID)
    assert tls_banner(estate, ok) == b"hello from shop/vault\n"


@pytest.mark.parametrize("case", ["no-certificate", "another-ca"])
def test_spiffe_listener_refuses_without_a_trusted_svid(
    estate: Estate, tmp_path: Path, case: str
) -> None:
    cert = None
    if case == "another-ca":
        cert = SpiffeCA(TRUST_DOMAIN).write(tmp_path, "rogue", uri=CLIENT_ID)
    before = len(flows(estate.agent, to="shop/vault", verdict="denied", limit=1000))
    got = tls_banner(estate, cert)
    assert not isinstance(got, bytes) or got == b"", got
    refused = wait_for(
        lambda: (
            (r := flows(estate.agent, to="shop/vault", verdict="denied", limit=1000))[before:]
            and r[before:]
        )
    )
    assert refused, flows(estate.agent)
    assert refused[-1]["reason"] == "tls-handshake-failed"
    assert refused[-1]["peer"] == "127.0.0.1"
