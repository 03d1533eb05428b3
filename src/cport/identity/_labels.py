"""Labels and label sets: the vocabulary every peer and workload is described in.

A label is ``source:key=value`` as in Cilium: ``k8s:app=ledger``, ``reserved:world``,
``cidr:203.0.113.0/24``, ``oidc:groups=dba``. A label set describes one peer; one label set is
one numeric security identity (see :mod:`cport.identity._allocator`).

Selectors may use the source ``any`` (or leave it out) to match a key from any source.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from cport.errors import CportError

#: Sources cport knows. ``any`` appears only in selectors.
SOURCES = frozenset(
    {"k8s", "reserved", "cidr", "oidc", "aws", "spiffe", "agent", "container", "unspec", "any"}
)

# Labels Cilium derives for every pod; selectors written without a source get `any:`.
NAMESPACE_KEY = "io.kubernetes.pod.namespace"
SERVICEACCOUNT_KEY = "io.cilium.k8s.policy.serviceaccount"
CLUSTER_KEY = "io.cilium.k8s.policy.cluster"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


class Label(NamedTuple):
    """One ``source:key=value`` label. An empty value prints as ``source:key``.

    A named tuple, not a dataclass: label sets are sorted and hashed on every identity
    allocation and token verification, and tuples do both in C."""

    source: str
    key: str
    value: str = ""

    def __str__(self) -> str:
        return (
            f"{self.source}:{self.key}={self.value}" if self.value else f"{self.source}:{self.key}"
        )

    @classmethod
    def parse(cls, text: str, default_source: str = "any") -> Label:
        """Parse ``[source:]key[=value]``. The source is recognised only if it is a known one,
        so keys that contain a colon still work (``k8s:a:b=c`` has key ``a:b``)."""
        key, sep, value = text.partition("=")
        source = default_source
        head, colon, rest = key.partition(":")
        if colon and head in SOURCES:
            source, key = head, rest
        if not key:
            raise CportError(f"label {text!r} has no key", code="invalid-label")
        return cls(source, key, value if sep else "")


class Labels:
    """An immutable, canonically ordered set of labels; hashable, usable as a dict key."""

    __slots__ = ("_hash", "_items", "_keyed")

    def __init__(self, labels: Iterable[Label] = ()) -> None:
        self._items: tuple[Label, ...] = tuple(sorted(set(labels)))
        self._hash = hash(self._items)
        self._keyed: dict[tuple[str, str], list[str]] | None = None

    @classmethod
    def presorted(cls, items: tuple[Label, ...]) -> Labels:
        """The label set of `items`, which the caller has already sorted without duplicates
        (what ``Labels(items)`` would make of them, without the set and sort). Only for hot
        paths that build labels in canonical order by construction, each held by a test
        against ``Labels(items)``."""
        out = object.__new__(cls)
        out._items = items
        out._hash = hash(items)
        out._keyed = None
        return out

    def _index(self) -> dict[tuple[str, str], list[str]]:
        keyed = self._keyed
        if keyed is None:
            keyed = {}
            for lab in self._items:
                keyed.setdefault((lab.source, lab.key), []).append(lab.value)
            self._keyed = keyed
        return keyed

    @classmethod
    def parse(cls, text: str, default_source: str = "k8s") -> Labels:
        """Parse ``k=v,src:k2=v2``; labels without a known source get `default_source`."""
        parts = [p.strip() for p in text.split(",") if p.strip()]
        return cls(Label.parse(p, default_source) for p in parts)

    @classmethod
    def from_strings(cls, items: Iterable[str], default_source: str = "k8s") -> Labels:
        return cls(Label.parse(p, default_source) for p in items)

    def __iter__(self) -> Iterator[Label]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Labels) and (self is other or self._items == other._items)

    def __repr__(self) -> str:
        return f"Labels({self})"

    def __str__(self) -> str:
        return ",".join(str(lab) for lab in self._items)

    def values(self, source: str, key: str) -> list[str]:
        """Values of `key` from `source` (``any`` = from every source)."""
        if source != "any":
            return self._index().get((source, key), [])
        out: list[str] = []
        for (_src, k), vals in self._index().items():
            if k == key:
                out.extend(vals)
        return out

    def has(self, source: str, key: str) -> bool:
        return bool(self.values(source, key))

    def get(self, source: str, key: str) -> str | None:
        vals = self.values(source, key)
        return vals[0] if vals else None

    def strings(self) -> list[str]:
        return [str(lab) for lab in self._items]

    def union(self, other: Iterable[Label]) -> Labels:
        return Labels((*self._items, *other))
