"""Kernel verdicts agree with `cport.engine.decide` on generated estates: random PortPolicies
and cluster-wide Cilium policies (allow and deny, ranges, every port, CIDR and entity peers,
egress rules, audit mode, default deny off, authentication with and without grants), and
every flow from every client address to every server address on a few ports, over TCP and
UDP, all with real packets."""

from __future__ import annotations

import errno
import random
import select
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from cport.ebpf import BpfDatapath
from tests.ebpf.conftest import Estate, decided, workload
from tests.ebpf.netns import Topology, in_netns

pytestmark = pytest.mark.privileged

SERVERS = [f"198.51.100.{10 + i}" for i in range(4)]
CLIENTS = [f"192.0.2.{10 + i}" for i in range(4)]
OUTSIDE = ["203.0.113.5", "203.0.113.70", "203.0.113.200"]
PORTS = [80, 443, 5432, 8080, 9000]
APPS = ["db", "api", "web"]
Flow = tuple[str, str, int, int]  # src, dst, port, protocol


def peers(rng: random.Random, direction: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 2)):
        kind = rng.randint(0, 6)
        if kind <= 2:
            ns = {"namespace": "*"} if rng.random() < 0.5 else {}
            out.append({"workloads": {**ns, "matchLabels": {"app": rng.choice(APPS)}}})
        elif kind == 3 and direction == "ingress":
            out.append({"cidrSet": [{"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}]})
        elif kind == 3:
            out.append({"cidr": ["198.51.100.0/24"]})
        elif kind == 4:
            out.append({"entities": [rng.choice(["world", "cluster", "all"])]})
        else:
            out.append({"workloads": {"namespace": "*", "matchLabels": {"tier": rng.choice("ab")}}})
    return out


def ports(rng: random.Random) -> list[dict[str, Any]] | None:
    if rng.random() < 0.15:
        return None  # every port of every protocol
    out = []
    for _ in range(rng.randint(1, 3)):
        proto = rng.choice(["TCP", "UDP", "ANY", "ANY"])
        if rng.random() < 0.35:
            lo = rng.choice([1, *PORTS])
            hi = rng.choice([p for p in [*PORTS, 65535] if p >= lo])
            out.append({"port": lo, "endPort": hi, "protocol": proto})
        else:
            out.append({"port": rng.choice(PORTS), "protocol": proto})
    return out


def rule(rng: random.Random, direction: str, *, auth: bool) -> dict[str, Any]:
    key = "from" if direction == "ingress" else "to"
    r: dict[str, Any] = {}
    if rng.random() > 0.1:
        r[key] = peers(rng, direction)
    found = ports(rng)
    if found is not None:
        r["ports"] = found
    if auth and rng.random() < 0.3:
        r["authentication"] = "required"
    return r


def policy(rng: random.Random, i: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {
            "matchLabels": rng.choice([{"app": rng.choice(APPS)}, {"tier": rng.choice("ab")}])
        }
    }
    if rng.random() < 0.25:
        spec["mode"] = "audit"
    if rng.random() < 0.15:
        spec["enableDefaultDeny"] = {"ingress": False, "egress": rng.random() < 0.5}
    spec["ingress"] = [rule(rng, "ingress", auth=True) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.35:
        spec["ingressDeny"] = [rule(rng, "ingress", auth=False)]
    if rng.random() < 0.2:
        spec["egress"] = [rule(rng, "egress", auth=False) for _ in range(rng.randint(1, 2))]
    if rng.random() < 0.1:
        spec["egressDeny"] = [rule(rng, "egress", auth=False)]
    return {
        "apiVersion": "cport.dev/v1alpha1",
        "kind": "PortPolicy",
        "metadata": {"name": f"p{i}", "namespace": "shop"},
        "spec": spec,
    }


def estate_docs(rng: random.Random) -> list[str]:
    docs = []
    sides = [("s", SERVERS, "shop"), ("c", CLIENTS, None)]
    for prefix, addrs, ns in sides:
        for i, addr in enumerate(addrs):
            doc = workload(
                f"{prefix}{i}", addr, app=rng.choice(APPS), ns=ns or rng.choice(["shop", "ops"])
            )
            docs.append(doc.replace("labels: {app:", f"labels: {{tier: {rng.choice('ab')}, app:"))
    docs.extend(yaml.safe_dump(policy(rng, i), sort_keys=False) for i in range(rng.randint(2, 5)))
    return docs


def probe(topo: Topology, flows: list[Flow], timeout: float = 0.8) -> dict[Flow, bool]:
    """TCP handshakes and UDP datagrams for every flow at once; True where it arrived."""
    tcp = [f for f in flows if f[3] == 6]
    result = dict.fromkeys(flows, False)
    udp_servers = []
    with in_netns(topo.server):
        for port in PORTS:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("0.0.0.0", port))
            s.setblocking(False)
            udp_servers.append(s)
    socks: dict[socket.socket, Flow] = {}
    try:
        with in_netns(topo.client):
            for f in flows:
                src, dst, port, proto = f
                kind = socket.SOCK_STREAM if proto == 6 else socket.SOCK_DGRAM
                s = socket.socket(socket.AF_INET, kind)
                socks[s] = f
                s.setblocking(False)
                s.bind((src, 0))
                if proto == 6:
                    rc = s.connect_ex((dst, port))
                    assert rc in (0, errno.EINPROGRESS), rc
                else:
                    s.sendto(b"%s %d" % (src.encode(), port), (dst, port))
        pending = {s for s, f in socks.items() if f[3] == 6}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = max(0.0, deadline - time.monotonic())
            readable, writable, _ = select.select(udp_servers, list(pending), [], left)
            for s in writable:
                pending.discard(s)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    result[socks[s]] = True
            for s in readable:
                while True:
                    try:
                        data, (src, _) = s.recvfrom(64)
                    except BlockingIOError:
                        break
                    dst_port = int(data.split()[1])
                    dsts = [f for f in flows if f[3] == 17 and f[0] == src and f[2] == dst_port]
                    for f in dsts:
                        result[f] = True if len(dsts) == 1 else result[f]
    finally:
        for s in [*socks, *udp_servers]:
            s.close()
    assert tcp  # the batch always holds TCP flows
    return result


# Seeds chosen for their mix of reasons (allowed, not-selected, no-default-deny, default-deny,
# denied-by-policy, audit, auth-required: every one appears across them).
@pytest.mark.parametrize("seed", [2, 3, 6, 9])
def test_kernel_verdicts_agree_with_decide(
    seed: int,
    topology: Callable[..., Topology],
    datapath: Callable[..., BpfDatapath],
    estate: Estate,
) -> None:
    rng = random.Random(seed)
    topo = topology([*CLIENTS, *OUTSIDE], SERVERS)
    listeners = topo.listen_tcp(PORTS)
    table = estate.compile(*estate_docs(rng))
    dp = datapath(topo, emit_allowed=False)
    dp.sync(table)
    granted: set[str] = set()
    for addr in [*CLIENTS, *OUTSIDE]:
        if rng.random() < 0.5:
            dp.grant(_identity(estate, table, addr), addr, time.time() + 300)
            granted.add(addr)
    # UDP flows are told apart by (source, port): one destination per source for UDP
    flows: list[Flow] = []
    for i, src in enumerate([*CLIENTS, *OUTSIDE]):
        for dst in SERVERS:
            for port in PORTS:
                flows.append((src, dst, port, 6))
        for port in PORTS:
            flows.append((src, SERVERS[(i + port) % len(SERVERS)], port, 17))
    got = probe(topo, flows)
    want = {}
    for f in flows:
        decision = decided(estate, table, f[0], f[1], f[2], f[3])
        if decision.verdict.value == "auth-required" and f[0] in granted:
            decision = _authenticated(estate, table, f)
        want[f] = decision.allowed
    wrong = {f: (got[f], want[f]) for f in flows if got[f] != want[f]}
    assert not wrong, f"kernel vs decide (got, want): {wrong}"
    assert set(want.values()) == {True, False}, "a batch with one outcome proves little"
    topo.drain(listeners)


def _identity(estate: Estate, table: Any, addr: str) -> int:
    from cport.engine import resolve_endpoint

    assert estate.compiler is not None
    return resolve_endpoint(table, estate.compiler.inventory, addr).identity


def _authenticated(estate: Estate, table: Any, f: Flow) -> Any:
    from cport.engine import Flow as EFlow
    from cport.engine import decide

    return decide(
        table,
        EFlow(_identity(estate, table, f[0]), _identity(estate, table, f[1]), f[3], f[2], True),
    )
