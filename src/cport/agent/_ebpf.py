"""The agent's kernel enforcer: `cport up --datapath ebpf --interface IFACE`.

It keeps a :class:`cport.ebpf.BpfDatapath` in step with the table in force (every new
revision is synced; the realised revision is what the kernel enforces), turns the kernel's
verdict events into audit events and flow records, and manages grants: a credential verified
by the agent (`POST /v1/grants`, or the gateway's ``Cport-Grant: direct`` that `cport connect
--grant` sends) opens auth-required ports for an address until it expires or is revoked.

Two kinds of grant:

* the address is a workload's: the credential must speak for that workload (its Kubernetes
  namespace and service account are the workload's), and the grant is (workload identity,
  address) — authentication between network identities, as in Cilium;
* the address is no workload's (it resolves to a CIDR identity or world): the agent binds it
  in the kernel's ipcache to the credential's own identity (an OIDC user has no address of
  its own), waits until the kernel enforces a table holding that identity's rows, and grants
  (credential identity, address). One identity per address: another identity's live binding
  is refused (``address-bound``); the same identity again refreshes the grant. Expiry and
  revocation delete the grant and the binding.

All datapath calls run on a worker thread (they are system calls, some batched); the datapath
serialises them itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
import time
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cport._time import iso_s
from cport.agent._decide import Attempt, Outcome
from cport.agent._flows import FlowRecord
from cport.config import HostPort
from cport.engine import Endpoint, RuleRef, Table, resolve_endpoint
from cport.errors import CportError
from cport.identity import VerifiedIdentity
from cport.model import Mode, Workload
from cport.proxy import http_response

if TYPE_CHECKING:
    from cport.agent._agent import Agent
    from cport.agent._gateway import Gateway
    from cport.ebpf import BpfDatapath

log = logging.getLogger("cport.agent.ebpf")


#: How long a grant waits for the kernel to enforce a table holding a new identity's rows.
REALISE_TIMEOUT = 2.0

#: HTTP status of a grant refusal (the API answers others with 400, the gateway with 403).
GRANT_STATUS = {
    "address-bound": 409,
    "address-denied": 403,
    "grant-not-realised": 503,
    "no-kernel-enforcer": 409,
}


@dataclass(frozen=True, slots=True)
class Grant:
    """A live grant: `identity` from `address` passes auth-required rows until the
    credential expires. `bound`: the agent bound the address to `identity` in the ipcache
    (a credential identity's grant, e.g. an OIDC user's), and unbinds it with the grant."""

    credential: VerifiedIdentity
    identity: int
    address: str
    bound: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "identity": self.identity,
            "address": self.address,
            "subject": self.credential.subject,
            "tokenId": self.credential.token_id,
            "expiresAt": self.credential.expires_at,
            "bound": self.bound,
        }


def host_address(text: str) -> str:
    """`text` as one host address in canonical form (an IPv4-mapped IPv6 address, as a
    dual-stack socket reports an IPv4 peer, becomes the IPv4 address); ``bad-address``
    otherwise."""
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        raise CportError(f"{text!r} is not an IP address", code="bad-address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        raise CportError(f"{ip} is not one host's address", code="bad-address")
    return str(ip)


def binding_conflict(
    grants: dict[tuple[int, str], Grant], identity: int, address: str
) -> Grant | None:
    """The live bound grant of another identity on `address`, if any: one address resolves
    to one identity, so it must end before `address` can be bound to `identity`."""
    for (ident, addr), g in grants.items():
        if addr == address and g.bound and ident != identity:
            return g
    return None


def bypassed_deny(table: Table, address_identity: int, identity: int) -> RuleRef | None:
    """An enforced deny rule that names the address's own identity (a CIDR or world) as a
    peer but not `identity`: binding the address to `identity` would take it past that
    deny, so such a binding is refused (``address-denied``). A deny for every peer is no
    bypass (it denies `identity` too)."""
    seen: set[int] = set()
    for epp in table.ingress.values():
        if id(epp) in seen:
            continue
        seen.add(id(epp))
        for entry in epp.entries:
            ref = entry.ref
            if (
                ref.deny
                and ref.mode is Mode.ENFORCE
                and entry.peers is not None
                and address_identity in entry.peers
                and identity not in entry.peers
            ):
                return ref
    return None


def grant_withdrawal(
    g: Grant, now: float, revoked: bool, workload_addresses: Container[str]
) -> str | None:
    """Why a live grant must end now (``expired``, ``revoked``, or ``workload-address`` when
    a bound address has become a workload's), or None."""
    if g.credential.expires_at <= now:
        return "expired"
    if revoked:
        return "revoked"
    if g.bound and g.address in workload_addresses:
        return "workload-address"
    return None


class EbpfEnforcer:
    name = "ebpf"

    def __init__(self, agent: Agent, interface: str, pin_root: str | None = None) -> None:
        from cport.ebpf import DEFAULT_PIN_ROOT, BpfDatapath

        self.agent = agent
        self.dp: BpfDatapath = BpfDatapath(
            interface, pin_root=DEFAULT_PIN_ROOT if pin_root is None else Path(pin_root)
        )
        self.grants: dict[tuple[int, str], Grant] = {}
        # grants and bindings change under this lock: a conflict check and the bind it
        # allows are one step (waiting for the kernel to realise a table happens outside)
        self._grant_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.last_sync: dict[str, object] = {}
        self.last_error: str | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.dp.open)
        await self.sync()
        # The first sync realised the table and no bindings (this agent has made none yet):
        # grants of bindings an earlier agent made can match nothing now. Delete them, so
        # `cport bpf grants` shows only what admits; their users ask again (fail closed).
        stale = await loop.run_in_executor(
            None, functools.partial(self.dp.prune_grants, unresolved=True)
        )
        if stale:
            log.info("removed %d expired or unbound grants left by an earlier agent", stale)
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
        """Open auth-required rows for `address` on the strength of `credential` until it
        expires or is revoked. A workload's address: the credential must speak for that
        workload (``grant-identity-mismatch``). Any other address: bound to the credential's
        own identity (``address-bound`` while another identity's grant holds it)."""
        agent = self.agent
        state = agent.state
        address = host_address(address)
        ep = resolve_endpoint(state.table, state.bundle.inventory, f"cidr:{address}")
        if ep.workload is not None:
            return await self._grant_workload(credential, address, ep)
        return await self._grant_bound(credential, address)

    async def _grant_workload(
        self, credential: VerifiedIdentity, address: str, ep: Endpoint
    ) -> Grant:
        agent = self.agent
        identity = ep.identity
        own = set(ep.labels.strings())
        claims = [s for s in credential.labels.strings() if s.startswith("k8s:")]
        if not claims or not set(claims) <= own:
            raise CportError(
                f"the credential ({credential.kind} {credential.subject}) does not speak for "
                f"{ep.display} (identity {identity}); a workload's address is never bound to "
                "another identity",
                code="grant-identity-mismatch",
            )
        if agent.revocations.match(credential, identity, time.time()) is not None:
            raise CportError("the credential is revoked", code="revoked")
        async with self._grant_lock:
            await asyncio.get_running_loop().run_in_executor(
                None, self.dp.grant, identity, address, credential.expires_at
            )
            g = Grant(credential, identity, address)
            self.grants[(identity, address)] = g
        _log_grant(g)
        return g

    async def _grant_bound(self, credential: VerifiedIdentity, address: str) -> Grant:
        agent = self.agent
        if ipaddress.ip_address(address).is_loopback:
            raise CportError(
                f"{address} is a loopback address: no packet through the datapath's interface "
                "comes from it; reach the gateway through the address your direct "
                "connections leave from",
                code="loopback-address",
            )
        identity, table = await agent.identity_for(credential.labels)
        if agent.revocations.match(credential, identity, time.time()) is not None:
            raise CportError("the credential is revoked", code="revoked")
        own = resolve_endpoint(table, agent.state.bundle.inventory, f"cidr:{address}")
        deny = bypassed_deny(table, own.identity, identity)
        if deny is not None:
            raise CportError(
                f"{address} ({own.display}, identity {own.identity}) is denied by "
                f"{deny.policy.kind} {deny.policy.namespace}/{deny.policy.name} "
                f"{deny.section}[{deny.rule}]; binding it to identity {identity} would take "
                "it past that deny",
                code="address-denied",
            )
        await self._until_realised(table.revision)
        async with self._grant_lock:
            other = binding_conflict(self.grants, identity, address)
            if other is not None:
                raise CportError(
                    f"{address} is bound to identity {other.identity} ({other.credential.subject})"
                    f" until {iso_s(other.credential.expires_at)}: one address is one identity",
                    code="address-bound",
                )
            await asyncio.get_running_loop().run_in_executor(
                None, self._bind_and_grant, identity, address, credential.expires_at
            )
            g = Grant(credential, identity, address, bound=True)
            self.grants[(identity, address)] = g
        _log_grant(g)
        return g

    async def _until_realised(self, revision: int, timeout: float = REALISE_TIMEOUT) -> None:
        """Wait (bounded) until the kernel enforces table `revision` or a later one: before
        that, a bound address could resolve to an identity the kernel has no rows for."""
        if self.dp.realised_revision >= revision:
            return
        self.changed()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.dp.realised_revision < revision:
            if loop.time() >= deadline:
                raise CportError(
                    f"the kernel has not realised table revision {revision} (it enforces "
                    f"{self.dp.realised_revision}) within {timeout:g}s; try again",
                    code="grant-not-realised",
                )
            await asyncio.sleep(0.01)

    def _bind_and_grant(self, identity: int, address: str, expires_at: float) -> None:
        """(Worker thread.) Bind, then grant; a failed grant undoes a binding it made."""
        fresh = self.dp.bindings().get(address) != identity
        self.dp.bind(address, identity)
        try:
            self.dp.grant(identity, address, expires_at)
        except BaseException:
            if fresh:
                self.dp.unbind(address, identity)
            raise

    def _withdraw(self, g: Grant) -> None:
        """(Worker thread.) Delete the grant, then the binding it made."""
        try:
            self.dp.revoke(peer_identity=g.identity, peer_address=g.address)
        finally:
            if g.bound:
                self.dp.unbind(g.address, g.identity)

    async def _expire_grants(self) -> None:
        now = time.time()
        loop = asyncio.get_running_loop()
        addresses = self.agent.state.table.addresses
        for key, g in list(self.grants.items()):
            revoked = self.agent.revocations.match(g.credential, g.identity, now) is not None
            why = grant_withdrawal(g, now, revoked, addresses)
            if why is None:
                continue
            async with self._grant_lock:
                if self.grants.get(key) is not g:  # refreshed meanwhile
                    continue
                await loop.run_in_executor(None, self._withdraw, g)
                del self.grants[key]
            log.info(
                "grant withdrawn (%s): identity %d from %s (%s, token %s)",
                why,
                g.identity,
                g.address,
                g.credential.subject,
                g.credential.token_id,
            )

    def status(self) -> dict[str, object]:
        return {
            "interface": self.dp.interface,
            "pinRoot": str(self.dp.pin_root),
            "realised": self.dp.realised_revision,
            "lastSync": self.last_sync,
            "lastError": self.last_error,
            "grants": [g.to_json() for g in self.grants.values()],
            # from the agent's own grants: the datapath's lock may be held by a long sync
            "bindings": {g.address: g.identity for g in self.grants.values() if g.bound},
        }


def direct_target(agent: Agent, mode: str, w: Workload, port: int) -> HostPort:
    """Where a ``Cport-Grant`` request's client will connect directly: the workload's own
    address (never a configured upstream). Refuses a mode other than ``direct``, an agent
    without the eBPF datapath and a workload without an address, before any decision."""
    from cport.agent._gateway import Refused

    mode = mode.strip().lower()
    if mode != "direct":
        raise Refused(400, "bad-grant-mode", f"Cport-Grant {mode!r}: the one mode is 'direct'")
    if agent.ebpf is None:
        raise Refused(
            409,
            "no-kernel-enforcer",
            "direct grants open ports in the eBPF datapath; this agent runs without one "
            "(cport up --datapath ebpf)",
        )
    if not w.addresses:
        raise Refused(409, "no-workload-address", f"{w.ref} has no address to connect to")
    return HostPort(w.addresses[0], port)


async def serve_grant(
    gateway: Gateway, conn: socket.socket, attempt: Attempt, outcome: Outcome, direct: HostPort
) -> None:
    """The rest of an allowed ``CONNECT workload.ns:port`` with ``Cport-Grant: direct``
    (`cport connect --grant`), decided and audited by the gateway like a tunnel: grant the
    client's source address for the credential's identity in the kernel
    (:meth:`EbpfEnforcer.grant`) and answer ``200 Granted`` — ``Cport-Identity``,
    ``Cport-Address``, ``Cport-Expires-At`` and a JSON body naming the address to connect to
    directly — then close: no tunnel. The attempt's close event says ``granted``, or the
    code that refused the grant."""
    from cport.agent._gateway import Refused

    ebpf = gateway.agent.ebpf
    cred = attempt.credential
    assert ebpf is not None and cred is not None  # direct_target and the gateway saw to both
    loop = asyncio.get_running_loop()
    try:
        g = await ebpf.grant(cred, attempt.client[0])
    except CportError as exc:
        # Allowed, then not granted: the attempt's record is its close event.
        gateway._record_close(attempt, outcome, direct, exc.code)
        refused = Refused(GRANT_STATUS.get(exc.code, 403), exc.code, exc.message)
        await loop.sock_sendall(conn, refused.response())
        return
    gateway._record_close(attempt, outcome, direct, "granted")
    expires = cred.expires_at
    doc = {
        **g.to_json(),
        "target": f"{attempt.workload.ref}:{attempt.port}",
        "connectTo": str(direct),
        "expiresAtIso": iso_s(expires),
    }
    response = http_response(
        200,
        body=doc,
        headers={
            "Cport-Identity": str(g.identity),
            "Cport-Address": g.address,
            "Cport-Connect-To": str(direct),
            "Cport-Expires-At": f"{expires:.0f}",
            "Connection": "close",
        },
        phrase="Granted",
    )
    await loop.sock_sendall(conn, response)


def _log_grant(g: Grant) -> None:
    c = g.credential
    log.info(
        "granted identity %d from %s%s (%s %s, token %s) until %s",
        g.identity,
        g.address,
        " (bound)" if g.bound else "",
        c.kind,
        c.subject,
        c.token_id,
        iso_s(c.expires_at),
    )


def _name(agent: Agent, identity: int) -> str:
    ws = agent.state.table.endpoints.get(identity)
    return ws[0].ref if ws else ""


__all__ = ["GRANT_STATUS", "EbpfEnforcer", "Grant", "host_address", "serve_grant"]
