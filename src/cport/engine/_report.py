"""`ports`: every port of a workload, who may reach it under which policy, and the same for
the workload's egress. The answer to "which port is open for that workload?"."""

from __future__ import annotations

from dataclasses import dataclass, field

from cport.engine._table import EndpointPolicy, Entry, Table
from cport.engine._types import Reason
from cport.identity import RESERVED_NAMES, Labels
from cport.model import PROTO_NAMES, PROTO_NUMBERS, Direction, Workload

_ALL = (0, 65535)


def describe_identity(table: Table, num: int) -> dict[str, object]:
    """A peer identity for people: its workloads, reserved name, CIDR, or labels."""
    ws = table.endpoints.get(num)
    labels = table.identities.get(num, Labels())
    out: dict[str, object] = {"identity": num}
    if ws:
        out["workloads"] = [w.ref for w in ws]
        out["serviceAccount"] = ws[0].service_account
    elif num in RESERVED_NAMES:
        out["entity"] = RESERVED_NAMES[num]
    elif labels.has("cidr", "prefix"):
        out["cidr"] = labels.get("cidr", "prefix")
    else:
        out["labels"] = labels.strings()
    return out


def _port_text(lo: int, hi: int) -> str:
    if (lo, hi) == _ALL:
        return "*"
    return str(lo) if lo == hi else f"{lo}-{hi}"


@dataclass
class Grant:
    """One rule entry as it applies to a port: which peers, from which policy."""

    entry: Entry | None  # None: no policy governs the direction (everyone may connect)
    peers: list[str]
    resolved: list[dict[str, object]] | None  # None: any peer

    @property
    def policy_name(self) -> str:
        if self.entry is None:
            return ""
        ref = self.entry.ref
        return (
            f"{ref.policy.namespace}/{ref.policy.name}"
            if ref.policy.namespace
            else (ref.policy.name)
        )

    @property
    def mode(self) -> str:
        return self.entry.ref.mode.value if self.entry else "none"

    @property
    def auth(self) -> bool:
        return bool(self.entry and self.entry.ref.auth)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "peers": self.peers,
            "resolved": "any" if self.resolved is None else self.resolved,
            "mode": self.mode,
            "authentication": "required" if self.auth else "none",
            "policy": None,
        }
        if self.entry is not None:
            ref = self.entry.ref
            out["policy"] = {
                "kind": ref.policy.kind,
                "namespace": ref.policy.namespace,
                "name": ref.policy.name,
                "revision": ref.revision,
                "rule": f"{ref.section}[{ref.entry}]" if ref.section != "default" else "default",
                "source": str(ref.location),
            }
        return out

    def names(self) -> str:
        """The resolved peers in a few words, for tables."""
        if self.resolved is None:
            return "any peer"
        parts: list[str] = []
        for r in self.resolved:
            ws = r.get("workloads")
            if isinstance(ws, list):
                parts.extend(str(w) for w in ws)
            else:
                parts.append(str(r.get("entity") or r.get("cidr") or f"identity {r['identity']}"))
        return ", ".join(parts) if parts else "nobody (no identity matches yet)"


@dataclass
class PortLine:
    protocol: str
    lo: int
    hi: int
    name: str = ""
    allowed: list[Grant] = field(default_factory=list)
    denied: list[Grant] = field(default_factory=list)

    @property
    def port(self) -> str:
        return _port_text(self.lo, self.hi)

    def to_json(self) -> dict[str, object]:
        return {
            "port": self.port,
            "protocol": self.protocol,
            "name": self.name or None,
            "allowed": [g.to_json() for g in self.allowed],
            "denied": [g.to_json() for g in self.denied],
        }


@dataclass
class DirectionPorts:
    direction: Direction
    governed: bool
    default: str  # what happens to traffic no rule names
    selected_by: list[dict[str, object]]
    ports: list[PortLine]

    def to_json(self) -> dict[str, object]:
        return {
            "governed": self.governed,
            "default": self.default,
            "selectedBy": self.selected_by,
            "ports": [p.to_json() for p in self.ports],
        }


@dataclass
class PortReport:
    workload: Workload
    identity: int
    labels: Labels
    revision: int
    ingress: DirectionPorts
    egress: DirectionPorts

    def to_json(self) -> dict[str, object]:
        w = self.workload
        return {
            "workload": {
                "name": w.name,
                "namespace": w.namespace,
                "kind": w.kind,
                "serviceAccount": w.service_account,
                "addresses": list(w.addresses),
                "identity": self.identity,
                "labels": self.labels.strings(),
            },
            "tableRevision": self.revision,
            "ingress": self.ingress.to_json(),
            "egress": self.egress.to_json(),
        }


def _grant(table: Table, entry: Entry) -> Grant:
    if entry.peers is None:
        return Grant(entry, ["any peer"], None)
    if entry.selectors is None:  # the allow-localhost default
        return Grant(
            entry,
            ["entity:host (Cilium allow-localhost default)"],
            [describe_identity(table, n) for n in sorted(entry.peers)],
        )
    return Grant(
        entry,
        [str(s) for s in entry.selectors],
        [describe_identity(table, n) for n in sorted(entry.peers)],
    )


def _entry_keys(entry: Entry) -> list[tuple[str, int, int]]:
    """An entry's port ranges for display; all three protocols on one range show as ANY."""
    by_range: dict[tuple[int, int], set[int]] = {}
    for proto, lo, hi in entry.ports:
        by_range.setdefault((lo, hi), set()).add(proto)
    out = []
    for (lo, hi), protos in by_range.items():
        if len(protos) == len(PROTO_NAMES):
            out.append(("ANY", lo, hi))
        else:
            out.extend((PROTO_NAMES[p], lo, hi) for p in sorted(protos))
    return out


def _covers(entry: Entry, proto: str, lo: int, hi: int) -> bool:
    """Does `entry` apply to every port of the line (proto ANY: to every protocol)?"""
    wanted = set(PROTO_NAMES) if proto == "ANY" else {PROTO_NUMBERS[proto]}
    got = {p for p, elo, ehi in entry.ports if elo <= lo and ehi >= hi}
    return wanted <= got


def _direction(
    table: Table, epp: EndpointPolicy | None, direction: Direction, own: list[tuple[str, int, str]]
) -> DirectionPorts:
    if epp is None:
        lines = [PortLine(proto, port, port, name) for proto, port, name in own]
        for line in lines:
            line.allowed.append(Grant(None, ["any peer"], None))
        return DirectionPorts(
            direction, False, "allow (no policy selects this workload)", [], lines
        )
    default = {
        Reason.DEFAULT_DENY: "deny",
        Reason.AUDIT: "audit (allowed, logged)",
        Reason.NO_DEFAULT_DENY: "allow (default deny disabled)",
    }.get(epp.default.reason, "allow")
    keys: dict[tuple[str, int, int], str] = {}
    for pname, port, name in own:
        keys[(pname, port, port)] = name
    for entry in epp.entries:
        for key in _entry_keys(entry):
            keys.setdefault(key, "")
    lines = []
    for (proto, lo, hi), name in sorted(keys.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        line = PortLine(proto, lo, hi, name)
        for entry in epp.entries:
            if _covers(entry, proto, lo, hi):
                (line.denied if entry.ref.deny else line.allowed).append(_grant(table, entry))
        lines.append(line)
    return DirectionPorts(direction, True, default, [r.to_json() for r in epp.selected_by], lines)


def ports_report(table: Table, workload: Workload) -> PortReport:
    """Build the `cport ports` answer for `workload`."""
    num = table.workload_ids[(workload.namespace, workload.name)]
    own = [(p.protocol, p.port, p.name) for p in workload.ports]
    ingress = _direction(table, table.ingress.get(num), Direction.INGRESS, own)
    egress = _direction(table, table.egress.get(num), Direction.EGRESS, [])
    return PortReport(workload, num, table.identities[num], table.revision, ingress, egress)


__all__ = ["Grant", "PortLine", "PortReport", "ports_report"]
