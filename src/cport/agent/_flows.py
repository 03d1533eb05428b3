"""Live flows: what the agent decided and relayed, as a bounded ring of recent records and a
fan-out to subscribers (the API's Server-Sent Events stream behind `cport observe`).

A slow subscriber never slows enforcement: its queue is bounded and records it cannot take
are dropped and counted (it is told how many in the stream)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from cport._time import iso_ms


@dataclass(frozen=True, slots=True)
class FlowRecord:
    time_ns: int
    event: str  # open | close | refused
    enforcer: str  # proxy-gateway | proxy-listener | ebpf
    verdict: str  # allowed | denied | audit | auth-required
    reason: str
    peer: str  # who: subject, workload or address
    peer_identity: int
    workload: str  # namespace/name of the target ("" when it was not resolved)
    port: int
    protocol: str = "TCP"
    src: str = ""  # client address:port
    policies: tuple[str, ...] = ()
    explanation_id: str = ""
    token_id: str = ""
    bytes_up: int = 0
    bytes_down: int = 0
    duration_ms: float = 0.0
    termination: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        doc = asdict(self)
        doc["policies"] = list(self.policies)
        doc["time"] = iso_ms(self.time_ns)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> FlowRecord:
        doc = {k: v for k, v in doc.items() if k in _FIELDS}
        doc["policies"] = tuple(doc.get("policies") or ())  # type: ignore[arg-type]
        return cls(**doc)  # type: ignore[arg-type]

    def line(self) -> str:
        """One line, Hubble-like: time, peer → workload:port, event, verdict, reason, policy."""
        when = dt.datetime.fromtimestamp(self.time_ns / 1e9, dt.UTC).strftime("%b %d %H:%M:%S.%f")
        target = f"{self.workload or '?'}:{self.port}"
        out = (
            f"{when[:-3]}: {self.peer} (id:{self.peer_identity}) -> {target} "
            f"{self.protocol} {self.event.upper()} {self.verdict.upper()} ({self.reason})"
        )
        if self.policies:
            out += f" policy={','.join(self.policies)}"
        if self.event == "close":
            out += (
                f" up={self.bytes_up}B down={self.bytes_down}B"
                f" {self.duration_ms:.0f}ms {self.termination}"
            )
        if self.explanation_id:
            out += f" explain={self.explanation_id}"
        return out


_FIELDS = frozenset(FlowRecord.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class FlowFilter:
    verdict: frozenset[str] = frozenset()
    peer: str | None = None  # substring of peer, or numeric identity
    workload: str | None = None  # namespace/name (or a prefix: namespace/)
    port: int | None = None

    def __call__(self, rec: FlowRecord) -> bool:
        if self.verdict and rec.verdict not in self.verdict:
            return False
        if self.port is not None and rec.port != self.port:
            return False
        if self.workload and not (
            rec.workload == self.workload
            or (self.workload.endswith("/") and rec.workload.startswith(self.workload))
        ):
            return False
        if self.peer:
            if self.peer.isdigit():
                return rec.peer_identity == int(self.peer)
            return self.peer in rec.peer
        return True


class FlowHub:
    def __init__(self, keep: int = 10_000, queue_size: int = 1_000) -> None:
        self._ring: deque[FlowRecord] = deque(maxlen=keep)
        # subscriber queue → records it could not take (each stream reports its own drops)
        self._subs: dict[asyncio.Queue[FlowRecord | None], int] = {}
        self._queue_size = queue_size

    def publish(self, rec: FlowRecord) -> None:
        self._ring.append(rec)
        for q in self._subs:
            try:
                q.put_nowait(rec)
            except asyncio.QueueFull:
                self._subs[q] += 1

    def recent(self, flt: FlowFilter, limit: int = 100) -> list[FlowRecord]:
        out = [r for r in reversed(self._ring) if flt(r)][:limit]
        out.reverse()
        return out

    def subscribe(self) -> asyncio.Queue[FlowRecord | None]:
        q: asyncio.Queue[FlowRecord | None] = asyncio.Queue(self._queue_size)
        self._subs[q] = 0
        return q

    def take_dropped(self, q: asyncio.Queue[FlowRecord | None]) -> int:
        """How many records `q`'s subscriber missed since it last asked."""
        n = self._subs.get(q, 0)
        if n:
            self._subs[q] = 0
        return n

    def unsubscribe(self, q: asyncio.Queue[FlowRecord | None]) -> None:
        self._subs.pop(q, None)

    def close(self) -> None:
        for q in self._subs:
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)

    def __iter__(self) -> Iterator[FlowRecord]:
        return iter(list(self._ring))


__all__ = ["FlowFilter", "FlowHub", "FlowRecord"]
