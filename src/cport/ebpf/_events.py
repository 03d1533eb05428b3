"""Verdict events: the kernel's ring buffer → :class:`VerdictEvent` → audit events.

The programs write one ``struct verdict_event`` per denial, auth-required drop and audit
verdict (and per new allowed flow when configured), rate-limited in the kernel per flow
(source, destination, protocol, destination port, kind) and per CPU, so a flood cannot
drown the agent. Each carries the cookies of the rows that decided it; the datapath maps
them back to the rule entries (policy names and revisions) through its numbering.
"""

from __future__ import annotations

import ctypes
import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass

from cport.audit import AuditEvent, PolicyRef
from cport.ebpf import _layout as L
from cport.ebpf._encode import CellInfo, unmapped
from cport.ebpf._libbpf import SAMPLE_FN, check, check_ptr, lib
from cport.engine import RuleRef, Table
from cport.model import PROTO_NAMES, Mode, PolicyKey

_RANK = {"denied": 3, "auth-required": 2, "audit": 1, "allowed": 0}


@dataclass(frozen=True, slots=True)
class VerdictEvent:
    """One verdict the kernel reported.

    `kind` says why it was reported (``denied``, ``auth-required``: dropped for want of a
    live grant, ``audit``: allowed though an audit-mode policy would deny it, ``allowed``: a
    new allowed flow); `verdict` is the kernel's final verdict, `reason` the
    reason code `decide` would give. `ingress`/`egress` are the rows' cells (None where that
    direction is not governed, or the cookie is unknown to this process)."""

    time_ns: int  # unix ns
    kind: str
    verdict: str
    reason: str
    protocol: int
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    src_identity: int
    dst_identity: int
    hook: str  # ingress | egress: the tc hook that saw the packet
    ifindex: int
    epoch: int
    revision: int  # the table revision realised at that epoch (0: unknown)
    ingress_cookie: int = 0
    egress_cookie: int = 0
    ingress: CellInfo | None = None
    egress: CellInfo | None = None
    authenticated: bool = False
    suppressed: int = 0  # events of this flow the rate limit dropped before this one

    @property
    def allowed(self) -> bool:
        return self.verdict in ("allowed", "audit")

    def rule_refs(self) -> list[RuleRef]:
        """The rule entries behind the verdict, in `explain`'s order: egress then ingress,
        each allowed-by, denied-by, audited-by."""
        out: list[RuleRef] = []
        for cell in (self.egress, self.ingress):
            if cell is None:
                continue
            refs = cell.refs
            out.extend(r for r in refs if not r.deny and r.section != "selector")
            out.extend(r for r in refs if r.deny and r.mode is Mode.ENFORCE)
            out.extend(
                r for r in refs if (r.deny and r.mode is Mode.AUDIT) or r.section == "selector"
            )
        return out

    def policy_names(self) -> list[str]:
        """``kind/namespace/name`` of each policy behind the verdict, once each (from the
        cookie text when this process does not hold the rule entries)."""
        seen: dict[str, None] = {}
        for cell in (self.egress, self.ingress):
            if cell is None:
                continue
            for key in _policy_keys(cell):
                seen.setdefault("/".join(key), None)
        return list(seen)

    def to_json(self) -> dict[str, object]:
        return {
            "time_ns": self.time_ns,
            "kind": self.kind,
            "verdict": self.verdict,
            "reason": self.reason,
            "protocol": PROTO_NAMES.get(self.protocol, str(self.protocol)),
            "src": f"{self.src_ip}:{self.src_port}",
            "dst": f"{self.dst_ip}:{self.dst_port}",
            "srcIdentity": self.src_identity,
            "dstIdentity": self.dst_identity,
            "hook": self.hook,
            "epoch": self.epoch,
            "revision": self.revision,
            "authenticated": self.authenticated,
            "suppressed": self.suppressed,
            "policies": self.policy_names(),
        }


def _policy_keys(cell: CellInfo) -> list[tuple[str, str, str]]:
    """(kind, namespace, name) of each policy a cell names: from its refs, else its text."""
    if cell.refs:
        return [(r.policy.kind, r.policy.namespace, r.policy.name) for r in cell.refs]
    _, _, rest = cell.text.partition(": ")
    out = []
    for part in filter(None, rest.split("; ")):
        key = part.split("#", 1)[0]
        bits = key.split("/")
        if len(bits) == 3:
            out.append((bits[0], bits[1], bits[2]))
        elif len(bits) == 2:
            out.append((bits[0], "", bits[1]))
    return out


def combined_reason(
    verdict: str, ingress: CellInfo | None, egress: CellInfo | None, authenticated: bool
) -> str:
    """The reason code `decide` gives, from the two cells (as `combine` and `_admit` do)."""
    if authenticated:
        return "audit" if verdict == "audit" else "authenticated"
    if ingress is None and egress is None:
        return "not-selected"
    if ingress is None or egress is None:
        cell = ingress or egress
        assert cell is not None
        return cell.reason
    first, second = (
        (egress, ingress)
        if _RANK[egress.verdict] >= _RANK[ingress.verdict]
        else (
            ingress,
            egress,
        )
    )
    if first.verdict == "allowed" and first.reason == "allowed":
        return second.reason
    return first.reason


def decode_event(
    raw: bytes,
    cells: Callable[[int], CellInfo | None],
    revision_of: Callable[[int], int],
    wall_offset_ns: int,
) -> VerdictEvent:
    (
        ts,
        saddr,
        daddr,
        sport,
        dport,
        proto,
        verdict,
        kind,
        hook,
        src_id,
        dst_id,
        in_cookie,
        eg_cookie,
        epoch,
        ifindex,
        suppressed,
        flags,
    ) = L.VERDICT_EVENT.unpack(raw[: L.VERDICT_EVENT.size])
    ingress = cells(in_cookie) if flags & L.D_INGRESS else None
    egress = cells(eg_cookie) if flags & L.D_EGRESS else None
    verdict_name = L.VERDICT_NAMES.get(verdict, str(verdict))
    authenticated = bool(flags & L.D_AUTHENTICATED)
    if (flags & L.D_INGRESS and ingress is None) or (flags & L.D_EGRESS and egress is None):
        reason = verdict_name  # a cookie this process cannot name
    else:
        reason = combined_reason(verdict_name, ingress, egress, authenticated)
    return VerdictEvent(
        time_ns=ts + wall_offset_ns,
        kind=L.EVENT_KINDS.get(kind, str(kind)),
        verdict=verdict_name,
        reason=reason,
        protocol=proto,
        src_ip=unmapped(saddr)[0],
        src_port=socket.ntohs(sport),
        dst_ip=unmapped(daddr)[0],
        dst_port=socket.ntohs(dport),
        src_identity=src_id,
        dst_identity=dst_id,
        hook="egress" if hook == L.HOOK_EGRESS else "ingress",
        ifindex=ifindex,
        epoch=epoch,
        revision=revision_of(epoch),
        ingress_cookie=in_cookie,
        egress_cookie=eg_cookie,
        ingress=ingress,
        egress=egress,
        authenticated=authenticated,
        suppressed=suppressed,
    )


def to_audit_event(
    ev: VerdictEvent, *, node: str | None = None, table: Table | None = None
) -> AuditEvent:
    """The audit event for a kernel verdict, shaped as
    :func:`cport.audit.event_from_explanation` shapes an explained one (enforcer ``ebpf``).
    With `table` (the one realised), the peer's labels, the workloads' names and the
    policies' revisions are filled in; without it, revisions come from the rule entries
    this process holds, else 0."""
    seen: dict[tuple[str, str, str], PolicyRef] = {}
    refs = ev.rule_refs()
    if refs:
        for r in refs:
            key = (r.policy.kind, r.policy.namespace, r.policy.name)
            seen.setdefault(key, PolicyRef(*key, r.revision))
    else:
        for cell in (ev.egress, ev.ingress):
            for key in _policy_keys(cell) if cell is not None else ():
                seen.setdefault(key, PolicyRef(*key, 0))
    src_name, dst_name = ev.src_ip, ev.dst_ip
    peer_labels: tuple[str, ...] = ()
    if table is not None:
        for key, ref in list(seen.items()):
            info = table.policies.get(PolicyKey(*key))
            if info is not None and ref.revision == 0:
                seen[key] = PolicyRef(*key, info.revision)
        src_name = _workload_name(table, ev.src_identity, ev.src_ip) or ev.src_ip
        dst_name = _workload_name(table, ev.dst_identity, ev.dst_ip) or ev.dst_ip
        labels = table.identities.get(ev.src_identity)
        if labels is not None:
            peer_labels = tuple(labels.strings())
    return AuditEvent(
        time_ns=ev.time_ns,
        kind="decision",
        node=node or socket.gethostname(),
        enforcer="ebpf",
        verdict=ev.verdict,
        reason=ev.reason,
        protocol=PROTO_NAMES.get(ev.protocol, str(ev.protocol)),
        src_ip=ev.src_ip,
        src_port=ev.src_port,
        dst_ip=ev.dst_ip,
        dst_port=ev.dst_port,
        direction="ingress" if ev.ingress is not None or not ev.egress else "egress",
        peer_identity=ev.src_identity,
        peer_labels=peer_labels,
        subject=src_name,
        workload=dst_name,
        port=ev.dst_port,
        policies=tuple(seen.values()),
        table_revision=ev.revision,
    )


def _workload_name(table: Table, identity: int, address: str) -> str:
    workloads = table.endpoints.get(identity) or ()
    for w in workloads:
        if address in w.addresses:
            return w.ref
    return workloads[0].ref if workloads else ""


class RingReader:
    """libbpf's ring buffer consumer over the ``events`` map: :meth:`poll` returns the raw
    records that arrived (waiting up to `timeout_ms`)."""

    def __init__(self, map_fd: int) -> None:
        self._records: list[bytes] = []

        def on_sample(_ctx: int | None, data: int | None, size: int) -> int:
            if data:
                self._records.append(ctypes.string_at(data, size))
            return 0

        self._callback = SAMPLE_FN(on_sample)  # kept: libbpf holds the pointer
        self._rb: int | None = check_ptr(
            lib().ring_buffer__new(map_fd, self._callback, None, None), "ring_buffer__new"
        )

    def poll(self, timeout_ms: int = 0) -> list[bytes]:
        if self._rb is None:
            return []
        rc = lib().ring_buffer__poll(self._rb, timeout_ms)
        if rc < 0 and rc != -errno.EINTR:
            check(rc, "ring_buffer__poll")
        out, self._records = self._records, []
        return out

    def close(self) -> None:
        if self._rb is not None:
            lib().ring_buffer__free(self._rb)
            self._rb = None
