"""`decide`: the pure lookup every enforcer and `explain` share.

The order of probes is the whole algorithm: the peer's exact-port row, the peer's range rows,
then the wildcard peer's exact and range rows, then the endpoint policy's default. Because the
compiler merges wildcard rows into each peer's own rows, the first hit is complete.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from cport.engine._table import EndpointPolicy, Table
from cport.engine._types import Cell, Decision, Flow, Reason, Verdict
from cport.identity import WILDCARD_ID

_NOT_SELECTED = Decision(Verdict.ALLOWED, Reason.NOT_SELECTED)
_AUTH_REQUIRED = Verdict.AUTH_REQUIRED
_RANK = {Verdict.DENIED: 3, Verdict.AUTH_REQUIRED: 2, Verdict.AUDIT: 1, Verdict.ALLOWED: 0}


@dataclass(frozen=True, slots=True)
class Hit:
    """Where a lookup landed: the row (peer, protocol, port range) or the default."""

    cell: Cell
    peer: int | None  # identity of the row's peer (0: wildcard); None: no row, the default
    lo: int = 0
    hi: int = 0


def lookup(epp: EndpointPolicy, peer: int, proto: int, port: int) -> Cell:
    """The cell for `peer` reaching (or reached by) an endpoint on proto/port."""
    cell = epp.exact.get((peer << 24) | (proto << 16) | port)
    if cell is not None:
        return cell
    return lookup_rest(epp, peer, proto, port)


def lookup_rest(epp: EndpointPolicy, peer: int, proto: int, port: int) -> Cell:
    """:func:`lookup` after its first probe (the peer's exact row) missed."""
    pm = epp.ranges.get((peer << 8) | proto)
    if pm is not None:
        i = bisect_right(pm.starts, port) - 1
        if i >= 0 and port <= pm.ends[i]:
            return pm.cells[i]
    if epp.has_wildcard:
        cell = epp.exact.get((proto << 16) | port)
        if cell is not None:
            return cell
        pm = epp.ranges.get(proto)
        if pm is not None:
            i = bisect_right(pm.starts, port) - 1
            if i >= 0 and port <= pm.ends[i]:
                return pm.cells[i]
    return epp.default


def lookup_hit(epp: EndpointPolicy, peer: int, proto: int, port: int) -> Hit:
    """:func:`lookup`, also saying which row matched (for `explain`). Same probes, same order;
    a test checks the two agree on every flow it generates."""
    for who in (peer, WILDCARD_ID):
        cell = epp.exact.get((who << 24) | (proto << 16) | port)
        if cell is not None:
            return Hit(cell, who, port, port)
        pm = epp.ranges.get((who << 8) | proto)
        if pm is not None:
            i = pm.find(port)
            if i >= 0:
                return Hit(pm.cells[i], who, pm.starts[i], pm.ends[i])
    return Hit(epp.default, None)


def combine(eg: Cell, ing: Cell) -> Decision:
    """Both directions governed: the stricter verdict wins (egress first on ties)."""
    first, second = (eg, ing) if _RANK[eg.verdict] >= _RANK[ing.verdict] else (ing, eg)
    reason = first.reason
    if first.verdict is Verdict.ALLOWED and first.reason is Reason.ALLOWED:
        # `allowed` means an allow rule matched in every governed direction.
        reason = second.reason
    decision = eg.pairs[ing] = Decision(first.verdict, reason, eg, ing)
    return decision


def _admit(decision: Decision) -> Decision:
    """An auth-required decision for a peer with a verified credential: allowed (still
    `audit` when an audit-mode policy on the other direction would block)."""
    cells = (decision.egress, decision.ingress)
    if any(c is not None and c.verdict is Verdict.AUDIT for c in cells):
        return Decision(Verdict.AUDIT, Reason.AUDIT, decision.egress, decision.ingress)
    return Decision(Verdict.ALLOWED, Reason.AUTHENTICATED, decision.egress, decision.ingress)


def decide(table: Table, flow: Flow) -> Decision:
    """The verdict for `flow`: source egress and destination ingress, each looked up in the
    compiled table. Pure: no I/O, no clock; the same table and flow give the same answer.

    Each direction takes :func:`lookup`'s first probe (the peer's exact-port row) inline and
    calls :func:`lookup` for the rest; this is the hot path of every enforcer."""
    src = flow.src
    dst = flow.dst
    low = (flow.proto << 16) | flow.port
    epp = table.ingress.get(dst)
    if epp is not None:
        ing = epp.exact.get((src << 24) | low) or lookup_rest(epp, src, flow.proto, flow.port)
        epp = table.egress.get(src)
        if epp is None:
            decision = ing.decision
        else:
            eg = epp.exact.get((dst << 24) | low) or lookup_rest(epp, dst, flow.proto, flow.port)
            decision = eg.pairs.get(ing) or combine(eg, ing)
        # Only ingress rows can require authentication, so only this path checks it.
        if flow.authenticated and decision.verdict is _AUTH_REQUIRED:
            return _admit(decision)
        return decision
    epp = table.egress.get(src)
    if epp is None:
        return _NOT_SELECTED
    eg = epp.exact.get((dst << 24) | low) or lookup_rest(epp, dst, flow.proto, flow.port)
    return eg.decision
