"""Decisions → audit events: the mapping every enforcer (and `explain --record`) uses."""

from __future__ import annotations

import socket
import time

from cport.audit._event import AuditEvent, PolicyRef
from cport.engine import Explanation
from cport.identity import VerifiedIdentity


def event_from_explanation(
    exp: Explanation,
    *,
    enforcer: str,
    credential: VerifiedIdentity | None = None,
    node: str | None = None,
    time_ns: int | None = None,
) -> AuditEvent:
    """The decision event for an explained flow: verdict, reason, both ends, and every
    policy that allowed, denied or audited it (with revisions). Never the credential itself:
    its subject, issuer, kind and token id (jti or SHA-256)."""
    seen: dict[tuple[str, str, str], PolicyRef] = {}
    for rep in (exp.egress, exp.ingress):
        for ref in (*rep.allowed_by, *rep.denied_by, *rep.audited_by):
            key = (ref.policy.kind, ref.policy.namespace, ref.policy.name)
            seen.setdefault(key, PolicyRef(*key, ref.revision))
    dst = exp.dst
    src = exp.src
    return AuditEvent(
        time_ns=time.time_ns() if time_ns is None else time_ns,
        kind="decision",
        node=node or socket.gethostname(),
        enforcer=enforcer,
        verdict=exp.verdict if exp.decision.verdict.value != "auth-required" else "auth-required",
        reason=exp.decision.reason.value,
        protocol=exp.protocol,
        src_ip=src.workload.addresses[0] if src.workload and src.workload.addresses else "",
        dst_ip=dst.workload.addresses[0] if dst.workload and dst.workload.addresses else "",
        dst_port=exp.flow.port,
        direction="ingress",
        peer_identity=exp.flow.src,
        peer_labels=tuple(src.labels.strings()),
        subject=credential.subject
        if credential
        else (src.workload.ref if src.workload else src.display),
        issuer=credential.issuer if credential else "",
        credential_kind=credential.kind if credential else "",
        token_id=credential.token_id if credential else "",
        workload=dst.workload.ref if dst.workload else dst.display,
        port=exp.flow.port,
        policies=tuple(seen.values()),
        table_revision=exp.revision,
    )
