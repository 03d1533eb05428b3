"""`explain`: why a flow gets its verdict, told through the same lookup `decide` uses.

For each direction the report gives the verdict and reason, the row that matched (peer,
protocol, port range) and every policy that allowed, denied, or merely selected the endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cport.engine._flow import Endpoint
from cport.engine._lookup import Hit, decide, lookup_hit
from cport.engine._table import Table
from cport.engine._types import Decision, Flow, Reason, RuleRef, Verdict
from cport.model import PROTO_NAMES, Direction, Mode


def _refs(refs: tuple[RuleRef, ...] | list[RuleRef]) -> list[dict[str, object]]:
    return [r.to_json() for r in refs]


@dataclass
class DirectionReport:
    direction: Direction
    endpoint: str | None  # the governed endpoint's name; None when it is not a workload
    verdict: Verdict
    reason: Reason
    hit: Hit | None = None
    allowed_by: list[RuleRef] = field(default_factory=list)
    denied_by: list[RuleRef] = field(default_factory=list)
    selected_by: list[RuleRef] = field(default_factory=list)
    audited_by: list[RuleRef] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        row: dict[str, object] | None = None
        if self.hit is not None and self.hit.peer is not None:
            row = {
                "peer": "any" if self.hit.peer == 0 else self.hit.peer,
                "ports": f"{self.hit.lo}"
                if self.hit.lo == self.hit.hi
                else (
                    "*"
                    if (self.hit.lo, self.hit.hi) == (0, 65535)
                    else f"{self.hit.lo}-{self.hit.hi}"
                ),
            }
        return {
            "endpoint": self.endpoint,
            "governed": bool(self.selected_by),
            "verdict": self.verdict.value,
            "reason": self.reason.value,
            "row": row,
            "allowedBy": _refs(self.allowed_by),
            "deniedBy": _refs(self.denied_by),
            "selectedBy": _refs(self.selected_by),
            "auditedBy": _refs(self.audited_by),
        }


@dataclass
class Explanation:
    """The answer to "may SRC reach DST on PORT, and why?"."""

    flow: Flow
    src: Endpoint
    dst: Endpoint
    decision: Decision
    egress: DirectionReport
    ingress: DirectionReport
    revision: int

    @property
    def verdict(self) -> str:
        """``allowed``, ``denied`` or ``audit`` (auth-required is denied without a credential)."""
        v = self.decision.verdict
        return "denied" if v is Verdict.AUTH_REQUIRED else v.value

    @property
    def protocol(self) -> str:
        return PROTO_NAMES.get(self.flow.proto, str(self.flow.proto))

    def to_json(self) -> dict[str, object]:
        return {
            "verdict": self.verdict,
            "reason": self.decision.reason.value,
            "authenticationRequired": any(
                c is not None and c.verdict is Verdict.AUTH_REQUIRED
                for c in (self.decision.egress, self.decision.ingress)
            ),
            "authenticated": self.flow.authenticated,
            "from": self.src.to_json(),
            "to": self.dst.to_json(),
            "protocol": self.protocol,
            "port": self.flow.port,
            "tableRevision": self.revision,
            "egress": self.egress.to_json(),
            "ingress": self.ingress.to_json(),
        }


def _direction(
    table: Table, direction: Direction, ep: Endpoint, peer: int, flow: Flow
) -> DirectionReport:
    source = table.egress if direction is Direction.EGRESS else table.ingress
    epp = source.get(ep.identity)
    name = ep.workload.ref if ep.workload is not None else None
    if epp is None:
        return DirectionReport(direction, name, Verdict.ALLOWED, Reason.NOT_SELECTED)
    hit = lookup_hit(epp, peer, flow.proto, flow.port)
    cell = hit.cell
    rep = DirectionReport(
        direction, name, cell.verdict, cell.reason, hit, selected_by=list(epp.selected_by)
    )
    for ref in cell.contributions:
        if ref.deny and ref.mode is Mode.ENFORCE:
            rep.denied_by.append(ref)
        elif ref.deny:
            rep.audited_by.append(ref)
        else:
            rep.allowed_by.append(ref)
    if cell.reason is Reason.AUDIT and not rep.audited_by:
        # Audit because an audit-mode policy selects the endpoint and allows nothing here,
        # or requires authentication.
        rep.audited_by = [r for r in epp.selected_by if r.mode is Mode.AUDIT]
    return rep


def explain(table: Table, flow: Flow, src: Endpoint, dst: Endpoint) -> Explanation:
    """Explain `flow` (from `src` to `dst`, already resolved to identities)."""
    decision = decide(table, flow)
    egress = _direction(table, Direction.EGRESS, src, flow.dst, flow)
    ingress = _direction(table, Direction.INGRESS, dst, flow.src, flow)
    return Explanation(flow, src, dst, decision, egress, ingress, table.revision)
