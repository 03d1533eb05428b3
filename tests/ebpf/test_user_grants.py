"""Grants for credential identities that have no address of their own (OIDC users): the
agent binds the client's address to the user's identity in the kernel's ipcache and grants
(user identity, address) until the token expires or is revoked; `cport connect --grant`
asks the gateway for it. End to end in two network namespaces: the agent, its gateway and
the workload in one, users (and a workload client) in the other.

The datapath half (`BpfDatapath.bind/unbind`) is checked directly too: bindings survive
syncs, are refused over workload addresses and other identities' bindings, give an address
its CIDR identity back when they end, and do not outlive a restart (the new process's first
sync realises only the table and the bindings it knows)."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cport.ebpf import BpfDatapath
from cport.engine import Table
from cport.errors import EbpfError
from tests.agent.harness import CPORT, Issuer, read_line, wait_for
from tests.ebpf.conftest import Estate, workload
from tests.ebpf.netns import Topology, in_netns, run
from tests.ebpf.test_agent import Agent

pytestmark = pytest.mark.privileged

API = "192.0.2.10"  # a workload (client side)
ALICE_ADDR, OTHER_ADDR = "203.0.113.7", "203.0.113.8"  # users' machines: no workload's
DB, GW = "198.51.100.20", "198.51.100.5"  # the workload; the agent's gateway
GW_PORT = 8443

POLICY = """\
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
metadata: {name: db, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  ingress:
    - from: [{workloads: {matchLabels: {app: api}}}]
      ports: [{port: 5432}]
    - from: [{users: {issuer: corp, claims: {groups: [dba]}}}]
      ports: [{port: 6000}]
      authentication: required
"""

INVENTORY = f"""\
apiVersion: cport.dev/v1alpha1
kind: Workload
metadata: {{name: api, namespace: shop, labels: {{app: api}}}}
spec: {{serviceAccount: api, addresses: [{API}]}}
---
apiVersion: cport.dev/v1alpha1
kind: Workload
metadata: {{name: db, namespace: shop, labels: {{app: db}}}}
spec:
  serviceAccount: db
  addresses: [{DB}]
  ports: [{{port: 5432}}, {{port: 6000}}]
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CPORT, *args], capture_output=True, text=True, timeout=30, check=False)


def bpf_json(what: str, pin_root: Path) -> list[dict[str, object]]:
    out = cli("bpf", what, "--pin-root", str(pin_root), "-o", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert isinstance(doc, list)
    return doc


def bound(pin_root: Path) -> dict[str, object]:
    """Bound ipcache entries of the active generation: prefix → identity."""
    return {
        str(e["prefix"]): e["identity"]
        for e in bpf_json("ipcache", pin_root)
        if e["kind"] == "bound"
    }


def kernel_grants(pin_root: Path) -> set[tuple[object, object]]:
    return {(g["peerIdentity"], g["address"]) for g in bpf_json("grants", pin_root) if g["live"]}


def gateway_grant(
    topo: Topology, src: str, token: str, target: str = "db.shop:6000"
) -> tuple[int, dict[str, str], dict[str, object]]:
    """`CONNECT target` with `Cport-Grant: direct` from `src` in the client namespace:
    (status, headers, JSON body). The gateway answers and closes."""
    with in_netns(topo.client):
        s = socket.socket()
    try:
        s.settimeout(10)
        s.bind((src, 0))
        s.connect((GW, GW_PORT))
        s.sendall(
            f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nCport-Grant: direct\r\n"
            f"Proxy-Authorization: Bearer {token}\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body or b"{}")


def open_flow(
    topo: Topology, listener: socket.socket, src: str, port: int
) -> tuple[socket.socket, socket.socket]:
    """An established TCP connection src → DB:port: (client end, server end)."""
    with in_netns(topo.client):
        c = socket.socket()
    c.settimeout(3)
    c.bind((src, 0))
    c.connect((DB, port))
    want = c.getsockname()[1]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # skip connections earlier probes left queued
        ready, _, _ = select.select([listener], [], [], deadline - time.monotonic())
        if not ready:
            break
        srv, peer = listener.accept()
        if peer[1] == want:
            srv.settimeout(3)
            return c, srv
        srv.close()
    c.close()
    raise AssertionError("the server never saw the connection")


def delivered(c: socket.socket, srv: socket.socket, data: bytes, wait: float = 1.5) -> bool:
    c.sendall(data)
    ready, _, _ = select.select([srv], [], [], wait)
    return bool(ready) and srv.recv(65536) == data


@pytest.fixture
def estate_agent(
    tmp_path: Path, topology: Callable[..., Topology], shared_pin_root: Path
) -> Iterator[tuple[Topology, Agent, Issuer, Path]]:
    """(topology, agent, issuer, pin root): the agent with its gateway on GW, datapath on the
    server veth, an OIDC issuer `corp`; everything removed afterwards."""
    topo = topology([ALICE_ADDR, OTHER_ADDR, API], [DB, GW])
    # Users' requests to the gateway leave from ALICE_ADDR unless a test binds another.
    run("ip", "netns", "exec", topo.client, "ip", "route", "replace", f"{GW}/32", "dev",
        topo.client_if, "src", ALICE_ADDR)  # fmt: skip
    with in_netns(topo.server):  # the agent runs there: its issuer's JWKS must be reachable
        issuer = Issuer()
    agent = Agent(
        tmp_path / "agent", topo, shared_pin_root, issuer, policy=POLICY, inventory=INVENTORY,
        issuer_name="corp", issuer_kind=None, gateway=f"{GW}:{GW_PORT}",
    )  # fmt: skip
    try:
        agent.start()
        yield topo, agent, issuer, shared_pin_root
    finally:
        agent.stop()
        issuer.close()
        dp = BpfDatapath(topo.server_if, netns=topo.server, pin_root=shared_pin_root)
        try:
            dp.open()
        finally:
            dp.close(detach=True, unpin=True)


def test_cport_connect_grant_opens_a_direct_port_until_revoked(
    tmp_path: Path, estate_agent: tuple[Topology, Agent, Issuer, Path]
) -> None:
    topo, agent, issuer, pin_root = estate_agent
    (listener,) = topo.listen_tcp([6000])
    topo.listen_tcp([5432])
    alice = (ALICE_ADDR, DB, 6000)
    # No grant: the auth-required port is closed to the user's machine (world).
    assert topo.tcp_probe([alice]) == {alice: False}

    # A user without a policy is refused by the gateway, with an explanation.
    status, headers, body = gateway_grant(topo, OTHER_ADDR, issuer.mint("bob", groups=["dev"]))
    assert status == 403 and body["reason"] == "default-deny", body
    assert headers["cport-reason"] == "default-deny" and headers["cport-explanation"]
    assert body["explanationId"] == headers["cport-explanation"]
    assert bound(pin_root) == {}

    # `cport connect --grant` (a real process, in the client namespace) asks for the grant.
    token_file = tmp_path / "alice.jwt"
    token_file.write_text(issuer.mint("alice", groups=["dba"], ttl=600))
    err = tmp_path / "connect.err"
    with open(err, "wb") as err_file:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", topo.client, CPORT, "connect", "--to", "shop/db:6000",
             "--via", f"{GW}:{GW_PORT}", "--grant", "--token-file", str(token_file), "-o", "json"],
            stdout=subprocess.PIPE, stderr=err_file,
        )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = read_line(proc.stdout, 30)
        assert line.endswith(b"\n"), (line, err.read_text())
        doc = json.loads(line)
        assert doc["event"] == "granted" and doc["address"] == ALICE_ADDR, doc
        assert doc["connectTo"] == f"{DB}:6000" and doc["bound"] is True, doc
        ident = doc["identity"]
        assert isinstance(ident, int) and ident >= 256

        # The user's machine now reaches the port directly; nothing else opened: not
        # another machine, not a port the user has no policy for.
        other, db5432 = (OTHER_ADDR, DB, 6000), (ALICE_ADDR, DB, 5432)
        got = topo.tcp_probe([alice, other, db5432])
        assert got == {alice: True, other: False, db5432: False}
        assert bound(pin_root) == {f"{ALICE_ADDR}/32": ident}
        assert kernel_grants(pin_root) == {(ident, ALICE_ADDR)}
        grants = agent.api("GET", "/v1/grants").json()["grants"]
        assert [(g["identity"], g["address"], g["bound"]) for g in grants] == [
            (ident, ALICE_ADDR, True)
        ]
        c, srv = open_flow(topo, listener, ALICE_ADDR, 6000)
        try:
            assert delivered(c, srv, b"before")

            # The gateway's decision is in the audit record, its close event says granted.
            events = agent.api("GET", "/v1/audit/events", params={"subject": "alice"}).json()
            kinds = {(e["kind"], e["verdict"], e.get("termination", "")) for e in events["events"]}
            assert ("decision", "allowed", "") in kinds and ("close", "allowed", "granted") in kinds

            # `cport revoke --identity alice` cuts the established flow and removes the
            # grant and the binding.
            out = cli("revoke", "--identity", "alice", "--socket", str(agent.socket))
            assert out.returncode == 0, out.stderr
            assert wait_for(lambda: not agent.api("GET", "/v1/grants").json()["grants"])
            assert not delivered(c, srv, b"after")
        finally:
            c.close()
            srv.close()
        assert topo.tcp_probe([alice]) == {alice: False}
        assert bound(pin_root) == {}
        assert kernel_grants(pin_root) == set()
        # Revoked, alice gets no new grant either.
        status, _, body = gateway_grant(topo, ALICE_ADDR, issuer.mint("alice", groups=["dba"]))
        assert status == 403 and body["reason"] == "revoked", body
    finally:
        proc.send_signal(signal.SIGTERM)
        code: int | None
        try:
            code = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            code = None
        proc.stdout.close()
    # SIGTERM ends it cleanly; until then it reported nothing but the grant.
    assert code == 0, err.read_text()


def test_grant_expires_with_the_token_and_one_address_is_one_identity(
    estate_agent: tuple[Topology, Agent, Issuer, Path],
) -> None:
    topo, agent, issuer, pin_root = estate_agent
    topo.listen_tcp([6000])
    alice = (ALICE_ADDR, DB, 6000)
    assert topo.tcp_probe([alice]) == {alice: False}

    # Through the API: a short-lived token binds the address for its identity...
    short = issuer.mint("alice", groups=["dba"], ttl=5)
    expires = time.time() + 5
    r = agent.api("POST", "/v1/grants", json={"token": short, "address": ALICE_ADDR})
    assert r.status_code == 201, r.text
    grant = r.json()["grant"]
    assert grant["bound"] is True and grant["address"] == ALICE_ADDR
    ident = grant["identity"]
    assert topo.tcp_probe([alice]) == {alice: True}

    # ...the same identity again refreshes it (the newest credential's expiry)...
    again = agent.api("POST", "/v1/grants", json={"token": short, "address": ALICE_ADDR})
    assert again.status_code == 201 and again.json()["grant"]["identity"] == ident

    # ...another user's grant for that address is refused while alice's is live (API and
    # gateway alike), and a workload's address is never bound to a user.
    carol = issuer.mint("carol", groups=["dba"])
    r = agent.api("POST", "/v1/grants", json={"token": carol, "address": ALICE_ADDR})
    assert r.status_code == 409 and r.json()["error"]["code"] == "address-bound", r.text
    status, headers, body = gateway_grant(topo, ALICE_ADDR, carol)
    assert status == 409 and headers["cport-reason"] == "address-bound", body
    r = agent.api("POST", "/v1/grants", json={"token": short, "address": API})
    assert r.status_code == 400 and r.json()["error"]["code"] == "grant-identity-mismatch"
    status, _, body = gateway_grant(topo, API, issuer.mint("alice", groups=["dba"]))
    assert status == 403 and body["reason"] == "grant-identity-mismatch", body
    assert bound(pin_root) == {f"{ALICE_ADDR}/32": ident}

    # The token expires: the kernel stops admitting at once, the agent removes the grant
    # and the binding.
    time.sleep(max(0.0, expires - time.time()) + 0.3)
    assert topo.tcp_probe([alice]) == {alice: False}
    assert wait_for(lambda: not agent.api("GET", "/v1/grants").json()["grants"], timeout=5)
    assert bound(pin_root) == {}
    assert (ident, ALICE_ADDR) not in kernel_grants(pin_root)

    # The address is free again: carol's grant binds it to her identity.
    status, headers, body = gateway_grant(topo, ALICE_ADDR, carol)
    assert status == 200, body
    assert headers["cport-address"] == ALICE_ADDR and int(headers["cport-identity"]) != ident
    assert float(headers["cport-expires-at"]) > time.time()
    carol_id = int(headers["cport-identity"])
    assert bound(pin_root) == {f"{ALICE_ADDR}/32": carol_id}
    assert topo.tcp_probe([alice]) == {alice: True}

    # A killed agent leaves the kernel enforcing as it was; a restarted one does not know
    # the binding, so its first sync removes it (and the grant it served): carol asks again.
    agent.stop(signal.SIGKILL)
    assert topo.tcp_probe([alice]) == {alice: True}
    agent.socket.unlink()  # the dead agent's (the new one would replace it too)
    agent.start()
    assert bound(pin_root) == {}
    assert (carol_id, ALICE_ADDR) not in kernel_grants(pin_root)
    assert topo.tcp_probe([alice]) == {alice: False}
    status, _, body = gateway_grant(topo, ALICE_ADDR, carol)
    assert status == 200 and topo.tcp_probe([alice]) == {alice: True}, body


# -- the datapath alone ------------------------------------------------------------------------

USER = "labels:oidc:iss=corp,oidc:sub=alice,oidc:groups=dba"
OTHER_USER = "labels:oidc:iss=corp,oidc:sub=carol,oidc:groups=dba"


def _estate(port: int, open_port: int = 7000) -> tuple[str, ...]:
    """db: the users' auth-required `port`, their `open_port` without authentication, and
    5432 for OTHER_ADDR's CIDR identity."""
    return (
        workload("db", DB),
        f"""
        apiVersion: cport.dev/v1alpha1
        kind: PortPolicy
        metadata: {{name: db, namespace: shop}}
        spec:
          selector: {{matchLabels: {{app: db}}}}
          ingress:
            - from: [{{users: {{issuer: corp, claims: {{groups: [dba]}}}}}}]
              ports: [{{port: {port}}}]
              authentication: required
            - from: [{{users: {{issuer: corp, claims: {{groups: [dba]}}}}}}]
              ports: [{{port: {open_port}}}]
            - from: [{{cidr: [{OTHER_ADDR}/32]}}]
              ports: [{{port: 5432}}]
        """,
    )


def _identity(table: Table, spec: str) -> int:
    from cport.engine._flow import labels_spec

    labels = labels_spec(spec)
    return next(n for n, lab in table.identities.items() if lab == labels)


def test_datapath_bindings_survive_syncs_restore_cidr_and_end_with_a_restart(
    estate: Estate,
    topology: Callable[..., Topology],
    datapath: Callable[..., BpfDatapath],
) -> None:
    topo = topology([ALICE_ADDR, OTHER_ADDR], [DB])
    topo.listen_tcp([6000, 5432, 6001])
    table = estate.compile(*_estate(6000), extra=(USER, OTHER_USER))
    user, carol = _identity(table, USER), _identity(table, OTHER_USER)
    dp = datapath(topo)
    dp.sync(table)
    a6000, b5432 = (ALICE_ADDR, DB, 6000), (OTHER_ADDR, DB, 5432)
    assert topo.tcp_probe([a6000, b5432]) == {a6000: False, b5432: True}

    # The grant check still holds: the address resolves to world, not to the user.
    with pytest.raises(EbpfError) as err:
        dp.grant(user, ALICE_ADDR, time.time() + 60)
    assert err.value.code == "grant-identity-mismatch"
    with pytest.raises(EbpfError) as err:
        dp.bind(DB, user)
    assert err.value.code == "bind-workload-address"

    dp.bind(ALICE_ADDR, user)
    dp.grant(user, ALICE_ADDR, time.time() + 60)
    assert topo.tcp_probe([a6000]) == {a6000: True}
    with pytest.raises(EbpfError) as err:
        dp.bind(ALICE_ADDR, carol)
    assert err.value.code == "address-bound"
    assert {(e.prefix, e.identity, e.kind) for e in dp.ipcache_entries() if e.kind == "bound"} == {
        (f"{ALICE_ADDR}/32", user, "bound")
    }

    # A policy change switches generations; the binding is in the new one.
    table2 = estate.update(_estate(6001)[1])
    stats = dp.sync(table2)
    assert stats.changed
    a6001 = (ALICE_ADDR, DB, 6001)
    assert topo.tcp_probe([a6000, a6001]) == {a6000: False, a6001: True}

    # A binding over a CIDR identity's own /32 gives it back when it ends; flows admitted
    # under the binding are forgotten and decided again.
    dp.bind(OTHER_ADDR, carol)
    dp.grant(carol, OTHER_ADDR, time.time() + 60)
    b6001 = (OTHER_ADDR, DB, 6001)
    assert topo.tcp_probe([b5432, b6001]) == {b5432: False, b6001: True}
    assert dp.unbind(OTHER_ADDR, carol)
    assert not dp.unbind(OTHER_ADDR)
    assert topo.tcp_probe([b5432, b6001]) == {b5432: True, b6001: False}
    assert {e.prefix: e.kind for e in dp.ipcache_entries()}[f"{OTHER_ADDR}/32"] == "cidr"

    # A new process adopts the pinned maps: the binding keeps enforcing until its first
    # sync, which realises only the table and the bindings it knows (none).
    dp.close()
    dp2 = datapath(topo)
    assert dp2.adopted
    assert topo.tcp_probe([a6001]) == {a6001: True}
    dp2.sync(table2)
    assert topo.tcp_probe([a6001]) == {a6001: False}
    assert [e for e in dp2.ipcache_entries() if e.kind == "bound"] == []


def test_unbind_cuts_established_flows_admitted_without_a_grant(
    estate: Estate,
    topology: Callable[..., Topology],
    datapath: Callable[..., BpfDatapath],
) -> None:
    """A flow the binding admitted through a plain allow row (no grant to re-check on every
    packet) is cached in conntrack under the current epoch; unbinding forgets it, so its next
    packet is decided again — as world, and dropped."""
    topo = topology([ALICE_ADDR], [DB])
    (listener,) = topo.listen_tcp([7000])
    table = estate.compile(*_estate(6000, open_port=7000), extra=(USER,))
    user = _identity(table, USER)
    dp = datapath(topo)
    dp.sync(table)
    probe = (ALICE_ADDR, DB, 7000)
    assert topo.tcp_probe([probe]) == {probe: False}
    dp.bind(ALICE_ADDR, user)
    c, srv = open_flow(topo, listener, ALICE_ADDR, 7000)
    try:
        assert delivered(c, srv, b"bound")
        assert dp.conntrack_entries() > 0
        epoch = dp.epoch
        assert dp.unbind(ALICE_ADDR)
        assert dp.epoch == epoch  # no generation switch: conntrack alone forgets the flow
        assert not delivered(c, srv, b"unbound")
    finally:
        c.close()
        srv.close()
