"""Grants: an auth-required row admits a peer only while it holds a live grant — before a
grant, with one, after it expires and after it is revoked — and every drop is an event
that becomes an audit event."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from cport.ebpf import BpfDatapath, to_audit_event
from cport.errors import EbpfError
from tests.ebpf.conftest import Estate, decided, workload
from tests.ebpf.netns import Topology

pytestmark = pytest.mark.privileged

API, WEB, DB = "192.0.2.10", "192.0.2.11", "198.51.100.20"
POLICY = """
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
metadata: {name: db, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  ingress:
    - from: [{workloads: {matchLabels: {app: api}}}]
      ports: [{port: 5432, protocol: ANY}]
      authentication: required
    - from: [{workloads: {matchLabels: {app: web}}}]
      ports: [{port: 8080}]
"""


def test_auth_required_needs_a_live_grant(
    topology: Callable[..., Topology],
    datapath: Callable[..., BpfDatapath],
    estate: Estate,
) -> None:
    topo = topology([API, WEB], [DB])
    listeners = topo.listen_tcp([5432, 8080])
    table = estate.compile(workload("api", API), workload("web", WEB), workload("db", DB), POLICY)
    api_id = estate.identity(table, "shop", "api")
    assert decided(estate, table, API, DB, 5432).verdict.value == "auth-required"
    dp = datapath(topo)
    dp.sync(table)
    flow = (API, DB, 5432)

    # no grant: dropped, and reported
    assert topo.tcp_probe([flow, (WEB, DB, 8080)]) == {flow: False, (WEB, DB, 8080): True}
    events = [e for e in dp.poll_events(timeout_ms=200) if e.dst_port == 5432]
    assert [(e.kind, e.verdict, e.reason) for e in events] == [
        ("auth-required", "auth-required", "auth-required")
    ]
    audit = to_audit_event(events[0], node="n1", table=table)
    assert (audit.enforcer, audit.verdict, audit.reason, audit.node) == (
        "ebpf", "auth-required", "auth-required", "n1",
    )  # fmt: skip
    assert (audit.workload, audit.subject, audit.peer_identity) == ("shop/db", "shop/api", api_id)
    assert [(p.kind, p.namespace, p.name, p.revision) for p in audit.policies] == [
        ("PortPolicy", "shop", "db", table.revision)
    ]
    assert "k8s:app=api" in audit.peer_labels and audit.protocol == "TCP"

    # a grant for another identity than the address has could never match: refused
    with pytest.raises(EbpfError) as info:
        dp.grant(api_id + 1000, API, time.time() + 60)
    assert info.value.code == "grant-identity-mismatch"

    # with a grant: admitted, reason authenticated
    dp.grant(api_id, API, time.time() + 60)
    [g] = dp.grant_entries()
    assert (g.peer_identity, g.address, g.live) == (api_id, API, True)
    assert abs(g.expires_at - (time.time() + 60)) < 1  # wall clock ↔ boot clock round trip
    assert topo.tcp_probe([flow]) == {flow: True}
    allowed = [e for e in dp.poll_events(timeout_ms=200) if e.kind == "allowed"]
    assert allowed and allowed[0].authenticated and allowed[0].reason == "authenticated"

    # revoked: new connections are dropped again
    assert dp.revoke(peer_identity=api_id) == 1
    assert dp.grant_entries() == []
    assert topo.tcp_probe([flow]) == {flow: False}

    # a grant already expired is no grant
    dp.grant(api_id, API, time.time() - 5)
    assert dp.grant_entries() == []
    with pytest.raises(ValueError):
        dp.revoke()
    topo.drain(listeners)


def test_grant_expiry_cuts_an_established_flow(
    topology: Callable[..., Topology],
    datapath: Callable[..., BpfDatapath],
    estate: Estate,
) -> None:
    topo = topology([API], [DB])
    server = topo.udp_socket(topo.server, "0.0.0.0", 5432)
    server.settimeout(0.3)
    client = topo.udp_socket(topo.client, API, 40000)
    table = estate.compile(workload("api", API), workload("db", DB), POLICY)
    api_id = estate.identity(table, "shop", "api")
    dp = datapath(topo)
    dp.sync(table)
    expires = time.time() + 1.0
    dp.grant(api_id, API, expires)

    def delivered(n: int) -> int:
        got = 0
        for i in range(n):
            client.sendto(b"%d" % i, (DB, 5432))
        try:
            for _ in range(n):
                server.recvfrom(16)
                got += 1
        except TimeoutError:
            pass
        return got

    assert delivered(20) == 20  # one flow, admitted by the grant and tracked
    time.sleep(max(0.0, expires - time.time()) + 0.3)
    assert [g.live for g in dp.grant_entries()] == [False]
    assert delivered(20) == 0  # the same flow, after the grant expired
    kinds = [e.kind for e in dp.poll_events(timeout_ms=200)]
    assert "auth-required" in kinds
    assert dp.prune_grants() == 1 and dp.grant_entries() == []


def test_replies_stop_when_the_grant_is_revoked_or_the_policy_changes(
    topology: Callable[..., Topology],
    datapath: Callable[..., BpfDatapath],
    estate: Estate,
) -> None:
    """Server push on a tracked flow (the client sends nothing more) is cut at once by a
    revocation and by a policy that no longer allows the flow — not only at the client's
    next packet."""
    topo = topology([API], [DB])
    server = topo.udp_socket(topo.server, DB, 5432)
    client = topo.udp_socket(topo.client, API, 40001)
    client.settimeout(0.3)
    inventory = (workload("api", API), workload("db", DB))
    # The api takes nothing unsolicited from the db: only replies of its own flows reach it.
    api_policy = """
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  ingress:
    - from: [{workloads: {matchLabels: {app: web}}}]
      ports: [{port: 8080}]
"""
    table = estate.compile(*inventory, POLICY, api_policy)
    assert not decided(estate, table, DB, API, 40001, 17).allowed
    api_id = estate.identity(table, "shop", "api")
    dp = datapath(topo)
    dp.sync(table)

    def pushed(n: int) -> int:
        for i in range(n):
            server.sendto(b"%d" % i, (API, 40001))
        got = 0
        try:
            for _ in range(n):
                client.recvfrom(16)
                got += 1
        except TimeoutError:
            pass
        return got

    def open_flow() -> None:
        client.sendto(b"hello", (DB, 5432))
        server.settimeout(2)
        server.recvfrom(16)

    dp.grant(api_id, API, time.time() + 60)
    open_flow()
    assert pushed(10) == 10
    assert dp.revoke(peer_identity=api_id) == 1
    assert pushed(10) == 0

    dp.grant(api_id, API, time.time() + 60)
    open_flow()
    assert pushed(10) == 10
    changed = estate.update(POLICY.replace("app: api", "app: nobody"))
    assert not decided(estate, changed, API, DB, 5432, 17).allowed
    dp.sync(changed)
    assert pushed(10) == 0
