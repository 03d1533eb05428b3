"""The kernel enforces what `decide` decides: allow and deny by identity and port, port
ranges, deny precedence, default deny, unselected workloads, CIDR identities, egress policy
and audit mode — each with real TCP connections between two network namespaces."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cport.ebpf import BpfDatapath
from tests.ebpf.conftest import Estate, decided, workload
from tests.ebpf.netns import Topology

pytestmark = pytest.mark.privileged

API, WEB, DB, DB2 = "192.0.2.10", "192.0.2.11", "198.51.100.20", "198.51.100.21"
OUTSIDE, OUTSIDE_EXCEPT = "203.0.113.5", "203.0.113.200"
INVENTORY = (
    workload("api", API),
    workload("web", WEB),
    workload("db", DB),
    workload("db2", DB2),
)
DB_POLICY = """
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
metadata: {name: db, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  ingress:
    - from: [{workloads: {matchLabels: {app: api}}}]
      ports: [{port: 5432}, {port: 7000, endPort: 7010}]
    - from: [{workloads: {matchLabels: {app: web}}}]
      ports: [{port: 8080}]
    - from: [{cidrSet: [{cidr: 203.0.113.0/24, except: [203.0.113.128/25]}]}]
      ports: [{port: 443}]
"""


def assert_matches_decide(
    topo: Topology, estate: Estate, table: object, flows: list[tuple[str, str, int]]
) -> dict[tuple[str, str, int], bool]:
    from cport.engine import Table

    assert isinstance(table, Table)
    got = topo.tcp_probe(flows)
    want = {f: decided(estate, table, f[0], f[1], f[2]).allowed for f in flows}
    assert got == want
    return got


def test_allow_deny_by_identity_and_port(
    topology: Callable[..., Topology],
    datapath: Callable[..., BpfDatapath],
    estate: Estate,
) -> None:
    topo = topology([API, WEB, OUTSIDE, OUTSIDE_EXCEPT], [DB, DB2])
    listeners = topo.listen_tcp([443, 5432, 6000, 6999, 7000, 7004, 7010, 7011, 8080])
    table = estate.compile(*INVENTORY, DB_POLICY)
    dp = datapath(topo, emit_allowed=False)
    stats = dp.sync(table)
    assert stats.changed and stats.revision == table.revision == dp.realised_revision
    flows = [
        (API, DB, 5432),  # allowed: api on 5432
        (WEB, DB, 5432),  # default deny: web only on 8080
        (API, DB, 6000),  # default deny: no row
        (API, DB, 6999),  # just below the range
        (API, DB, 7000),  # range start
        (API, DB, 7004),  # inside
        (API, DB, 7010),  # range end
        (API, DB, 7011),  # just above
        (WEB, DB, 8080),
        (API, DB, 8080),
        (API, DB2, 6000),  # db2 is selected by nothing: allowed
        (OUTSIDE, DB, 443),  # CIDR identity 203.0.113.0/24
        (OUTSIDE_EXCEPT, DB, 443),  # in the except block: another identity, denied
    ]
    got = assert_matches_decide(topo, estate, table, flows)
    assert [f for f, ok in got.items() if ok] == [
        (API, DB, 5432),
        (API, DB, 7000),
        (API, DB, 7004),
        (API, DB, 7010),
        (WEB, DB, 8080),
        (API, DB2, 6000),
        (OUTSIDE, DB, 443),
    ]
    events = dp.poll_events(timeout_ms=200)
    denied = {(e.src_ip, e.dst_port): e for e in events if e.kind == "denied"}
    assert (WEB, 5432) in denied
    ev = denied[(WEB, 5432)]
    assert ev.verdict == "denied" and ev.reason == "default-deny"
    assert ev.src_identity == estate.identity(table, "shop", "web")
    assert ev.dst_identity == estate.identity(table, "shop", "db")
    assert ev.revision == table.revision
    assert not [e for e in events if e.kind == "allowed"]  # emit_allowed=False
    counters = dp.status()["counters"]
    assert isinstance(counters, dict) and counters["denied"] >= 6
    topo.drain(listeners)


def test_deny_beats_allow_across_policies(
    topology: Callable[..., Topology],
    datapath: Callable[..., BpfDatapath],
    estate: Estate,
) -> None:
    topo = topology([API], [DB])
    topo.listen_tcp([5432, 5433])
    deny = """
    apiVersion: cilium.io/v2
    kind: CiliumClusterwideNetworkPolicy
    metadata: {name: no-api-to-5433}
    spec:
      endpointSelector: {matchLabels: {app: db}}
      ingressDeny:
        - fromEndpoints: [{matchLabels: {app: api}}]
          toPorts: [{ports: [{port: "5433", protocol: TCP}]}]
    """
    allow_both = DB_POLICY.replace("{port: 5432}", "{port: 5432}, {port: 5433}")
    table = estate.compile(*INVENTORY, allow_both, deny)
    dp = datapath(topo)
    dp.sync(table)
    got = assert_matches_decide(topo, estate, table, [(API, DB, 5432), (API, DB, 5433)])
    assert got == {(API, DB, 5432): True, (API, DB, 5433): False}
    events = [e for e in dp.poll_events(timeout_ms=200) if e.dst_port == 5433]
    assert events and events[0].reason == "denied-by-policy"
    names = events[0].policy_names()
    assert "CiliumClusterwideNetworkPolicy//no-api-to-5433" in names


def test_egress_policy_of_the_source(
    topology: Callable[..., Topology],
    datapath: Callable[..., BpfDatapath],
    estate: Estate,
) -> None:
    topo = topology([API, WEB], [DB, DB2])
    topo.listen_tcp([80, 5432])
    egress = """
    apiVersion: cport.dev/v1alpha1
    kind: PortPolicy
    metadata: {name: api-out, namespace: shop}
    spec:
      selector: {matchLabels: {app: api}}
      egress:
        - to: [{workloads: {matchLabels: {app: db}}}]
          ports: [{port: 5432}]
    """
    table = estate.compile(*INVENTORY, egress)
    dp = datapath(topo)
    dp.sync(table)
    flows = [(API, DB, 5432), (API, DB2, 80), (WEB, DB2, 80), (API, DB, 80)]
    got = assert_matches_decide(topo, estate, table, flows)
    assert got == {
        (API, DB, 5432): True,
        (API, DB2, 80): False,  # api's egress: only db:5432
        (WEB, DB2, 80): True,  # nothing governs web or db2
        (API, DB, 80): False,
    }


def test_audit_mode_allows_and_reports(
    topology: Callable[..., Topology],
    datapath: Callable[..., BpfDatapath],
    estate: Estate,
) -> None:
    topo = topology([API, WEB], [DB])
    listeners = topo.listen_tcp([5432, 9000])
    audit = DB_POLICY.replace("spec:\n", "spec:\n  mode: audit\n", 1)
    table = estate.compile(*INVENTORY, audit)
    dp = datapath(topo, event_interval=60.0)
    dp.sync(table)
    flows = [(WEB, DB, 5432), (API, DB, 5432), (API, DB, 9000)]
    got = assert_matches_decide(topo, estate, table, flows)
    assert all(got.values())
    assert decided(estate, table, WEB, DB, 5432).verdict.value == "audit"
    events = dp.poll_events(timeout_ms=200)
    audits = {(e.src_ip, e.dst_port): e for e in events if e.kind == "audit"}
    assert set(audits) == {(WEB, 5432), (API, 9000)}
    ev = audits[(WEB, 5432)]
    assert ev.verdict == "audit" and ev.reason == "audit" and ev.allowed
    assert ev.policy_names() == ["PortPolicy/shop/db"]
    # a second connection of the same flow within the interval is not reported again
    topo.tcp_probe([(WEB, DB, 5432)])
    assert not [e for e in dp.poll_events(timeout_ms=100) if e.kind == "audit"]
    assert dp.status()["counters"]["events_rate_limited"] >= 1  # type: ignore[index]
    topo.drain(listeners)


def test_ipv6_flows_and_neighbour_discovery(
    topology: Callable[..., Topology],
    datapath: Callable[..., BpfDatapath],
    estate: Estate,
) -> None:
    api6, web6, db6 = "2001:db8:1::10", "2001:db8:1::11", "2001:db8:2::20"
    topo = topology([api6, web6], [db6])
    listeners = topo.listen_tcp([5432, 7005])
    inventory = (workload("api", api6), workload("web", web6), workload("db", db6))
    table = estate.compile(*inventory, DB_POLICY)
    dp = datapath(topo)
    dp.sync(table)
    flows = [(api6, db6, 5432), (web6, db6, 5432), (api6, db6, 7005), (api6, db6, 6000)]
    got = assert_matches_decide(topo, estate, table, flows)
    assert got == {flows[0]: True, flows[1]: False, flows[2]: True, flows[3]: False}
    assert f"{db6}/128" in [e.prefix for e in dp.ipcache_entries()]
    counters = dp.status()["counters"]
    assert isinstance(counters, dict) and counters["passthrough"] > 0  # neighbour discovery
    topo.drain(listeners)


def test_ipv6_extension_headers_fail_closed(
    topology: Callable[..., Topology],
    datapath: Callable[..., BpfDatapath],
    estate: Estate,
) -> None:
    """A TCP segment behind a Destination Options header must not be decided as "port 0"
    (which a deny-only policy allows): packets whose transport header sits behind an
    extension header are dropped."""
    import socket

    from tests.ebpf.netns import in_netns

    api6, db6 = "2001:db8:1::10", "2001:db8:2::20"
    topo = topology([api6], [db6])
    listeners = topo.listen_tcp([22])
    deny_only = """
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
metadata: {name: no-ssh, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  enableDefaultDeny: {ingress: false, egress: false}
  ingressDeny:
    - from: [{workloads: {matchLabels: {app: api}}}]
      ports: [{port: 22}]
"""
    table = estate.compile(workload("api", api6), workload("db", db6), deny_only)
    assert not decided(estate, table, api6, db6, 22).allowed
    dp = datapath(topo)
    dp.sync(table)
    assert topo.tcp_probe([(api6, db6, 22)]) == {(api6, db6, 22): False}
    # The same connection with an (empty, padded) Destination Options header on every packet.
    pad_n = bytes([0, 0, 1, 4, 0, 0, 0, 0])  # next header and length (kernel fills), PadN
    with in_netns(topo.client):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, pad_n)
        s.bind((api6, 0))
        s.settimeout(1.0)
        with pytest.raises(OSError):
            s.connect((db6, 22))
    finally:
        s.close()
    assert dp.status()["counters"]["malformed"] > 0  # type: ignore[index]
    topo.drain(listeners)
