"""The agent's local API: the OpenAPI document against the routes the server registers, the
admin-credential guard for non-local clients, a real loopback TCP listener, and the errors of
the configuration file's agent sections."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from cport.agent import Agent
from cport.agent._api import ApiServer
from cport.agent._dev import DevIssuer
from cport.agent._openapi import OPENAPI
from cport.config import parse_config
from cport.errors import InputErrors

from .harness import AgentProcess, EchoServer, Issuer, free_port, running

ADMIN = "s3cret-admin-token-for-tests"
DEV_ROUTES = {
    "/dev-issuer/.well-known/openid-configuration": {"get"},
    "/dev-issuer/jwks": {"get"},
    "/v1/dev/token": {"post"},
}


def make_agent(root: Path, api: str = "") -> Agent:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "admin.token").write_text(ADMIN + "\n")
    text = f"stateDir: state\npolicies: [policies]\n{api}"
    return Agent(parse_config(text, str(root / "cport.yaml"), root))


def served(app: web.Application) -> dict[str, set[str]]:
    """Every path the app routes, with its methods (aiohttp adds HEAD to each GET)."""
    out: dict[str, set[str]] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert isinstance(path, str), info
        if route.method != "HEAD":
            out.setdefault(path, set()).add(route.method.lower())
    return out


def documented() -> dict[str, set[str]]:
    return {path: set(ops) for path, ops in OPENAPI["paths"].items()}


def test_openapi_describes_exactly_the_served_routes(tmp_path: Path) -> None:
    api = ApiServer(make_agent(tmp_path))
    assert served(api.app) == documented()
    for path, ops in OPENAPI["paths"].items():
        for op in ops.values():
            assert op["summary"] and op["responses"], path
            for p in op.get("parameters", []):
                if p["in"] == "path":
                    assert "{" + p["name"] + "}" in path, (path, p)


def test_dev_routes_exist_only_in_the_quickstart(tmp_path: Path) -> None:
    plain = served(ApiServer(make_agent(tmp_path / "plain")).app)
    assert not any("dev" in path for path in plain)
    agent = make_agent(tmp_path / "qs")
    agent.api_hooks.append(DevIssuer(tmp_path / "qs", "http://127.0.0.1:9/dev-issuer").routes)
    quick = served(ApiServer(agent).app)
    extra = {p: m for p, m in quick.items() if p not in documented()}
    assert extra == DEV_ROUTES
    assert {p: m for p, m in quick.items() if p in documented()} == documented()


def _request(remote: str | None, authorization: str | None = None) -> web.Request:
    transport = mock.Mock()
    peer = (remote, 40000) if remote is not None else None
    transport.get_extra_info.side_effect = lambda name, default=None: (
        peer if name == "peername" else default
    )
    headers = {"Authorization": authorization} if authorization is not None else None
    return make_mocked_request("GET", "/v1/status", headers=headers, transport=transport)


def _guarded(api: ApiServer, request: web.Request) -> tuple[int, Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"through": True})

    async def go() -> web.StreamResponse:
        return await api._guard(request, handler)

    resp = asyncio.run(go())
    assert isinstance(resp, web.Response) and isinstance(resp.body, bytes)
    return resp.status, json.loads(resp.body)


def test_non_local_clients_need_the_admin_token(tmp_path: Path) -> None:
    api = ApiServer(
        make_agent(tmp_path, "api:\n  listen: 127.0.0.1:9464\n  adminTokenFile: admin.token\n")
    )
    remote = "192.0.2.10"
    status, body = _guarded(api, _request(remote))
    assert status == 401 and body["error"]["code"] == "admin-credential-required"
    for wrong in ("Bearer nope", f"Basic {ADMIN}", ADMIN, f"Bearer {ADMIN}x"):
        assert _guarded(api, _request(remote, wrong))[0] == 401, wrong
    assert _guarded(api, _request(remote, f"Bearer {ADMIN}")) == (200, {"through": True})
    assert _guarded(api, _request(remote, f"bearer  {ADMIN} ")) == (200, {"through": True})
    # Loopback and the unix socket (no peer address) are local: no token needed.
    assert _guarded(api, _request("127.0.0.1")) == (200, {"through": True})
    assert _guarded(api, _request("::1")) == (200, {"through": True})
    assert _guarded(api, _request(None)) == (200, {"through": True})


def test_without_an_admin_token_non_local_clients_are_always_refused(tmp_path: Path) -> None:
    api = ApiServer(make_agent(tmp_path))
    assert _guarded(api, _request("192.0.2.10", f"Bearer {ADMIN}"))[0] == 401
    assert _guarded(api, _request("192.0.2.10", "Bearer "))[0] == 401


def test_loopback_tcp_api_answers(tmp_path: Path, issuer: Issuer) -> None:
    port = free_port()
    web_up = EchoServer("shop/web")
    try:
        a = AgentProcess(
            tmp_path,
            issuer,
            {"shop/web:8080": web_up.port},
            extra=f"api:\n  listen: 127.0.0.1:{port}\n",
        )
        with running(a):
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=10, trust_env=False) as c:
                assert c.get("/healthz").json() == {"status": "ok"}
                assert c.get("/readyz").status_code == 200
                doc = c.get("/openapi.json").json()
                assert set(doc["paths"]) == set(OPENAPI["paths"])
                assert c.get("/v1/status").json()["ready"] is True
            # The CLI's --api reaches the same agent over TCP.
            out = a.cli("status", "--api", base)
            assert out.returncode == 0 and "in sync" in out.stdout, out.stderr
            assert a.socket.exists()  # the unix socket is served as well
    finally:
        web_up.close()


@pytest.mark.parametrize(
    "text,where,words",
    [
        ("policies: [p]\ngateway:\n  listen: nowhere\n", "agent.yaml:3", ["HOST:PORT"]),
        (
            "policies: [p]\ngateway:\n  listen: 127.0.0.1:8443\n  upstreams:\n"
            "    shop/db:5432: 198.51.100.20\n",
            "agent.yaml:5",
            ["HOST:PORT"],
        ),
        (
            "policies: [p]\napi:\n  socket: s.sock\n  listen: 192.0.2.10:9464\n",
            "agent.yaml:4",
            ["beyond loopback", "adminTokenFile"],
        ),
        (
            "policies: [p]\ngateway:\n  listen: 127.0.0.1:8443\n  limts: {maxConnections: 5}\n",
            "agent.yaml:4",
            ["unknown field 'limts'", "limits"],
        ),
        ("policies: [p]\nrecheckInterval: soon\n", "agent.yaml:2", ["invalid duration"]),
        (
            "policies: [p]\nlisteners:\n  - listen: 127.0.0.1:15432\n    to: shop/db\n",
            "agent.yaml:4",
            ["NAMESPACE/WORKLOAD:PORT"],
        ),
        (
            "policies: [p]\nlisteners:\n  - listen: 127.0.0.1:15432\n    to: shop/db:5432\n"
            "    identify: spiffe\n",
            "agent.yaml:3",
            ["tls"],
        ),
    ],
)
def test_agent_config_errors_name_file_and_line(text: str, where: str, words: list[str]) -> None:
    with pytest.raises(InputErrors) as err:
        parse_config(text, "agent.yaml")
    message = str(err.value)
    assert where + ":" in message, message
    for w in words:
        assert w in message, message


def test_non_loopback_api_with_an_admin_token_is_accepted(tmp_path: Path) -> None:
    cfg = parse_config(
        "policies: [p]\napi:\n  listen: 192.0.2.10:9464\n  adminTokenFile: admin.token\n",
        str(tmp_path / "agent.yaml"),
        tmp_path,
    )
    api = cfg.agent.api_settings()
    assert api.listen is not None and str(api.listen) == "192.0.2.10:9464"
    assert api.admin_token_file == tmp_path / "admin.token"


def test_the_stream_client_reports_drops_and_yields_only_flows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A `dropped` event's data is a count, not a flow (beside the real --follow test in
    test_gateway.py, this pins the parsing of the event field)."""
    import httpx

    from cport.cli._agent import AgentClient

    body = (
        b'data: {"peer": "a"}\n\nevent: dropped\ndata: 7\n\n: keep-alive\n\ndata: {"peer": "b"}\n\n'
    )
    client = AgentClient(api_url="http://agent.invalid")
    client.http = httpx.Client(
        base_url="http://agent.invalid",
        transport=httpx.MockTransport(
            lambda req: httpx.Response(
                200, content=body, headers={"Content-Type": "text/event-stream"}
            )
        ),
    )
    assert [d["peer"] for d in client.stream("/v1/flows", {})] == ["a", "b"]
    assert "7 flow(s) dropped" in capsys.readouterr().err
