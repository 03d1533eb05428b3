"""The validated policy model: what every importer (PortPolicy, Cilium, NetworkPolicy) produces.

Stage 1 of the pipeline. Nothing here knows about identities' numbers or the table; selectors
are still selectors (see :mod:`cport.engine` for resolution).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from cport.errors import Location
from cport.model._selector import Selector

PROTOCOLS = ("TCP", "UDP", "SCTP", "ANY")
PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}
PROTO_NAMES = {v: k for k, v in PROTO_NUMBERS.items()}


class Mode(StrEnum):
    ENFORCE = "enforce"
    AUDIT = "audit"


class Direction(StrEnum):
    INGRESS = "ingress"
    EGRESS = "egress"


@dataclass(frozen=True, slots=True)
class PortRange:
    """A protocol and an inclusive port range. ``port == 0`` means every port. A named port has
    ``name`` set and is resolved against a workload's container ports by the engine."""

    protocol: str = "ANY"
    port: int = 0
    end_port: int = 0
    name: str | None = None

    def __str__(self) -> str:
        if self.name:
            where = self.name
        elif self.port == 0:
            where = "*"
        elif self.end_port and self.end_port != self.port:
            where = f"{self.port}-{self.end_port}"
        else:
            where = str(self.port)
        return f"{where}/{self.protocol}"


@dataclass(frozen=True, slots=True)
class PeerRule:
    """One allow or deny entry of a rule: which peers, which ports.

    `peers` is a disjunction of selectors; ``None`` means every peer (L3 wildcard, Cilium's
    ``reserved:all``). `ports` ``None`` means every port of every protocol. An empty `peers`
    tuple matches nobody (Cilium's empty rule ``{}``)."""

    peers: tuple[Selector, ...] | None
    ports: tuple[PortRange, ...] | None
    location: Location
    auth: bool = False
    description: str = ""


@dataclass(frozen=True, slots=True)
class Rule:
    """One `spec`: a subject selector and its rules per direction.

    `default_deny_ingress` says whether selecting a workload in ingress makes the workload
    default-deny there (Cilium ``enableDefaultDeny``); `selects_ingress` whether the rule has
    anything to say about ingress at all."""

    subject: Selector
    location: Location
    ingress: tuple[PeerRule, ...] = ()
    ingress_deny: tuple[PeerRule, ...] = ()
    egress: tuple[PeerRule, ...] = ()
    egress_deny: tuple[PeerRule, ...] = ()
    selects_ingress: bool = False
    selects_egress: bool = False
    default_deny_ingress: bool = True
    default_deny_egress: bool = True
    description: str = ""


@dataclass(frozen=True, slots=True)
class PolicyKey:
    kind: str
    namespace: str  # "" for cluster-wide kinds
    name: str

    def __str__(self) -> str:
        return (
            f"{self.kind}/{self.namespace}/{self.name}"
            if self.namespace
            else f"{self.kind}/{self.name}"
        )


@dataclass(frozen=True, slots=True)
class Policy:
    """A validated policy from any importer. `rules` holds one entry per `spec`/`specs` item."""

    key: PolicyKey
    mode: Mode
    rules: tuple[Rule, ...]
    location: Location
    warnings: tuple[str, ...] = field(default=())

    @property
    def kind(self) -> str:
        return self.key.kind

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def namespace(self) -> str:
        return self.key.namespace
