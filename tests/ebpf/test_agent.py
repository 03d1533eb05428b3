"""`cport up --datapath ebpf` end to end: the agent, run inside a network namespace, keeps the
kernel in step with its table, grants auth-required ports to a verified service-account
token and withdraws the grant on revocation, reports kernel verdicts as flows and audit
events, and — killed — leaves the last policy enforcing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cport.ebpf import BpfDatapath
from tests.agent.harness import CPORT, Issuer, wait_for
from tests.ebpf.netns import Topology, in_netns

pytestmark = pytest.mark.privileged

API, OUTSIDE, DB = "192.0.2.10", "203.0.113.5", "198.51.100.20"

POLICY = """\
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
metadata: {name: db, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  ingress:
    - from: [{workloads: {matchLabels: {app: api}}}]
      ports: [{port: 5432}]
    - from: [{serviceAccount: {name: api}}]
      ports: [{port: 6000}]
      authentication: required
"""

INVENTORY = f"""\
apiVersion: cport.dev/v1alpha1
kind: Workload
metadata: {{name: api, namespace: shop, labels: {{app: api}}}}
spec:
  serviceAccount: api
  addresses: [{API}]
---
apiVersion: cport.dev/v1alpha1
kind: Workload
metadata: {{name: db, namespace: shop, labels: {{app: db}}}}
spec:
  serviceAccount: db
  addresses: [{DB}]
  ports: [{{port: 5432}}, {{port: 6000}}]
"""


class Agent:
    """`cport up --datapath ebpf` inside the topology's server namespace (its issuer must
    listen there too). `issuer_kind=None`: an OIDC issuer; `gateway`: its listen address."""

    def __init__(
        self,
        root: Path,
        topo: Topology,
        pin_root: Path,
        issuer: Issuer,
        *,
        policy: str = POLICY,
        inventory: str = INVENTORY,
        issuer_name: str = "cluster",
        issuer_kind: str | None = "kubernetes",
        gateway: str | None = None,
    ) -> None:
        self.root = root
        (root / "policies").mkdir(parents=True)
        (root / "inventory").mkdir()
        (root / "policies" / "db.yaml").write_text(policy)
        (root / "inventory" / "shop.yaml").write_text(inventory)
        self.socket = root / "state" / "agent.sock"
        self.config = root / "agent.yaml"
        kind = f"\n      kind: {issuer_kind}" if issuer_kind else ""
        gw = f"gateway: {{listen: '{gateway}'}}\n" if gateway else ""
        self.config.write_text(f"""\
stateDir: state
policies: [policies]
inventory: [inventory]
recheckInterval: 0.1
{gw}datapath: {{mode: ebpf, interface: {topo.server_if}, pinRoot: {pin_root}}}
identity:
  issuers:
    - name: {issuer_name}{kind}
      issuer: {issuer.url}
      audiences: [cport]
      jwksUri: {issuer.url}/jwks
""")
        self.topo = topo
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "agent.log"

    def start(self) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.topo.server,
                    CPORT,
                    "up",
                    "--config",
                    str(self.config),
                ],
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        ok = wait_for(lambda: self.socket.exists() and self._ready(), timeout=60)
        assert ok, self.log.read_text()

    def _ready(self) -> bool:
        try:
            return self.api("GET", "/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, method: str, path: str, **kw: object) -> httpx.Response:
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://cport", timeout=10
        ) as c:
            return c.request(method, path, **kw)  # type: ignore[arg-type]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def test_agent_enforces_in_the_kernel_grants_and_survives_a_kill(
    tmp_path: Path, topology: Callable[..., Topology], shared_pin_root: Path
) -> None:
    pin_root = shared_pin_root
    topo = topology([API, OUTSIDE], [DB])
    topo.listen_tcp([5432, 6000])
    with in_netns(topo.server):  # the agent runs there: its issuer's JWKS must be reachable
        issuer = Issuer()
    agent = Agent(tmp_path / "agent", topo, pin_root, issuer)
    try:
        agent.start()
        st = agent.api("GET", "/v1/status").json()
        assert st["enforcers"]["ebpf"]["inSync"], st
        probe = [(API, DB, 5432), (OUTSIDE, DB, 5432), (API, DB, 6000)]
        assert topo.tcp_probe(probe) == {probe[0]: True, probe[1]: False, probe[2]: False}

        # A service-account token of the api workload opens the auth-required port for it.
        token = issuer.mint(
            "system:serviceaccount:shop:api",
            ttl=300,
            **{"kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "api"}}},
        )
        r = agent.api("POST", "/v1/grants", json={"token": token, "address": API})
        assert r.status_code == 201, r.text
        assert topo.tcp_probe([probe[2]]) == {probe[2]: True}
        # A token for another service account cannot speak for the api's address.
        other = issuer.mint("system:serviceaccount:shop:db", ttl=300)
        r = agent.api("POST", "/v1/grants", json={"token": other, "address": API})
        assert r.status_code == 400 and r.json()["error"]["code"] == "grant-identity-mismatch"

        # Revoking the subject withdraws the grant.
        r = agent.api(
            "POST", "/v1/revocations", json={"identity": "system:serviceaccount:shop:api"}
        )
        assert r.status_code == 201
        assert wait_for(lambda: not agent.api("GET", "/v1/grants").json()["grants"])
        assert topo.tcp_probe([probe[2]]) == {probe[2]: False}

        # Kernel verdicts reach the flows and the audit record.
        flows = wait_for(
            lambda: [
                f
                for f in agent.api("GET", "/v1/flows", params={"verdict": "denied"}).json()["flows"]
                if f["enforcer"] == "ebpf"
            ]
        )
        assert flows, agent.api("GET", "/v1/flows").json()
        events = agent.api("GET", "/v1/audit/events", params={"verdict": "denied"}).json()["events"]
        assert any(e["enforcer"] == "ebpf" and e["port"] == 5432 for e in events)

        # `cport bpf status` reads the realised state from the pins.
        out = subprocess.run(
            [CPORT, "bpf", "status", "--pin-root", str(pin_root), "-o", "json"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["realisedRevision"] == st["revision"], out.stdout

        # Killed, the agent leaves the last policy enforcing.
        agent.stop(signal.SIGKILL)
        time.sleep(0.2)
        assert topo.tcp_probe(probe[:2]) == {probe[0]: True, probe[1]: False}
    finally:
        agent.stop()
        issuer.close()
        dp = BpfDatapath(topo.server_if, netns=topo.server, pin_root=pin_root)
        try:
            dp.open()
        finally:
            dp.close(detach=True, unpin=True)
