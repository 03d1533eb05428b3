"""Sync: diffs into the inactive generation and an atomic switch, under continuous traffic;
pinned state that outlives the process that loaded it, and adoption without a gap."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cport.ebpf import BpfDatapath, Encoder
from tests.ebpf.conftest import Estate, workload
from tests.ebpf.netns import Topology

pytestmark = pytest.mark.privileged

API, WEB, DB = "192.0.2.10", "192.0.2.11", "198.51.100.20"
INVENTORY = (workload("api", API), workload("web", WEB), workload("db", DB))

# Two shapes of one policy that agree on the flows under test and disagree on everything
# else: api→db:7000 is allowed by an exact row in A and by a range (and a wildcard) in B;
# web→db:7000 is denied by default in A and by a deny rule in B. Filler rows change between
# them so each switch rewrites many entries. A half-applied policy would drop api or pass web.
SHAPE_A = """
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
metadata: {{name: db, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: db}}}}
  ingress:
    - from: [{{workloads: {{matchLabels: {{app: api}}}}}}]
      ports: [{{port: 7000, protocol: ANY}}{filler}]
    - from: [{{workloads: {{matchLabels: {{app: web}}}}}}]
      ports: [{{port: 7001, protocol: UDP}}]
"""
SHAPE_B = """
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
metadata: {{name: db, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: db}}}}
  ingress:
    - from: [{{workloads: {{matchLabels: {{app: api}}}}}}]
      ports: [{{port: 6990, endPort: 7010, protocol: UDP}}{filler}]
    - ports: [{{port: 7000, protocol: UDP}}]
  ingressDeny:
    - from: [{{workloads: {{matchLabels: {{app: web}}}}}}]
      ports: [{{port: 7000, endPort: 7100, protocol: UDP}}]
"""


def shape(template: str, n: int, offset: int) -> str:
    filler = "".join(f", {{port: {20000 + offset + 3 * i}, protocol: TCP}}" for i in range(n))
    return template.format(filler=filler)


def test_policy_switches_under_traffic_never_give_a_wrong_verdict(
    topology: Callable[..., Topology],
    datapath: Callable[..., BpfDatapath],
    estate: Estate,
) -> None:
    topo = topology([API, WEB], [DB])
    server = topo.udp_socket(topo.server, "0.0.0.0", 7000)
    server.settimeout(0.2)
    api = topo.udp_socket(topo.client, API, 0)
    web = topo.udp_socket(topo.client, WEB, 0)
    tables = [estate.compile(*INVENTORY, shape(SHAPE_A, 200, 0))]
    for i in range(20):  # compiled beforehand: the loop below only switches
        tables.append(estate.update(shape(SHAPE_B if i % 2 == 0 else SHAPE_A, 200, 1 + i % 7)))
    dp = datapath(topo, emit_allowed=False)
    dp.sync(tables[0])

    received = {API: 0, WEB: 0}
    sent = {API: 0, WEB: 0}
    done = threading.Event()
    stop = threading.Event()

    def receive() -> None:
        while not done.is_set() or sent[API] > received[API]:
            try:
                _, (src, _) = server.recvfrom(64)
            except TimeoutError:
                if done.is_set():
                    return
                continue
            received[src] += 1

    def send() -> None:
        until = time.monotonic() + 2.5
        for i in range(3000):  # bounded in count and in time
            if stop.is_set() or time.monotonic() > until:
                return
            api.sendto(b"%d" % i, (DB, 7000))
            sent[API] += 1
            web.sendto(b"%d" % i, (DB, 7000))
            sent[WEB] += 1
            time.sleep(0.001)

    receiver = threading.Thread(target=receive, daemon=True)
    sender = threading.Thread(target=send, daemon=True)
    receiver.start()
    sender.start()
    switches = 0
    deadline = time.monotonic() + 30
    try:
        while sender.is_alive() and time.monotonic() < deadline:
            table = tables[1 + switches % (len(tables) - 1)]
            stats = dp.sync(table)
            assert stats.changed and stats.written > 0
            assert stats.deleted > 0 or switches == 0  # generation 0 starts empty
            assert dp.realised_revision == table.revision
            switches += 1
            time.sleep(0.005)
    finally:
        stop.set()
        sender.join(10)
        done.set()
        receiver.join(10)
    assert not sender.is_alive() and not receiver.is_alive()
    assert switches >= 10
    assert received[WEB] == 0, "a denied flow got through during a switch"
    assert received[API] == sent[API], "an allowed flow lost packets during a switch"
    counters = dp.status()["counters"]
    assert isinstance(counters, dict) and counters["denied"] == sent[WEB]


def test_sync_writes_only_the_difference(
    topology: Callable[..., Topology],
    datapath: Callable[..., BpfDatapath],
    estate: Estate,
) -> None:
    topo = topology([API], [DB])
    t1 = estate.compile(*INVENTORY, shape(SHAPE_A, 50, 0))
    dp = datapath(topo)
    first = dp.sync(t1)
    assert (first.epoch, first.generation, first.deleted) == (1, 1, 0)
    assert first.written == first.entries
    again = dp.sync(t1)
    assert not again.changed and again.written == again.deleted == 0 and again.epoch == 1
    t2 = estate.update(shape(SHAPE_A, 51, 0))  # one more filler port
    second = dp.sync(t2)
    # generation 0 was empty: it gets everything; the next switch back to 1 writes the diff
    assert second.generation == 0 and second.written == second.entries
    t3 = estate.update(shape(SHAPE_A, 52, 0))
    third = dp.sync(t3)
    assert third.generation == 1 and third.written == 2 and third.deleted == 0
    assert dp.realised_revision == t3.revision
    # what the kernel holds is what the encoder says
    entries = dp.policy_entries()
    want = Encoder().encode(t3)
    assert len(entries) == sum(len(p.rows) for p in want.policies.values())
    assert {(e.peer, e.port_lo) for e in entries if not e.default and e.peer} >= {
        (estate.identity(t3, "shop", "api"), 7000)
    }
    assert [e.prefix for e in dp.ipcache_entries()] == [
        "0.0.0.0/0", "192.0.2.10/32", "192.0.2.11/32", "198.51.100.20/32", "::/0",
    ]  # fmt: skip


CHILD = """
import sys, time
from pathlib import Path
from cport.ebpf import BpfDatapath
from cport.engine import Compiler
from cport.model import load

estate, ifname, netns, pin_root, cache = sys.argv[1:6]
bundle = load([estate])
compiler = Compiler(bundle.inventory)
compiler.compile(bundle.policies)
table = compiler.update(upsert=bundle.policies)  # revision 2
dp = BpfDatapath(ifname, netns=netns, pin_root=Path(pin_root), cache_dir=Path(cache))
dp.open()
dp.sync(table)
print("ready", table.revision, flush=True)
time.sleep(120)
"""


def test_enforcement_survives_the_loader_and_is_adopted_without_a_gap(
    topology: Callable[..., Topology],
    datapath: Callable[..., BpfDatapath],
    estate: Estate,
    pin_root: Path,
    bpf_cache: Path,
    tmp_path: Path,
) -> None:
    topo = topology([API, WEB], [DB])
    listeners = topo.listen_tcp([7000])
    table = estate.compile(*INVENTORY, shape(SHAPE_A, 5, 0))
    estate_file = sorted(estate.dir.iterdir())[-1]
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen(
        [sys.executable, str(script), str(estate_file), topo.server_if, topo.server,
         str(pin_root), str(bpf_cache)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        assert line[:1] == ["ready"], line
        child_revision = int(line[1])
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    # nobody holds the maps or programs now but the pins and the tc filter: still enforced
    flows = [(API, DB, 7000), (WEB, DB, 7000)]
    assert topo.tcp_probe(flows) == {(API, DB, 7000): True, (WEB, DB, 7000): False}

    # adoption under traffic: api's packets keep flowing while a new process takes over
    server = topo.udp_socket(topo.server, "0.0.0.0", 7000)
    server.settimeout(0.5)
    api = topo.udp_socket(topo.client, API, 0)
    stop = threading.Event()
    sent = [0]

    def send() -> None:
        while not stop.is_set() and sent[0] < 5000:
            api.sendto(b"x", (DB, 7000))
            sent[0] += 1
            time.sleep(0.0005)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    dp = datapath(topo)
    assert dp.adopted and dp.realised_revision == child_revision and dp.epoch == 1
    stats = dp.sync(table)  # the same policy: nothing to write
    assert not stats.changed and dp.realised_revision == table.revision
    t2 = estate.update(shape(SHAPE_A, 5, 0).replace("port: 7001, protocol: UDP", "port: 7000"))
    assert dp.sync(t2).changed
    stop.set()
    sender.join(10)
    got = 0
    try:
        while got < sent[0]:
            server.recvfrom(16)
            got += 1
    except TimeoutError:
        pass
    assert got == sent[0], "packets were lost while the datapath was adopted"
    assert topo.tcp_probe(flows) == {(API, DB, 7000): True, (WEB, DB, 7000): True}
    topo.drain(listeners)


def test_sync_puts_back_filters_removed_behind_its_back(
    topology: Callable[..., Topology],
    datapath: Callable[..., BpfDatapath],
    estate: Estate,
) -> None:
    topo = topology([API, WEB], [DB])
    topo.listen_tcp([7001])
    table = estate.compile(
        *INVENTORY, shape(SHAPE_A, 1, 0).replace("protocol: UDP", "protocol: TCP")
    )
    dp = datapath(topo)
    dp.sync(table)
    flows = [(API, DB, 7001), (WEB, DB, 7001)]
    assert topo.tcp_probe(flows) == {flows[0]: False, flows[1]: True}
    for point in ("ingress", "egress"):  # someone flushes tc on the interface
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                topo.server,
                "tc",
                "filter",
                "del",
                "dev",
                topo.server_if,
                point,
            ],
            check=True,
        )
    assert topo.tcp_probe(flows) == {flows[0]: True, flows[1]: True}  # nothing enforces
    stats = dp.sync(table)
    assert not stats.changed  # the policy is realised already; only the filters were missing
    assert topo.tcp_probe(flows) == {flows[0]: False, flows[1]: True}
    progs = dp.program_stats()
    status = dp.status()["attached"]
    assert isinstance(status, dict) and status["ingressProgId"] == progs["ingress"]["id"]
