"""Live connections and the re-check that closes the ones no longer allowed.

Every relayed connection is registered with what it was allowed on: peer identity, the
credential (if any) and its expiry, the target workload and port. On a policy change, a
revocation or a credential's expiry the agent calls :meth:`Registry.sweep`, which decides
every live connection again against the current table and cancels those now refused; the
connection's task writes its close event with the reason (`policy-changed`, `revoked`,
`expired`, `workload-removed`, `shutdown`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cport.engine import Flow, Table, Verdict, decide
from cport.identity import VerifiedIdentity
from cport.proxy import RelayCounters


@dataclass(eq=False)
class LiveConnection:
    id: str
    enforcer: str
    peer: str  # display: subject, workload or address
    peer_identity: int
    credential: VerifiedIdentity | None
    namespace: str
    workload: str
    port: int
    client: str
    upstream: str
    started_ns: int = field(default_factory=time.time_ns)
    proto: int = 6
    counters: RelayCounters = field(default_factory=RelayCounters)
    task: asyncio.Task[object] | None = None
    close_reason: str | None = None

    @property
    def workload_ref(self) -> str:
        return f"{self.namespace}/{self.workload}"

    def close(self, reason: str) -> None:
        """Ask the connection to end; its task records `reason` as the termination."""
        if self.close_reason is None:
            self.close_reason = reason
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "enforcer": self.enforcer,
            "peer": self.peer,
            "peerIdentity": self.peer_identity,
            "subject": self.credential.subject if self.credential else None,
            "tokenId": self.credential.token_id if self.credential else None,
            "expiresAt": self.credential.expires_at if self.credential else None,
            "workload": self.workload_ref,
            "port": self.port,
            "client": self.client,
            "upstream": self.upstream,
            "startedNs": self.started_ns,
            "bytesUp": self.counters.bytes_up,
            "bytesDown": self.counters.bytes_down,
        }


class Registry:
    def __init__(self) -> None:
        self._live: dict[str, LiveConnection] = {}

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._live.values()))

    def get(self, conn_id: str) -> LiveConnection | None:
        return self._live.get(conn_id)

    def add(self, conn: LiveConnection) -> None:
        self._live[conn.id] = conn

    def remove(self, conn: LiveConnection) -> None:
        self._live.pop(conn.id, None)

    def sweep(
        self,
        table: Table,
        now: float,
        revoked: Callable[[LiveConnection, float], bool],
    ) -> list[tuple[LiveConnection, str]]:
        """Close every connection the current state no longer allows; returns them with
        the reason."""
        closed: list[tuple[LiveConnection, str]] = []
        for conn in list(self._live.values()):
            reason = self._why_not(conn, table, now, revoked)
            if reason is not None:
                conn.close(reason)
                closed.append((conn, reason))
        return closed

    @staticmethod
    def _why_not(
        conn: LiveConnection,
        table: Table,
        now: float,
        revoked: Callable[[LiveConnection, float], bool],
    ) -> str | None:
        if conn.credential is not None and conn.credential.expires_at <= now:
            return "expired"
        if revoked(conn, now):
            return "revoked"
        wid = table.workload_ids.get((conn.namespace, conn.workload))
        if wid is None:
            return "workload-removed"
        flow = Flow(conn.peer_identity, wid, conn.proto, conn.port, conn.credential is not None)
        verdict = decide(table, flow).verdict
        if verdict is Verdict.DENIED or verdict is Verdict.AUTH_REQUIRED:
            return "policy-changed"
        return None


__all__ = ["LiveConnection", "Registry"]
