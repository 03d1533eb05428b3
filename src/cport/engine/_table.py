"""The compiled table: stage 3 of the pipeline, what `decide` reads and enforcers realise.

Conceptually a set of rows keyed by (endpoint identity, direction, peer identity, protocol,
port range) → :class:`Cell`. Physically, each endpoint's policy in one direction is an
:class:`EndpointPolicy` shared by every endpoint selected by the same rules (as Cilium shares a
SelectorPolicy per identity), holding two dicts with integer keys:

* ``exact[(peer << 24) | (proto << 16) | port]`` → Cell, for single-port rows;
* ``ranges[(peer << 8) | proto]`` → :class:`PortMap`, for port ranges and all-ports rows.

Peer 0 is the wildcard ("any peer"). A peer that has rows of its own for a protocol has the
wildcard's rows merged in at compile time, so the first hit is always complete.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

from cport.engine._types import Cell, RuleRef
from cport.identity import Labels
from cport.model import Direction, PolicyKey, Selector, Workload

PEER_SHIFT = 24
PROTO_SHIFT = 16


class PortMap:
    """Disjoint, sorted port segments of one (peer, protocol) with their cells."""

    __slots__ = ("cells", "ends", "starts")

    def __init__(self, segments: list[tuple[int, int, Cell]]) -> None:
        self.starts = [s[0] for s in segments]
        self.ends = [s[1] for s in segments]
        self.cells = [s[2] for s in segments]

    def find(self, port: int) -> int:
        """Index of the segment holding `port`, or -1."""
        i = bisect_right(self.starts, port) - 1
        if i >= 0 and port <= self.ends[i]:
            return i
        return -1

    def __len__(self) -> int:
        return len(self.starts)


@dataclass(frozen=True, slots=True)
class Entry:
    """A rule entry as resolved for one endpoint policy (kept for `ports` and `explain`)."""

    ref: RuleRef
    selectors: tuple[Selector, ...] | None  # None: every peer
    peers: frozenset[int] | None
    ports: tuple[tuple[int, int, int], ...]  # (proto, lo, hi) after named-port resolution
    unresolved: tuple[str, ...] = ()  # named ports that matched no container port


@dataclass
class EndpointPolicy:
    """One direction of policy for every endpoint selected by the same set of rules."""

    direction: Direction
    selected_by: tuple[RuleRef, ...]
    default: Cell
    exact: dict[int, Cell] = field(default_factory=dict)
    ranges: dict[int, PortMap] = field(default_factory=dict)
    entries: tuple[Entry, ...] = ()
    has_wildcard: bool = False  # rows for peer 0 exist (lookup may skip those probes if not)

    @property
    def rows(self) -> int:
        return len(self.exact) + sum(len(pm) for pm in self.ranges.values())


@dataclass
class PolicyInfo:
    """A policy in the table and the table revision at which it last changed."""

    key: PolicyKey
    revision: int
    mode: str
    rules: int


@dataclass
class Table:
    """A compiled, immutable snapshot. Build with :func:`cport.engine.compile_table` or
    :class:`cport.engine.Compiler`; read with :func:`decide` and :func:`explain`."""

    revision: int
    ingress: dict[int, EndpointPolicy]
    egress: dict[int, EndpointPolicy]
    identities: dict[int, Labels]
    endpoints: dict[int, list[Workload]]
    policies: dict[PolicyKey, PolicyInfo]
    ipcache: dict[int, dict[object, int]]  # prefix length → network → identity (per family)
    addresses: dict[str, int]
    workload_ids: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        seen: dict[int, EndpointPolicy] = {}
        for epp in (*self.ingress.values(), *self.egress.values()):
            seen[id(epp)] = epp
        return sum(epp.rows for epp in seen.values())

    def rows_expanded(self) -> int:
        """Rows counted per endpoint (what a per-endpoint policy map would hold)."""
        return sum(e.rows for e in self.ingress.values()) + sum(
            e.rows for e in self.egress.values()
        )
