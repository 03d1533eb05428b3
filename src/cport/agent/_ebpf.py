"""The agent's kernel enforcer: `cport up --datapath ebpf --interface IFACE`.

It keeps a :class:`cport.ebpf.BpfDatapath` in step with the table in force (every new
revision is synced; the realised revision is what the kernel enforces), turns the kernel's
verdict events into audit events and flow records, and manages grants: a credential verified
by the agent (`POST /v1/grants`) opens auth-required ports for the address it was presented
from until it expires or is revoked. All datapath calls run on a worker thread (they are
system calls, some batched); the datapath serialises them itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cport.agent._flows import FlowRecord
from cport.engine import resolve_endpoint
from cport.errors import CportError
from cport.identity import VerifiedIdentity

if TYPE_CHECKING:
    from cport.agent._agent import Agent
    from cport.ebpf import BpfDatapath

log = logging.getLogger("cport.agent.ebpf")


@dataclass(frozen=True, slots=True)
class Grant:
    credential: VerifiedIdentity
    identity: int
    address: str

    def to_json(self) -> dict[str, object]:
        return {
            "identity": self.identity,
            "address": self.address,
            "subject": self.credential.subject,
            "tokenId": self.credential.token_id,
            "expiresAt": self.credential.expires_at,
        }


class EbpfEnforcer:
    name = "ebpf"

    def __init__(self, agent: Agent, interface: str, pin_root: str | None = None) -> None:
        from cport.ebpf import DEFAULT_PIN_ROOT, BpfDatapath

        self.agent = agent
        self.dp: BpfDatapath = BpfDatapath(
            interface, pin_root=DEFAULT_PIN_ROOT if pin_root is None else Path(pin_root)
        )
        self.grants: dict[tuple[int, str], Grant] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.last_sync: dict[str, object] = {}
        self.last_error: str | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.dp.open)
        await self.sync()
        self._tasks = [
            asyncio.create_task(self._sync_loop(), name="ebpf-sync"),
            asyncio.create_task(self._events_loop(), name="ebpf-events"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        # Programs and maps stay pinned and attached: the kernel keeps enforcing the last
        # policy (fail closed) until a new agent adopts them.
        await asyncio.get_running_loop().run_in_executor(None, self.dp.close)

    def changed(self) -> None:
        """The table or the grants changed: sync soon."""
        self._wake.set()

    async def sync(self) -> None:
        table = self.agent.state.table
        stats = await asyncio.get_running_loop().run_in_executor(None, self.dp.sync, table)
        self.last_sync = stats.to_json()
        self.agent.set_realised(self.name, self.dp.realised_revision)

    async def _sync_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                if self.dp.realised_revision != self.agent.state.table.revision:
                    await self.sync()
                await self._expire_grants()
            except Exception as exc:
                self.last_error = f"sync: {exc}"
                log.error(
                    "eBPF sync failed (the kernel keeps revision %d): %s",
                    self.dp.realised_revision,
                    exc,
                )
                await asyncio.sleep(1.0)
                self._wake.set()

    async def _events_loop(self) -> None:
        loop = asyncio.get_running_loop()
        agent = self.agent
        while True:
            try:
                events = await loop.run_in_executor(None, self.dp.poll_events, 200)
            except Exception as exc:  # keep reading; status shows the last failure
                self.last_error = f"events: {exc}"
                log.error("reading kernel verdict events failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            if not events:
                continue
            from cport.ebpf import to_audit_event

            table = agent.state.table
            for ev in events:
                agent.submit(to_audit_event(ev, node=agent.node, table=table))
                agent.metrics.decisions.labels(ev.verdict, ev.reason).inc()
                agent.flows.publish(
                    FlowRecord(
                        ev.time_ns,
                        "packet",
                        "ebpf",
                        ev.verdict,
                        ev.reason,
                        _name(agent, ev.src_identity) or ev.src_ip,
                        ev.src_identity,
                        _name(agent, ev.dst_identity) or ev.dst_ip,
                        ev.dst_port,
                        protocol={6: "TCP", 17: "UDP", 132: "SCTP"}.get(ev.protocol, "?"),
                        src=f"{ev.src_ip}:{ev.src_port}",
                        policies=tuple(ev.policy_names()),
                        extra={"kind": ev.kind, "suppressed": ev.suppressed},
                    )
                )

    # -- grants ------------------------------------------------------------------------
    async def grant(self, credential: VerifiedIdentity, address: str) -> Grant:
        """Open auth-required rows for `address` on the strength of `credential`, which must
        speak for the identity the address resolves to (its Kubernetes labels are that
        identity's); the grant ends with the credential or a revocation."""
        agent = self.agent
        state = agent.state
        ep = resolve_endpoint(state.table, state.bundle.inventory, f"cidr:{address}")
        own = set(ep.labels.strings())
        claims = [s for s in credential.labels.strings() if s.startswith("k8s:")]
        if not claims or not set(claims) <= own:
            raise CportError(
                f"the credential ({credential.kind} {credential.subject}) does not speak for "
                f"{ep.display} (identity {ep.identity})",
                code="grant-identity-mismatch",
            )
        if agent.revocations.match(credential, ep.identity, time.time()) is not None:
            raise CportError("the credential is revoked", code="revoked")
        await asyncio.get_running_loop().run_in_executor(
            None, self.dp.grant, ep.identity, address, credential.expires_at
        )
        g = Grant(credential, ep.identity, address)
        self.grants[(ep.identity, address)] = g
        return g

    async def _expire_grants(self) -> None:
        now = time.time()
        loop = asyncio.get_running_loop()
        for key, g in list(self.grants.items()):
            if (
                g.credential.expires_at <= now
                or self.agent.revocations.match(g.credential, g.identity, now) is not None
            ):
                await loop.run_in_executor(
                    None,
                    functools.partial(
                        self.dp.revoke, peer_identity=g.identity, peer_address=g.address
                    ),
                )
                del self.grants[key]

    def status(self) -> dict[str, object]:
        return {
            "interface": self.dp.interface,
            "pinRoot": str(self.dp.pin_root),
            "realised": self.dp.realised_revision,
            "lastSync": self.last_sync,
            "lastError": self.last_error,
            "grants": [g.to_json() for g in self.grants.values()],
        }


def _name(agent: Agent, identity: int) -> str:
    ws = agent.state.table.endpoints.get(identity)
    return ws[0].ref if ws else ""


__all__ = ["EbpfEnforcer", "Grant"]
