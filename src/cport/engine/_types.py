"""Engine value types: flows, verdicts, the cells stored in table rows, and decisions.

A :class:`Cell` is what one table row maps to: the verdict for that (endpoint, direction,
peer, protocol, port range) and the rule entries that produced it. Cells are interned by the
compiler, so many rows share one object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from cport.errors import Location
from cport.model import Direction, Mode, PolicyKey


class Verdict(StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"
    AUDIT = "audit"  # would be denied by an audit-mode policy; allowed and logged
    AUTH_REQUIRED = "auth-required"  # allowed only with a verified credential


class Reason(StrEnum):
    """Stable reason codes (documented in README and docs/policy.md)."""

    ALLOWED = "allowed"  # an allow rule matched
    NOT_SELECTED = "not-selected"  # no policy governs this direction: allowed
    NO_DEFAULT_DENY = "no-default-deny"  # selected, no rule matched, default deny disabled
    DENIED_BY_POLICY = "denied-by-policy"  # a deny rule matched (deny beats allow)
    DEFAULT_DENY = "default-deny"  # selected, no allow rule matched
    AUTH_REQUIRED = "auth-required"  # the matching allow rule needs a verified credential
    AUDIT = "audit"  # an audit-mode policy would have denied; allowed and logged
    AUTHENTICATED = "authenticated"  # auth-required, and the peer presented a verified credential


@dataclass(frozen=True, slots=True)
class RuleRef:
    """One entry of one rule of one policy, as it contributes to a cell."""

    policy: PolicyKey
    revision: int
    mode: Mode
    rule: int
    section: str  # ingress | ingressDeny | egress | egressDeny | default
    entry: int
    location: Location
    auth: bool = False

    @property
    def deny(self) -> bool:
        return self.section.endswith("Deny")

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.policy.kind,
            "namespace": self.policy.namespace,
            "name": self.policy.name,
            "revision": self.revision,
            "mode": self.mode.value,
            "rule": f"{self.section}[{self.entry}]" if self.section != "default" else "default",
            "source": str(self.location),
        }


#: Cilium's allow-localhost=auto in Kubernetes mode: the host may always reach local pods.
LOCALHOST_REF = RuleRef(
    PolicyKey("Default", "", "allow-localhost"),
    0,
    Mode.ENFORCE,
    0,
    "default",
    0,
    Location("<cilium default: allow-localhost in Kubernetes mode>"),
)


@dataclass(frozen=True, slots=True, eq=False)
class Cell:
    """A row's value: verdict, reason and the contributing rule entries.

    Cells are interned by the compiler, so identity is equality (and hashing is by identity,
    which keeps `decide` cheap). `decision` is this cell's verdict as a one-direction
    :class:`Decision`; `pairs` memoises combined decisions with the other direction's cells."""

    verdict: Verdict
    reason: Reason
    contributions: tuple[RuleRef, ...] = ()
    decision: Decision = field(default=None, repr=False)  # type: ignore[assignment]
    pairs: dict[Cell, Decision] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class Decision:
    """The result of :func:`cport.engine.decide`: a verdict, a reason code, and the cells of
    each direction checked (``None`` where the direction is not governed by any policy)."""

    verdict: Verdict
    reason: Reason
    egress: Cell | None = None
    ingress: Cell | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict in (Verdict.ALLOWED, Verdict.AUDIT)


@dataclass(frozen=True, slots=True)
class Flow:
    """A connection attempt in identity terms: source and destination security identities,
    IP protocol number (6 TCP, 17 UDP, 132 SCTP) and destination port. `authenticated`: the
    source presented a verified credential (or holds a live grant), which is what an
    ``authentication: required`` row asks for."""

    src: int
    dst: int
    proto: int
    port: int
    authenticated: bool = False


__all__ = ["Cell", "Decision", "Direction", "Flow", "Reason", "RuleRef", "Verdict"]
