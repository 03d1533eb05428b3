"""Label selectors: the model's way of naming a set of peers or workloads.

A :class:`Selector` is a conjunction of :class:`Requirement`s over an identity's labels, as a
Kubernetes LabelSelector is (matchLabels become ``In`` with one value). Beyond Kubernetes:
``Glob`` (shell-style ``*``/``?`` for SPIFFE IDs and ARNs) and ``CIDR`` (an address prefix with
exceptions, matched against the ``cidr:`` label of a CIDR identity).
"""

from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from cport.identity import Labels

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network


class Op(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"
    GLOB = "Glob"
    CIDR = "CIDR"


@dataclass(frozen=True, slots=True, order=True)
class Requirement:
    """One condition on a label key. `source` ``any`` matches the key from every source.
    For ``CIDR``, ``values[0]`` is the prefix and the rest are excepted prefixes."""

    source: str
    key: str
    op: Op
    values: tuple[str, ...] = ()

    def matches(self, labels: Labels) -> bool:
        op = self.op
        if op is Op.CIDR:
            return cidr_match(self.values, labels)
        vals = labels.values(self.source, self.key)
        if op is Op.IN:
            return any(v in self.values for v in vals)
        if op is Op.EXISTS:
            return bool(vals)
        if op is Op.DOES_NOT_EXIST:
            return not vals
        if op is Op.NOT_IN:
            return not any(v in self.values for v in vals)
        return any(fnmatch.fnmatchcase(v, pat) for v in vals for pat in self.values)

    def __str__(self) -> str:
        name = self.key if self.source == "any" else f"{self.source}:{self.key}"
        if self.op is Op.IN and len(self.values) == 1:
            return f"{name}={self.values[0]}" if self.values[0] else name
        if self.op is Op.IN:
            return f"{name} in ({','.join(self.values)})"
        if self.op is Op.NOT_IN:
            return f"{name} notin ({','.join(self.values)})"
        if self.op is Op.EXISTS:
            return name
        if self.op is Op.DOES_NOT_EXIST:
            return f"!{name}"
        if self.op is Op.GLOB:
            return f"{name}~({','.join(self.values)})"
        text = f"cidr:{self.values[0]}"
        return text + (f" except {','.join(self.values[1:])}" if len(self.values) > 1 else "")


@dataclass(frozen=True, slots=True)
class Selector:
    """A conjunction of requirements; the empty selector matches every identity."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def of(cls, *reqs: Requirement) -> Selector:
        return cls(tuple(sorted(set(reqs))))

    def matches(self, labels: Labels) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def with_requirement(self, req: Requirement) -> Selector:
        return Selector.of(*self.requirements, req)

    def has_key(self, key: str) -> bool:
        return any(r.key == key for r in self.requirements)

    def has_key_prefix(self, prefix: str) -> bool:
        return any(r.key.startswith(prefix) for r in self.requirements)

    def has_source(self, source: str) -> bool:
        return any(r.source == source for r in self.requirements)

    def __str__(self) -> str:
        return ", ".join(str(r) for r in self.requirements) if self.requirements else "{}"


def eq(source: str, key: str, value: str = "") -> Requirement:
    return Requirement(source, key, Op.IN, (value,))


def cidr_requirement(prefix: IPNet, excepts: tuple[IPNet, ...] = ()) -> Requirement:
    return Requirement("cidr", "prefix", Op.CIDR, (str(prefix), *sorted(str(e) for e in excepts)))


def cidr_match(values: tuple[str, ...], labels: Labels) -> bool:
    """Does a CIDR identity (label ``cidr:<prefix>``) fall inside values[0] and outside the rest?

    The world identity carries no cidr label: it answers ``--from entity:world``, a peer of no
    particular address, which only a ``/0`` matches. Real addresses never resolve to it: the
    compiler always allocates ``0.0.0.0/0`` and ``::/0`` identities, so an address's identity
    has its family (an IPv6 address never matches ``0.0.0.0/0``).
    """
    own = labels.values("cidr", "prefix")
    prefix = ipaddress.ip_network(values[0])
    if not own:
        return prefix.prefixlen == 0 and labels.has("reserved", "world")
    try:
        net = ipaddress.ip_network(own[0])
    except ValueError:
        return False
    if net.version != prefix.version or not net.subnet_of(prefix):  # type: ignore[arg-type]
        return False
    for text in values[1:]:
        exc = ipaddress.ip_network(text)
        if exc.version == net.version and net.subnet_of(exc):  # type: ignore[arg-type]
            return False
    return True
