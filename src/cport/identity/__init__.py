"""Labels, reserved identities and stable numeric identity allocation."""

from __future__ import annotations

from cport.identity._allocator import IdentityAllocator
from cport.identity._labels import Label, Labels
from cport.identity._reserved import (
    CLUSTER_RESERVED,
    ENTITIES,
    HOST_ID,
    RESERVED_IDS,
    RESERVED_NAMES,
    WILDCARD_ID,
    WORLD_ID,
    reserved_labels,
)

__all__ = [
    "CLUSTER_RESERVED",
    "ENTITIES",
    "HOST_ID",
    "RESERVED_IDS",
    "RESERVED_NAMES",
    "WILDCARD_ID",
    "WORLD_ID",
    "IdentityAllocator",
    "Label",
    "Labels",
    "reserved_labels",
]
