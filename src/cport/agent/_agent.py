"""`cport up`: the agent. One asyncio loop runs the enforcers (gateway, per-port listeners),
the policy watcher, the live re-check, and the local API; the audit writer commits on a
thread of its own (group commit).

Lifecycle: :meth:`Agent.start` loads and compiles (a bad policy set refuses to start),
binds every listener, then reports ready; :meth:`Agent.stop` (SIGTERM) stops accepting,
lets connections finish for `drainTimeout`, closes the rest with termination `shutdown`,
flushes the audit writer and removes the API socket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from cryptography import x509
from prometheus_client import Counter, Gauge

from cport.agent._conns import LiveConnection, Registry
from cport.agent._decide import Explanations
from cport.agent._ebpf import EbpfEnforcer
from cport.agent._flows import FlowHub
from cport.agent._gateway import Gateway, PortListener
from cport.agent._revocations import Revocations
from cport.agent._state import PolicyState
from cport.audit import AuditEvent, AuditMetrics, AuditWriter, PostgresStore, Signer, SQLiteStore
from cport.config import Config
from cport.engine import Table
from cport.errors import AuditError, CredentialError
from cport.identity import JWKSKeySource, Labels, VerifiedIdentity, Verifier
from cport.identity._aws import AwsVerifier
from cport.identity._front import Credentials
from cport.identity._spiffe import verify_x509_svid

log = logging.getLogger("cport.agent")


class AgentMetrics(AuditMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.open_connections = Gauge(
            "cport_open_connections", "Connections being relayed.", registry=self.registry
        )
        self.closed_by_recheck = Counter(
            "cport_recheck_closed",
            "Live connections closed because they are no longer allowed.",
            ["reason"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "cport_policy_reloads",
            "Policy reloads by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.revision = Gauge(
            "cport_table_revision", "Revision of the table in force.", registry=self.registry
        )
        self.realised = Gauge(
            "cport_enforcer_realised_revision",
            "Table revision each enforcer has realised.",
            ["enforcer"],
            registry=self.registry,
        )


class Agent:
    def __init__(self, config: Config, *, reload_interval: float = 1.0) -> None:
        self.config = config
        s = config.agent
        self.settings = s
        self.node = s.node
        self.started = time.time()
        s.state_dir.mkdir(parents=True, exist_ok=True)
        self.state = PolicyState(
            s.policies, s.inventory, cluster=config.cluster, state_dir=s.state_dir
        )
        ident = config.identity
        self._jwt = (
            Verifier(ident.issuers, JWKSKeySource(), cluster=config.cluster)
            if ident.issuers
            else None
        )
        self.credentials = Credentials(
            jwt=self._jwt,
            aws=AwsVerifier(ident.aws) if ident.aws is not None else None,
            bundles=ident.spiffe_bundles,
        )
        self.revocations = Revocations(s.state_dir)
        # A new token identity only adds rows for a peer no live connection has yet: nothing
        # to re-check, but every enforcer now realises the new revision.
        self.state.on_identity_added = self._identity_added
        self.registry = Registry()
        self.flows = FlowHub()
        self.explanations = Explanations()
        self.metrics = AgentMetrics()
        self.reload_interval = reload_interval
        self.store: SQLiteStore | PostgresStore | None = None
        self.writer: AuditWriter | None = None
        self.audit_error: str | None = None
        self._inflight: collections.deque[float] = collections.deque()  # submit times, FIFO
        self.audit_stall_after = 10.0  # seconds a batch may wait for its commit
        self._pending: list[AuditEvent] = []
        self._slots: collections.Counter[int] = collections.Counter()
        self.gateway = (
            Gateway(self, s.gateway.listen, s.gateway.limits, s.gateway.upstreams)
            if s.gateway is not None
            else None
        )
        self.listeners = [PortListener(self, ls) for ls in s.listeners]
        self.ebpf: EbpfEnforcer | None = None
        if s.datapath.mode == "ebpf":
            assert s.datapath.interface is not None
            self.ebpf = EbpfEnforcer(self, s.datapath.interface, s.datapath.pin_root)
        self.realised: dict[str, int] = {}
        self.ready = False
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.on_ready: list[Callable[[Agent], None]] = []
        self.api: object | None = None
        self.api_hooks: list[Callable[[Any], None]] = []  # extra routes (the quickstart's)

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        s = self.settings
        self.state.load()
        self.metrics.revision.set(self.state.table.revision)
        signer = Signer.load_or_create(s.state_dir)
        if s.audit.store == "postgres":
            assert s.audit.dsn is not None
            self.store = PostgresStore(s.audit.dsn, signer)
        else:
            self.store = SQLiteStore(s.audit.path or s.state_dir / "audit.db", signer)
        self.writer = AuditWriter(self.store, metrics=self.metrics)
        if self.ebpf is not None:
            await self.ebpf.start()
        for front in self._fronts():
            await front.start()
            self.realised[front.enforcer] = self.state.table.revision
            self.metrics.realised.labels(front.enforcer).set(self.state.table.revision)
        from cport.agent._api import ApiServer

        api = ApiServer(self)
        await api.start()
        self.api = api
        self._tasks.append(asyncio.create_task(self._watch(), name="policy-watch"))
        self._tasks.append(asyncio.create_task(self._expiry(), name="expiry"))
        self.ready = True
        for cb in self.on_ready:
            cb(self)

    def _fronts(self) -> list[Gateway | PortListener]:
        return [*([self.gateway] if self.gateway else []), *self.listeners]

    def request_stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload(True)))

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT (or :meth:`request_stop`), then stop cleanly."""
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        self.ready = False
        fronts = self._fronts()
        for front in fronts:
            await front.stop_accepting()
        drain = max((f.limits.drain_timeout for f in fronts), default=0.0)
        for front in fronts:
            await front.drain(drain)
        for conn in self.registry:
            conn.close("shutdown")
        for front in fronts:
            await front.drain(2.0)
        for task in self._tasks:
            task.cancel()
        for result in await asyncio.gather(*self._tasks, return_exceptions=True):
            if isinstance(result, Exception):
                log.error("background task failed: %r", result)
        self._tasks.clear()
        self.flows.close()  # ends the live streams first, so the API stops at once
        if self.api is not None:
            await self.api.stop()  # type: ignore[attr-defined]
            self.api = None
        if self.ebpf is not None:
            await self.ebpf.stop()
        self._flush_audit()
        if self.writer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.writer.close)
            self.writer = None
        if self.store is not None:
            self.store.close()
            self.store = None

    # -- credentials -------------------------------------------------------------------
    async def verify(self, token: str) -> VerifiedIdentity:
        """Verify a bearer credential: the verified-token cache inline, otherwise on a worker
        thread (a first verification may fetch keys; the loop never blocks on the network)."""
        now = time.time()
        if self._jwt is not None and token.count(".") == 2:
            hit = self._jwt.cached(token, now)
            if hit is not None:
                return hit
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.credentials.verify, token, now)

    def verify_svid(self, der: bytes) -> VerifiedIdentity:
        import datetime as dt

        bundles = self.config.identity.spiffe_bundles
        if not bundles:
            raise CredentialError(
                "no SPIFFE trust bundles are configured", code="unknown-trust-domain"
            )
        cert = x509.load_der_x509_certificate(der)
        return verify_x509_svid([cert], bundles, dt.datetime.now(dt.UTC))

    # -- audit -------------------------------------------------------------------------
    def submit(self, event: AuditEvent) -> None:
        """Queue an audit event. Events gather for 5 ms and go to the writer thread together
        (one wake-up, not one per event; the writer commits them in one transaction). A
        failing store is reported on /readyz and in the status and makes the enforcers
        refuse new connections (fail closed)."""
        if self.writer is None:
            return
        if not self._pending:
            asyncio.get_running_loop().call_later(0.005, self._flush_audit)
        self._pending.append(event)

    def _flush_audit(self) -> None:
        batch, self._pending = self._pending, []
        if batch and self.writer is not None:
            try:
                fut = self.writer.submit_many(batch)
            except AuditError as exc:
                self.audit_error = f"{exc.code}: {exc.message}"
                log.error("audit write failed: %s", self.audit_error)
                return
            self._inflight.append(time.monotonic())
            fut.add_done_callback(self._audit_done)

    def audit_problem(self) -> str | None:
        """Why audit cannot be relied on now: a failed commit, or a store that has not
        committed for `audit_stall_after` seconds (hung, not failing). Enforcers refuse new
        connections while there is one (fail closed)."""
        if self.audit_error is not None:
            return self.audit_error
        if self._inflight and time.monotonic() - self._inflight[0] > self.audit_stall_after:
            return f"audit-stalled: no commit for {self.audit_stall_after:g}s"
        return None

    def _audit_done(self, fut: Future[Any]) -> None:
        # (writer thread) batches commit in submission order
        with contextlib.suppress(IndexError):
            self._inflight.popleft()
        exc = fut.exception()
        if exc is not None:
            self.audit_error = f"{type(exc).__name__}: {exc}"
            log.error("audit write failed: %s", self.audit_error)
        elif self.audit_error is not None:
            self.audit_error = None

    # -- policy ------------------------------------------------------------------------
    async def reload(self, force: bool = False) -> dict[str, object]:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, lambda: self.state.reload(force=force))
        if result.errors:
            self.metrics.reloads.labels("invalid").inc()
            for e in result.errors:
                log.error(
                    "policy reload rejected, keeping revision %d: %s: %s: %s",
                    self.state.table.revision,
                    e.location,
                    e.code,
                    e.message,
                )
        if result.changed:
            self.metrics.reloads.labels("applied").inc()
            log.info(
                "policy revision %d in force (%s, %.1f ms)",
                result.table.revision,
                "full compile" if result.full else "incremental",
                result.seconds * 1e3,
            )
            self.sweep()  # re-check live connections against the new table
        return {
            "changed": result.changed,
            "revision": self.state.table.revision,
            "errors": [e.to_json() for e in result.errors],
        }

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval)
            try:
                await self.reload()
            except Exception as exc:  # keep watching: the last good table stays in force
                log.error("policy reload failed: %s", exc)

    async def _expiry(self) -> None:
        while True:
            await asyncio.sleep(self.settings.recheck_interval)
            self.sweep()

    def _revoked(self, conn: LiveConnection, now: float) -> bool:
        return self.revocations.match(conn.credential, conn.peer_identity, now) is not None

    def sweep(self) -> int:
        """Re-check every live connection against the table in force, revocations and
        expiry; close the ones no longer allowed. Then every proxy enforcer has realised the
        current revision."""
        table = self.state.table
        closed = self.registry.sweep(table, time.time(), self._revoked)
        for conn, reason in closed:
            self.metrics.closed_by_recheck.labels(reason).inc()
            log.info("closing %s → %s:%d: %s", conn.peer, conn.workload_ref, conn.port, reason)
        for front in self._fronts():
            self.set_realised(front.enforcer, table.revision)
        if self.ebpf is not None:
            self.ebpf.changed()  # syncs a new revision, drops expired or revoked grants
        self.metrics.revision.set(table.revision)
        return len(closed)

    def reserve(self, identity: int, cap: int) -> bool:
        """Take one of `identity`'s connection slots (released by :meth:`release`), or say
        the cap is reached. Slots are taken when an attempt passes its checks, before any
        await, so simultaneous attempts cannot overshoot the cap."""
        if self._slots[identity] >= cap:
            return False
        self._slots[identity] += 1
        return True

    def release(self, identity: int) -> None:
        self._slots[identity] -= 1
        if self._slots[identity] <= 0:
            del self._slots[identity]

    def _identity_added(self, table: object) -> None:
        """(Any thread.) Mark the new revision realised by the proxy enforcers and wake the
        eBPF sync, on the event loop."""
        self._loop.call_soon_threadsafe(self._realise_identity_add)

    def _realise_identity_add(self) -> None:
        rev = self.state.table.revision
        for front in self._fronts():
            self.set_realised(front.enforcer, rev)
        if self.ebpf is not None:
            self.ebpf.changed()

    async def identity_for(self, labels: Labels) -> tuple[int, Table]:
        """A verified credential's identity. Known label sets are a dict lookup; a new one is
        added on a worker thread (it allocates, may write the state file, and waits for a
        reload in progress), so the loop never blocks on it."""
        hit = self.state.known_identity(labels)
        if hit is not None:
            return hit, self.state.table
        return await asyncio.get_running_loop().run_in_executor(
            None, self.state.identity_for, labels
        )

    def set_realised(self, enforcer: str, revision: int) -> None:
        self.realised[enforcer] = revision
        self.metrics.realised.labels(enforcer).set(revision)

    def recheck_one(self, conn: LiveConnection) -> None:
        reason = Registry._why_not(conn, self.state.table, time.time(), self._revoked)
        if reason is not None:
            conn.close(reason)

    # -- status ------------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        table = self.state.table
        return {
            "node": self.node,
            "ready": self.ready,
            "uptimeSeconds": round(time.time() - self.started, 3),
            "revision": table.revision,
            "enforcers": {
                name: {"desired": table.revision, "realised": rev, "inSync": rev == table.revision}
                for name, rev in self.realised.items()
            },
            "policy": self.state.status(),
            "connections": len(self.registry),
            "listeners": {
                f.enforcer + (f" {f.settings.target}" if isinstance(f, PortListener) else ""): str(
                    f.address
                )
                for f in self._fronts()
            },
            "ebpf": None if self.ebpf is None else self.ebpf.status(),
            "audit": {
                "store": self.settings.audit.store,
                "healthy": self.audit_problem() is None,
                "error": self.audit_problem(),
            },
            "stateDir": str(Path(self.settings.state_dir).resolve()),
        }


__all__ = ["Agent", "AgentMetrics"]
