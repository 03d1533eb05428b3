"""One place where a connection attempt becomes a decision, an audit event and a flow record,
for every userspace enforcer (the CONNECT gateway and per-port listeners)."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from cport.audit import AuditEvent, PolicyRef
from cport.engine import Decision, Endpoint, Flow, Reason, RuleRef, Table, Verdict, decide, explain
from cport.identity import Labels, VerifiedIdentity
from cport.model import Workload

_NAMES = {6: "TCP", 17: "UDP", 132: "SCTP"}


@dataclass(frozen=True, slots=True)
class Attempt:
    """Who tries to reach which workload port, from where."""

    peer_identity: int
    peer_labels: Labels
    peer: str  # display name
    credential: VerifiedIdentity | None
    workload: Workload
    workload_identity: int
    port: int
    client: tuple[str, int]
    proto: int = 6

    @property
    def flow(self) -> Flow:
        return Flow(
            self.peer_identity,
            self.workload_identity,
            self.proto,
            self.port,
            self.credential is not None,
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    decision: Decision
    refs: tuple[RuleRef, ...]  # the policies behind the verdict (contributions, or selectors)
    explanation_id: str

    @property
    def allowed(self) -> bool:
        return self.decision.allowed

    @property
    def policy_names(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for r in self.refs:
            if r.policy.kind != "Default":
                k = r.policy
                seen[f"{k.namespace}/{k.name}" if k.namespace else k.name] = None
        return tuple(seen)


def _refs(table: Table, attempt: Attempt, decision: Decision) -> tuple[RuleRef, ...]:
    out: list[RuleRef] = []
    for cell in (decision.egress, decision.ingress):
        if cell is not None:
            out.extend(cell.contributions)
    if not out and decision.verdict is Verdict.DENIED:
        # Default deny: the policies that select the workload are the ones to read.
        epp = table.ingress.get(attempt.workload_identity)
        if epp is not None:
            out.extend(epp.selected_by)
    if decision.reason is Reason.AUTHENTICATED or decision.verdict is Verdict.AUTH_REQUIRED:
        out = [r for r in out if not r.deny]
    return tuple(out)


class Explanations:
    """Explanation ids handed to refused clients, resolved on demand (`GET
    /v1/explanations/{id}`): the table snapshot is immutable, so the explanation computed
    later is exactly the one that applied. Bounded; the oldest are forgotten."""

    def __init__(self, keep: int = 4096) -> None:
        self._items: OrderedDict[str, tuple[Table, Attempt, int]] = OrderedDict()
        self._keep = keep

    def add(self, table: Table, attempt: Attempt) -> str:
        eid = "x-" + secrets.token_hex(6)
        self._items[eid] = (table, attempt, time.time_ns())
        while len(self._items) > self._keep:
            self._items.popitem(last=False)
        return eid

    def get(self, eid: str) -> dict[str, object] | None:
        hit = self._items.get(eid)
        if hit is None:
            return None
        table, a, when = hit
        src = Endpoint(a.peer_identity, a.peer_labels, a.peer)
        dst = Endpoint(
            a.workload_identity, table.identities[a.workload_identity], a.workload.ref, a.workload
        )
        doc = explain(table, a.flow, src, dst).to_json()
        doc["id"] = eid
        doc["timeNs"] = when
        if a.credential is not None:
            doc["from"]["credential"] = a.credential.to_json()  # type: ignore[index]
        return doc


def evaluate(table: Table, attempt: Attempt, explanations: Explanations) -> Outcome:
    decision = decide(table, attempt.flow)
    eid = "" if decision.allowed else explanations.add(table, attempt)
    return Outcome(decision, _refs(table, attempt, decision), eid)


def audit_event(
    attempt: Attempt,
    *,
    node: str,
    enforcer: str,
    verdict: str,
    reason: str,
    table_revision: int,
    refs: tuple[RuleRef, ...] = (),
    kind: str = "decision",
    server: tuple[str, int] = ("", 0),
    time_ns: int | None = None,
    bytes_in: int = 0,
    bytes_out: int = 0,
    duration_ns: int = 0,
    termination: str = "",
    extra: dict[str, object] | None = None,
) -> AuditEvent:
    """The audit record of an attempt (decision) or of a relayed connection's end (close).
    Never the credential: its subject, issuer, kind and token id."""
    seen: dict[tuple[str, str, str], PolicyRef] = {}
    for r in refs:
        if r.policy.kind != "Default":
            key = (r.policy.kind, r.policy.namespace, r.policy.name)
            seen.setdefault(key, PolicyRef(*key, r.revision))
    cred = attempt.credential
    return AuditEvent(
        time_ns=time.time_ns() if time_ns is None else time_ns,
        kind=kind,
        node=node,
        enforcer=enforcer,
        verdict=verdict,
        reason=reason,
        protocol=_NAMES.get(attempt.proto, str(attempt.proto)),
        src_ip=attempt.client[0],
        src_port=attempt.client[1],
        dst_ip=server[0],
        dst_port=server[1] or attempt.port,
        direction="ingress",
        peer_identity=attempt.peer_identity,
        peer_labels=tuple(attempt.peer_labels.strings()),
        subject=cred.subject if cred else attempt.peer,
        issuer=cred.issuer if cred else "",
        credential_kind=cred.kind if cred else "",
        token_id=cred.token_id if cred else "",
        workload=attempt.workload.ref,
        port=attempt.port,
        policies=tuple(seen.values()),
        table_revision=table_revision,
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        duration_ns=duration_ns,
        termination=termination,
        extra=extra or {},
    )


__all__ = ["Attempt", "Explanations", "Outcome", "audit_event", "evaluate"]
