"""Direct grants without the kernel: the pure rules (`host_address`, one identity per bound
address, when a grant ends, the bounded wait for the kernel), the `cport connect --grant`
client against a scripted gateway, and a real agent without an eBPF datapath refusing
`Cport-Grant` with a specific code. The kernel half is in tests/ebpf/test_user_grants.py."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cport.agent._ebpf import (
    EbpfEnforcer,
    Grant,
    binding_conflict,
    grant_withdrawal,
    host_address,
)
from cport.ebpf import BpfDatapath
from cport.ebpf import _layout as L
from cport.ebpf._encode import address_bytes
from cport.errors import CportError
from cport.identity import Labels, VerifiedIdentity
from cport.proxy._connector import Granter, GrantRefused, TokenSource

from .harness import CPORT, AgentProcess, Issuer, env_without_proxy, read_to_eof


def cred(subject: str, expires_at: float, token_id: str = "t1") -> VerifiedIdentity:
    return VerifiedIdentity(
        kind="oidc",
        subject=subject,
        issuer="corp",
        labels=Labels.parse(f"oidc:iss=corp,oidc:sub={subject}"),
        expires_at=expires_at,
        token_id=token_id,
    )


# -- pure rules ------------------------------------------------------------------------------


def test_host_address_is_canonical_and_one_host() -> None:
    assert host_address("203.0.113.7") == "203.0.113.7"
    assert host_address("::ffff:203.0.113.7") == "203.0.113.7"  # a dual-stack socket's peer
    assert host_address("[2001:db8::0:1]") == "2001:db8::1"
    for bad in ("203.0.113.0/24", "gateway.example", "", "0.0.0.0", "::", "224.0.0.1"):
        with pytest.raises(CportError) as err:
            host_address(bad)
        assert err.value.code == "bad-address", bad


def test_one_identity_per_bound_address() -> None:
    later = time.time() + 60
    alice = Grant(cred("alice", later), 300, "203.0.113.7", bound=True)
    api = Grant(cred("api", later), 260, "192.0.2.10")  # a workload's own grant: no binding
    grants = {(g.identity, g.address): g for g in (alice, api)}
    assert binding_conflict(grants, 301, "203.0.113.7") is alice
    assert binding_conflict(grants, 300, "203.0.113.7") is None  # the same identity: refresh
    assert binding_conflict(grants, 301, "203.0.113.8") is None
    assert binding_conflict(grants, 301, "192.0.2.10") is None


def test_when_a_grant_ends() -> None:
    now = time.time()
    live = Grant(cred("alice", now + 60), 300, "203.0.113.7", bound=True)
    assert grant_withdrawal(live, now, False, set()) is None
    assert grant_withdrawal(live, now + 60, False, set()) == "expired"
    assert grant_withdrawal(live, now, True, set()) == "revoked"
    # A bound address that became a workload's is given back to the workload.
    assert grant_withdrawal(live, now, False, {"203.0.113.7"}) == "workload-address"
    own = Grant(cred("api", now + 60), 260, "192.0.2.10")
    assert grant_withdrawal(own, now, False, {"192.0.2.10"}) is None


def _enforcer(realised: int) -> Any:
    e: Any = object.__new__(EbpfEnforcer)
    e.dp = SimpleNamespace(realised_revision=realised)
    e._wake = asyncio.Event()
    return e


def test_a_bound_grant_waits_for_the_kernel_bounded() -> None:
    async def main() -> None:
        e = _enforcer(4)
        await e._until_realised(4)  # realised already: no wait, no wake-up
        assert not e._wake.is_set()

        async def catch_up() -> None:
            await asyncio.sleep(0.05)
            e.dp.realised_revision = 6

        task = asyncio.create_task(catch_up())
        t0 = time.monotonic()
        await e._until_realised(5, timeout=2.0)
        assert e._wake.is_set() and time.monotonic() - t0 < 1.0
        await task

        with pytest.raises(CportError) as err:
            await e._until_realised(7, timeout=0.1)
        assert err.value.code == "grant-not-realised"

    asyncio.run(main())


def test_bindings_lie_over_the_table_ipcache_but_never_over_a_workload() -> None:
    dp = BpfDatapath("lo")  # nothing opened: the overlay is pure
    cidr_key = L.IPCACHE_KEY.pack(128, address_bytes("203.0.113.8"))
    wl_key = L.IPCACHE_KEY.pack(128, address_bytes("198.51.100.20"))
    base = {
        cidr_key: L.IPCACHE_VALUE.pack(1 << 24, L.IP_CIDR),
        wl_key: L.IPCACHE_VALUE.pack(258, L.IP_WORKLOAD),
    }
    dp._bindings = {
        address_bytes("203.0.113.7"): 300,
        address_bytes("203.0.113.8"): 301,
        address_bytes("198.51.100.20"): 302,  # became a workload's since: inert
    }
    out = dp._with_bindings(base)
    assert out is not base and base[cidr_key] == L.IPCACHE_VALUE.pack(1 << 24, L.IP_CIDR)
    assert out[L.IPCACHE_KEY.pack(128, address_bytes("203.0.113.7"))] == L.IPCACHE_VALUE.pack(
        300, L.IP_BOUND
    )
    assert out[cidr_key] == L.IPCACHE_VALUE.pack(301, L.IP_BOUND)
    assert out[wl_key] == L.IPCACHE_VALUE.pack(258, L.IP_WORKLOAD)
    assert dp.bindings() == {"203.0.113.7": 300, "203.0.113.8": 301, "198.51.100.20": 302}


# -- `cport connect --grant` against a scripted gateway ----------------------------------------


def jwt(exp: float, iat: float, n: int) -> str:
    """A token whose claims say when it expires (the client schedules renewals by them; only
    the gateway verifies)."""

    def b64(doc: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none'})}.{b64({'exp': exp, 'iat': iat, 'n': n})}.sig"


Reply = Callable[[str], tuple[int, dict[str, str], dict[str, object]]]


async def scripted_gateway(replies: list[Reply], seen: list[dict[str, str]]) -> asyncio.Server:
    """A gateway answering the n-th request with replies[n](bearer token), then closing."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        headers = {
            k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
        }
        headers["request-line"] = lines[0]
        seen.append(headers)
        token = headers["proxy-authorization"].removeprefix("Bearer ")
        status, extra, body = replies[min(len(seen), len(replies)) - 1](token)
        payload = json.dumps(body).encode()
        phrase = "Granted" if status == 200 else "Refused"
        out = f"HTTP/1.1 {status} {phrase}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in extra.items())
        writer.write(f"{out}Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def granted(identity: int = 300, ttl: float = 2.0) -> Reply:
    def reply(token: str) -> tuple[int, dict[str, str], dict[str, object]]:
        exp = time.time() + ttl
        headers = {
            "Cport-Identity": str(identity),
            "Cport-Address": "203.0.113.7",
            "Cport-Expires-At": f"{exp:.0f}",
        }
        return 200, headers, {"connectTo": "198.51.100.20:6000", "subject": "alice", "token": token}

    return reply


def refused(status: int, reason: str, **body: object) -> Reply:
    return lambda token: (status, {"Cport-Reason": reason}, {"reason": reason, **body})


def test_granter_asks_again_with_a_fresh_token_and_stops_on_a_refusal(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    now = time.time()
    first = jwt(now + 2, now, 1)
    token_file.write_text(first)
    events: list[tuple[str, dict[str, object]]] = []
    seen: list[dict[str, str]] = []

    async def main() -> None:
        server = await scripted_gateway(
            [granted(), granted(), refused(403, "revoked", message="revoked (identity alice)")],
            seen,
        )
        port = server.sockets[0].getsockname()[1]
        granter = Granter(
            "shop/db:6000",
            ("127.0.0.1", port),
            TokenSource(file=token_file),
            retry=0.05,
            on_event=lambda kind, doc: events.append((kind, doc)),
        )
        task = asyncio.create_task(granter.run())
        while not events:
            await asyncio.sleep(0.01)
        assert events[0][0] == "granted" and events[0][1]["connectTo"] == "198.51.100.20:6000"
        assert granter.current is not None and granter.current.identity == 300
        # The token source rotates; the client asks again with the new token before expiry.
        later = time.time()
        token_file.write_text(jwt(later + 2, later, 2))
        while len(events) < 2:
            await asyncio.sleep(0.01)
        # Revoked meanwhile: the next renewal is refused, and that is final.
        later = time.time()
        token_file.write_text(jwt(later + 2, later, 3))
        with pytest.raises(GrantRefused) as err:
            await asyncio.wait_for(task, 10)
        assert err.value.code == "revoked" and err.value.status == 403
        server.close()

    asyncio.run(main())
    assert [k for k, _ in events] == ["granted", "regranted"]
    assert len(seen) == 3
    assert events[1][1]["token"] != first
    assert all(h["request-line"] == "CONNECT db.shop:6000 HTTP/1.1" for h in seen)
    assert all(h["cport-grant"] == "direct" for h in seen)


def test_granter_retries_a_busy_agent_and_names_a_denial(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(jwt(time.time() + 600, time.time(), 1))
    seen: list[dict[str, str]] = []

    async def main() -> tuple[Granter, GrantRefused]:
        busy = await scripted_gateway([refused(503, "grant-not-realised"), granted()], seen)
        granter = Granter(
            "shop/db:6000",
            ("127.0.0.1", busy.sockets[0].getsockname()[1]),
            TokenSource(file=token_file),
            retry=0.05,
        )
        task = asyncio.create_task(granter.run())
        while granter.current is None:
            await asyncio.sleep(0.01)
        task.cancel()
        busy.close()
        deny = await scripted_gateway(
            [refused(403, "default-deny", explanationId="x-1", message="bob may not")], []
        )
        other = Granter(
            "shop/db:6000",
            ("127.0.0.1", deny.sockets[0].getsockname()[1]),
            TokenSource(file=token_file),
        )
        with pytest.raises(GrantRefused) as err:
            await other.run()
        deny.close()
        return granter, err.value

    granter, err = asyncio.run(main())
    assert len(seen) == 2 and granter.current is not None
    assert err.code == "default-deny" and "cport explain --id x-1" in err.message
    assert err.to_json()["explanationId"] == "x-1"


def test_granter_refuses_a_bad_target_and_an_unreachable_gateway(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(jwt(time.time() + 600, time.time(), 1))
    tokens = TokenSource(file=token_file)
    with pytest.raises(CportError) as err:
        Granter("db:6000", ("127.0.0.1", 1), tokens)
    assert err.value.code == "invalid-target"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    with pytest.raises(GrantRefused) as refusal:
        asyncio.run(Granter("shop/db:6000", ("127.0.0.1", port), tokens, timeout=2).run())
    assert refusal.value.code == "gateway-unreachable" and refusal.value.transient


# -- an agent without a kernel enforcer --------------------------------------------------------


def grant_request(
    agent: AgentProcess, token: str, mode: str = "direct"
) -> tuple[int, dict[str, Any]]:
    with socket.create_connection(("127.0.0.1", agent.gateway_port), timeout=10) as s:
        s.sendall(
            f"CONNECT db.shop:5432 HTTP/1.1\r\nHost: db.shop:5432\r\nCport-Grant: {mode}\r\n"
            f"Proxy-Authorization: Bearer {token}\r\n\r\n".encode()
        )
        data = read_to_eof(s)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_gateway_without_a_kernel_enforcer_refuses_grants(
    agent: AgentProcess, issuer: Issuer, tmp_path: Path
) -> None:
    token = issuer.mint("alice", groups=["dba"])
    status, body = grant_request(agent, token)
    assert status == 409 and body["reason"] == "no-kernel-enforcer", body
    status, body = grant_request(agent, token, mode="tunnel")
    assert status == 400 and body["reason"] == "bad-grant-mode", body
    status, body = grant_request(agent, "not-a-token")
    assert status == 407, body

    token_file = tmp_path / "alice.jwt"
    token_file.write_text(token)
    args = [CPORT, "connect", "--to", "shop/db:5432", "--via", f"127.0.0.1:{agent.gateway_port}",
            "--grant", "--token-file", str(token_file)]  # fmt: skip
    out = subprocess.run(
        args, capture_output=True, text=True, timeout=30, env=env_without_proxy(), check=False
    )
    assert out.returncode == 1 and "no-kernel-enforcer" in out.stderr, out.stderr
    out = subprocess.run(
        [*args, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env_without_proxy(),
        check=False,
    )
    assert out.returncode == 1, out.stderr
    assert json.loads(out.stdout)["error"]["code"] == "no-kernel-enforcer"
    out = subprocess.run(
        [*args, "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 2 and "--listen" in out.stderr


def test_binding_never_takes_an_address_past_a_deny() -> None:
    """A deny naming a CIDR (or world) would no longer apply to an address bound to a user:
    such a binding is refused. A deny for every peer denies the user too (no bypass), and
    an address no deny names may be bound."""
    from cport.agent._ebpf import bypassed_deny
    from cport.engine import compile_table, resolve_endpoint
    from cport.model import load_text

    text = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: lockout, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingressDeny:
  - fromCIDR: [203.0.113.0/24]
  ingress:
  - fromEntities: [all]
---
apiVersion: cport.dev/v1alpha1
kind: Workload
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {addresses: [192.0.2.10], serviceAccount: default}
"""
    bundle = load_text(text, "t.yaml")
    alice = Labels.parse("oidc:iss=corp,oidc:sub=alice")
    table = compile_table(bundle.policies, bundle.inventory, extra_identities=[alice])
    user = next(n for n, labels in table.identities.items() if labels == alice)
    denied = resolve_endpoint(table, bundle.inventory, "cidr:203.0.113.9").identity
    elsewhere = resolve_endpoint(table, bundle.inventory, "cidr:198.51.100.9").identity
    ref = bypassed_deny(table, denied, user)
    assert ref is not None and ref.policy.name == "lockout" and ref.deny
    assert bypassed_deny(table, elsewhere, user) is None
    # a deny that names the user as well is no bypass
    assert bypassed_deny(table, denied, denied) is None
