"""The CONNECT gateway end to end: a real agent process, real curl, real upstreams."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time

import pytest

from .conftest import upstream_map
from .harness import (
    CPORT,
    AgentProcess,
    EchoServer,
    Issuer,
    env_without_proxy,
    read_to_eof,
    wait_for,
)

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


def curl(
    agent: AgentProcess, url: str, token: str | None, *extra: str
) -> subprocess.CompletedProcess[str]:
    args = [
        "curl",
        "-sS",
        "-v",
        "--max-time",
        "10",
        "-p",
        "-x",
        f"http://127.0.0.1:{agent.gateway_port}",
        *extra,
    ]
    if token is not None:
        args += ["--proxy-header", f"Proxy-Authorization: Bearer {token}"]
    return subprocess.run(
        [*args, url],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env=env_without_proxy(),
    )


def test_curl_allowed_through_the_gateway(agent: AgentProcess, issuer: Issuer) -> None:
    out = curl(agent, "http://web.shop:8080/", issuer.mint("carol"))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello from shop/web\n"


def test_curl_denied_sees_reason_and_explanation(agent: AgentProcess, issuer: Issuer) -> None:
    out = curl(agent, "http://db.shop:5432/", issuer.mint("carol", groups=["dev"]))
    assert out.returncode != 0
    assert "403" in out.stderr
    assert "< Cport-Reason: default-deny" in out.stderr
    eid = next(
        line.split(": ", 1)[1].strip()
        for line in out.stderr.splitlines()
        if line.startswith("< Cport-Explanation:")
    )
    doc = agent.api("GET", f"/v1/explanations/{eid}").json()
    assert doc["verdict"] == "denied" and doc["reason"] == "default-deny"
    assert doc["from"]["credential"]["subject"] == "carol"
    shown = agent.cli("explain", "--id", eid)
    assert shown.returncode == 1 and "default-deny" in shown.stdout


def test_auth_required_port_opens_for_the_right_group(agent: AgentProcess, issuer: Issuer) -> None:
    s, head = agent.connect_tunnel("db.shop:5432", issuer.mint("dana", groups=["dba"]))
    with s:
        assert head.startswith(b"HTTP/1.1 200")
        assert b"Cport-Connection:" in head
        assert s.recv(100).startswith(b"hello from shop/db")
        s.sendall(b"ping")
        assert s.recv(100) == b"ping"


def test_no_credential_is_407(agent: AgentProcess) -> None:
    out = curl(agent, "http://web.shop:8080/", None)
    assert "407" in out.stderr and "< Cport-Reason: missing-credential" in out.stderr
    assert "Proxy-Authenticate: Bearer" in out.stderr


@pytest.mark.parametrize(
    "case,reason",
    [
        ("expired", "expired"),
        ("wrong-audience", "audience-mismatch"),
        ("garbage", "malformed"),
        ("bad-signature", "bad-signature"),
    ],
)
def test_bad_credentials_are_407_with_a_reason(
    agent: AgentProcess, issuer: Issuer, case: str, reason: str
) -> None:
    token = {
        "expired": issuer.mint("carol", ttl=-600),
        "wrong-audience": issuer.mint("carol", aud="someone-else"),
        "garbage": "not.a.token",
        "bad-signature": issuer.mint("carol")[:-8] + "AAAAAAAA",
    }[case]
    out = curl(agent, "http://web.shop:8080/", token)
    assert "407" in out.stderr, out.stderr
    assert f"< Cport-Reason: {reason}" in out.stderr


def test_unknown_target_and_unreachable_upstream(agent: AgentProcess, issuer: Issuer) -> None:
    tok = issuer.mint("carol")
    out = curl(agent, "http://nothing.shop:8080/", tok)
    assert "403" in out.stderr and "unknown-target" in out.stderr
    # vault is selected by no policy (allowed, as in Cilium), but its upstream is down.
    tok = issuer.mint("upstream-down")
    out = curl(agent, "http://vault.shop:8200/", tok)
    assert "502" in out.stderr and "< Cport-Reason: upstream-unreachable" in out.stderr
    # One attempt, one decision (allowed) and its close (upstream-unreachable): never a
    # second, contradicting decision.
    events = wait_for(
        lambda: (
            [
                (e["kind"], e["verdict"], e["termination"])
                for e in agent.api(
                    "GET", "/v1/audit/events", params={"subject": "upstream-down"}
                ).json()["events"]
            ]
            if len(
                agent.api("GET", "/v1/audit/events", params={"subject": "upstream-down"}).json()[
                    "events"
                ]
            )
            >= 2
            else None
        )
    )
    assert sorted(events) == [
        ("close", "allowed", "upstream-unreachable"),
        ("decision", "allowed", ""),
    ]


def test_the_identity_cap_holds_for_simultaneous_attempts(
    agent: AgentProcess, issuer: Issuer
) -> None:
    """Thirty CONNECTs at once with one token: at most the cap (3) get through."""
    import concurrent.futures

    tok = issuer.mint("burst")
    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        results = list(pool.map(lambda _: agent.connect_tunnel("web.shop:8080", tok), range(30)))
    try:
        codes = [head.split(b" ", 2)[1] for _, head in results]
        assert codes.count(b"200") <= 3 and codes.count(b"200") >= 1, codes
        assert set(codes) <= {b"200", b"429"}, codes
    finally:
        for s, _ in results:
            s.close()


def test_limits_each_have_a_reason(agent: AgentProcess, issuer: Issuer) -> None:
    # A slow client: nothing but part of a request line, past the handshake timeout.
    with socket.create_connection(("127.0.0.1", agent.gateway_port), timeout=10) as s:
        s.sendall(b"CONNECT web.shop:8080 HTTP/1.1\r\n")
        reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408") and b"handshake-timeout" in reply
    # An oversized head.
    with socket.create_connection(("127.0.0.1", agent.gateway_port), timeout=10) as s:
        s.sendall(b"CONNECT web.shop:8080 HTTP/1.1\r\nX-Pad: " + b"a" * 8000 + b"\r\n\r\n")
        reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 431")
    # The per-identity cap (3 in this agent's config).
    tok = issuer.mint("erin")
    held = []
    try:
        for _ in range(3):
            s, head = agent.connect_tunnel("web.shop:8080", tok)
            held.append(s)
            assert head.startswith(b"HTTP/1.1 200")
        s, head = agent.connect_tunnel("web.shop:8080", tok)
        held.append(s)
        assert head.startswith(b"HTTP/1.1 429") and b"identity-connection-cap" in head
    finally:
        for s in held:
            s.close()


def test_observe_and_who_show_allowed_and_denied(agent: AgentProcess, issuer: Issuer) -> None:
    curl(agent, "http://web.shop:8080/", issuer.mint("frank"))
    curl(agent, "http://db.shop:5432/", issuer.mint("frank"))
    out = wait_for(
        lambda: (o := agent.cli("observe", "--from", "frank")).stdout.count("frank") >= 3 and o
    )
    assert out, agent.cli("observe").stdout
    lines = out.stdout.splitlines()
    assert any("frank" in ln and "-> shop/web:8080" in ln and "ALLOWED" in ln for ln in lines)
    assert any(
        "frank" in ln
        and "-> shop/db:5432" in ln
        and "DENIED (default-deny)" in ln
        and "policy=shop/db-access" in ln
        for ln in lines
    )
    js = agent.cli("observe", "--from", "frank", "-o", "json").stdout.splitlines()
    assert {json.loads(j)["verdict"] for j in js} == {"allowed", "denied"}
    events = agent.api("GET", "/v1/audit/events", params={"subject": "frank"}).json()["events"]
    assert {(e["kind"], e["verdict"]) for e in events} >= {
        ("decision", "allowed"),
        ("decision", "denied"),
    }
    who = agent.api("GET", "/v1/audit/who", params={"subject": "frank"}).json()["who"]
    assert {r["workload"] for r in who} == {"shop/web", "shop/db"}
    # One attempt each: a relayed connection's close event is not counted again.
    assert {r["workload"]: r["count"] for r in who} == {"shop/web": 1, "shop/db": 1}


def test_observe_follow_streams_new_flows(agent: AgentProcess, issuer: Issuer) -> None:
    proc = subprocess.Popen(
        [
            CPORT,
            "observe",
            "--follow",
            "--from",
            "gina",
            "--socket",
            str(agent.socket),
            "-o",
            "json",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        curl(agent, "http://web.shop:8080/", issuer.mint("gina"))
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["peer"] == "gina" and first["event"] == "open"
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_status_metrics_health_and_openapi(agent: AgentProcess) -> None:
    st = agent.api("GET", "/v1/status").json()
    assert st["enforcers"]["proxy-gateway"]["inSync"] is True
    assert agent.api("GET", "/healthz").json() == {"status": "ok"}
    assert agent.api("GET", "/readyz").status_code == 200
    metrics = agent.api("GET", "/metrics").text
    assert "cport_decisions_total" in metrics and "cport_table_revision" in metrics
    doc = agent.api("GET", "/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/v1/flows" in doc["paths"]
    out = agent.cli("status")
    assert out.returncode == 0 and "in sync" in out.stdout


def test_revocation_closes_a_live_tunnel(fresh_agent: AgentProcess, issuer: Issuer) -> None:
    a = fresh_agent
    s, head = a.connect_tunnel("web.shop:8080", issuer.mint("hank", jti="hank-1"))
    assert head.startswith(b"HTTP/1.1 200")
    s.sendall(b"x")
    assert s.recv(100).startswith(b"hello from shop/web")
    out = a.cli("revoke", "--identity", "hank", "--reason", "left the company")
    assert out.returncode == 0 and "closed 1" in out.stdout, out.stderr
    s.settimeout(5)
    assert s.recv(100) == b""  # closed by the agent
    s.close()
    closes = wait_for(
        lambda: list(
            a.api("GET", "/v1/audit/events", params={"subject": "hank", "kind": "close"}).json()[
                "events"
            ]
        )
    )
    assert closes and closes[0]["termination"] == "revoked"
    # And a new attempt is refused with the reason.
    s2, head2 = a.connect_tunnel("web.shop:8080", issuer.mint("hank"))
    s2.close()
    assert head2.startswith(b"HTTP/1.1 403") and b"revoked" in head2


def test_policy_change_closes_tunnels_it_no_longer_allows(
    fresh_agent: AgentProcess, issuer: Issuer
) -> None:
    a = fresh_agent
    s, head = a.connect_tunnel("web.shop:8080", issuer.mint("ivan"))
    assert head.startswith(b"HTTP/1.1 200")
    before = a.api("GET", "/v1/status").json()["revision"]
    pol = a.root / "policies" / "shop.yaml"
    pol.write_text(
        pol.read_text().replace(
            "- users: {issuer: test}", "- users: {issuer: test, subject: someone-else}"
        )
    )
    read_to_eof(s)  # the agent closes the tunnel (the banner may or may not come first)
    s.close()
    st = a.api("GET", "/v1/status").json()
    assert st["revision"] > before and st["enforcers"]["proxy-gateway"]["inSync"]
    closes = wait_for(
        lambda: a.api(
            "GET", "/v1/audit/events", params={"subject": "ivan", "kind": "close"}
        ).json()["events"]
    )
    assert closes[0]["termination"] == "policy-changed"


def test_bad_policy_reload_keeps_the_last_good_table(
    fresh_agent: AgentProcess, issuer: Issuer
) -> None:
    a = fresh_agent
    rev = a.api("GET", "/v1/status").json()["revision"]
    pol = a.root / "policies" / "shop.yaml"
    pol.write_text(pol.read_text().replace("ingress:", "ingres:", 1))
    out = a.cli("reload")
    assert out.returncode == 1
    assert "shop.yaml:6" in out.stderr and "ingres" in out.stderr, out.stderr
    st = a.api("GET", "/v1/status").json()
    assert st["revision"] == rev and st["policy"]["errors"]
    # Still enforcing the last good table.
    s, head = a.connect_tunnel("web.shop:8080", issuer.mint("judy"))
    s.close()
    assert head.startswith(b"HTTP/1.1 200")


def test_token_expiry_closes_the_tunnel(fresh_agent: AgentProcess, issuer: Issuer) -> None:
    a = fresh_agent
    s, head = a.connect_tunnel("web.shop:8080", issuer.mint("kim", ttl=2))
    assert head.startswith(b"HTTP/1.1 200")
    s.settimeout(10)
    data = b""
    for _ in range(100):
        chunk = s.recv(100)
        if not chunk:
            break
        data += chunk
    s.close()
    closes = wait_for(
        lambda: a.api("GET", "/v1/audit/events", params={"subject": "kim", "kind": "close"}).json()[
            "events"
        ]
    )
    assert closes[0]["termination"] == "expired"


def test_bad_config_is_reported_with_file_and_line(tmp_path: object, issuer: Issuer) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    cfg = root / "bad.yaml"
    cfg.write_text("policies: [p]\ngateway:\n  listen: nowhere\n")
    out = subprocess.run(
        [CPORT, "up", "--config", str(cfg)], check=False, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 1
    assert "bad.yaml:3" in out.stderr and "HOST:PORT" in out.stderr


def test_sigterm_drains_and_flushes_audit(
    tmp_path: object, issuer: Issuer, upstreams: dict[str, EchoServer]
) -> None:
    from pathlib import Path

    a = AgentProcess(
        Path(str(tmp_path)), issuer, upstream_map(upstreams), limits={"drainTimeout": "1s"}
    )
    a.start()
    s, head = a.connect_tunnel("web.shop:8080", issuer.mint("liam"))
    assert head.startswith(b"HTTP/1.1 200")
    assert a.stop() == 0
    read_to_eof(s)  # closed by the agent's shutdown, not left hanging
    s.close()
    out = subprocess.run(
        [
            CPORT,
            "audit",
            "query",
            "--state-dir",
            str(a.root / "state"),
            "--subject",
            "liam",
            "-o",
            "json",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert '"shutdown"' in out.stdout
    ver = subprocess.run(
        [CPORT, "audit", "verify", "--state-dir", str(a.root / "state")],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ver.returncode == 0, ver.stdout + ver.stderr


def test_sigterm_ends_live_streams_and_exits(
    tmp_path: object, issuer: Issuer, upstreams: dict[str, EchoServer]
) -> None:
    """A `cport observe --follow` reader must not hold the agent's shutdown (aiohttp would
    wait a minute for the stream): the flow hub closes first and the stream ends."""
    from pathlib import Path

    a = AgentProcess(Path(str(tmp_path)), issuer, upstream_map(upstreams))
    a.start()
    follower = subprocess.Popen(
        [CPORT, "observe", "--follow", "--socket", str(a.socket)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        assert follower.poll() is None
        assert a.proc is not None
        a.proc.terminate()
        a.proc.wait(20)  # well inside the time a service manager waits before SIGKILL
        assert a.proc.returncode == 0
        follower.wait(10)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(5)
        a.stop()
