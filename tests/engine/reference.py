"""A naive evaluator written straight from the policy semantics (README "Semantics").

It shares no code with the compiler's resolution: it walks every policy and rule for every
flow, matches label requirements by hand, and matches CIDRs against the peer's *address*
(not against CIDR identities or an ipcache), so the property test checks the compiler's
identity allocation, selector index, port segmentation and lookup order all at once.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import dataclass

from cport.identity import Labels
from cport.model import Inventory, Mode, Op, PeerRule, Policy, Requirement, Rule, Selector, Workload

PROTOS = {"TCP": 6, "UDP": 17, "SCTP": 132}


@dataclass(frozen=True)
class Peer:
    """One end of a flow: labels, and the workload or external address behind it."""

    labels: Labels
    workload: Workload | None = None
    ip: str | None = None  # set for addresses outside the inventory


def _values(labels: Labels, source: str, key: str) -> list[str]:
    return [lab.value for lab in labels if lab.key == key and source in ("any", lab.source)]


def _req_matches(req: Requirement, peer: Peer) -> bool:
    if req.op is Op.CIDR:
        if peer.ip is None:
            return False  # CIDR rules only ever match traffic from outside the cluster
        ip = ipaddress.ip_address(peer.ip)
        inside = ip in ipaddress.ip_network(req.values[0])
        return inside and not any(ip in ipaddress.ip_network(e) for e in req.values[1:])
    vals = _values(peer.labels, req.source, req.key)
    if req.op is Op.IN:
        return any(v in req.values for v in vals)
    if req.op is Op.NOT_IN:
        return all(v not in req.values for v in vals)
    if req.op is Op.EXISTS:
        return len(vals) > 0
    if req.op is Op.DOES_NOT_EXIST:
        return len(vals) == 0
    return any(fnmatch.fnmatchcase(v, p) for v in vals for p in req.values)


def _sel_matches(sel: Selector, peer: Peer) -> bool:
    return all(_req_matches(r, peer) for r in sel.requirements)


def _named(inv: Inventory, labels: Labels | None, name: str) -> set[tuple[int, int]]:
    """(proto, port) pairs of workloads with these identity labels (None: every workload)."""
    out = set()
    for w in inv:
        if w.host_network:
            continue
        if labels is None or inv.identity_labels(w) == labels:
            out |= {(PROTOS[p.protocol], p.port) for p in w.ports if p.name == name}
    return out


def _entry_matches(
    inv: Inventory, pr: PeerRule, ingress: bool, ep: Peer, peer: Peer, proto: int, port: int
) -> bool:
    if pr.peers is not None and not any(_sel_matches(s, peer) for s in pr.peers):
        return False
    if pr.ports is None:
        return True
    for rng in pr.ports:
        protos = set(PROTOS.values()) if rng.protocol == "ANY" else {PROTOS[rng.protocol]}
        if proto not in protos:
            continue
        if rng.name:
            # Ingress: the endpoint's own named ports; egress: the destination's own.
            owner = ep if ingress else peer
            pairs = _named(inv, owner.labels, rng.name) if owner.workload is not None else set()
            if (proto, port) in pairs:
                return True
        elif rng.port == 0 or rng.port <= port <= (rng.end_port or rng.port):
            return True
    return False


def _direction(
    policies: list[Policy],
    inv: Inventory,
    ep: Peer,
    peer: Peer,
    proto: int,
    port: int,
    ingress: bool,
    allow_localhost: bool,
) -> str:
    """One direction's verdict: allowed, denied, audit or auth-required."""
    selecting: list[tuple[Policy, Rule]] = []
    for pol in policies:
        for rule in pol.rules:
            if (rule.selects_ingress if ingress else rule.selects_egress) and _sel_matches(
                rule.subject, ep
            ):
                selecting.append((pol, rule))
    if not selecting:
        return "allowed"
    # (deny?, mode, auth) of every entry that matches the flow.
    hits: list[tuple[bool, Mode, bool]] = []
    for pol, rule in selecting:
        allow = rule.ingress if ingress else rule.egress
        deny = rule.ingress_deny if ingress else rule.egress_deny
        for pr in allow:
            if _entry_matches(inv, pr, ingress, ep, peer, proto, port):
                hits.append((False, pol.mode, pr.auth))
        for pr in deny:
            if _entry_matches(inv, pr, ingress, ep, peer, proto, port):
                hits.append((True, pol.mode, False))
    if ingress and allow_localhost and peer.labels == Labels.parse("reserved:host"):
        hits.append((False, Mode.ENFORCE, False))

    def evaluate(counted: set[Mode]) -> str:
        mine = [h for h in hits if h[1] in counted]
        if any(d for d, _, _ in mine):
            return "denied"
        allows = [a for d, _, a in mine if not d]
        if allows:
            return "auth-required" if any(allows) else "allowed"
        default_deny = any(
            pol.mode in counted
            and (rule.default_deny_ingress if ingress else rule.default_deny_egress)
            for pol, rule in selecting
        )
        return "denied" if default_deny else "allowed"

    enforced = evaluate({Mode.ENFORCE})
    if enforced != "allowed":
        return enforced
    as_if_all = evaluate({Mode.ENFORCE, Mode.AUDIT})
    return "allowed" if as_if_all == "allowed" else "audit"


def reference_decide(
    policies: list[Policy],
    inv: Inventory,
    src: Peer,
    dst: Peer,
    proto: int,
    port: int,
    *,
    allow_localhost: bool = True,
) -> str:
    """The flow's verdict: the stricter of source egress and destination ingress."""
    rank = {"denied": 3, "auth-required": 2, "audit": 1, "allowed": 0}
    verdicts = ["allowed"]
    if src.workload is not None and not src.workload.host_network:
        verdicts.append(_direction(policies, inv, src, dst, proto, port, False, allow_localhost))
    if dst.workload is not None and not dst.workload.host_network:
        verdicts.append(_direction(policies, inv, dst, src, proto, port, True, allow_localhost))
    return max(verdicts, key=rank.__getitem__)
