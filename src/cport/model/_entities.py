"""Entities (`fromEntities`, `entities:`) as selectors, following Cilium's definitions."""

from __future__ import annotations

from cport.identity import CLUSTER_RESERVED
from cport.identity._labels import CLUSTER_KEY
from cport.model._selector import Op, Requirement, Selector, eq


def entity_selectors(name: str) -> list[Selector] | None:
    """Selectors for entity `name`; None for ``all`` (every peer, the L3 wildcard).

    ``cluster`` is every reserved in-cluster identity plus every pod (anything carrying the
    cluster label, as Cilium's ``pkg/policy/api/entity.go``); ``world`` also covers CIDR
    identities, which carry ``reserved:world``."""
    if name == "all":
        return None
    if name == "cluster":
        return [Selector.of(eq("reserved", n)) for n in sorted(CLUSTER_RESERVED)] + [
            Selector.of(Requirement("k8s", CLUSTER_KEY, Op.EXISTS))
        ]
    return [Selector.of(eq("reserved", name))]
