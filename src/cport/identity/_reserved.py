"""Reserved identities, numbered as in Cilium (``pkg/identity/numericidentity.go``).

Identities 1–255 are reserved; workload identities are allocated from 256 upwards and CIDR
identities from the local scope (``1 << 24``) upwards, as Cilium does.
"""

from __future__ import annotations

from cport.identity._labels import Label, Labels

RESERVED_IDS: dict[str, int] = {
    "host": 1,
    "world": 2,
    "unmanaged": 3,
    "health": 4,
    "init": 5,
    "remote-node": 6,
    "kube-apiserver": 7,
    "ingress": 8,
}
RESERVED_NAMES: dict[int, str] = {v: k for k, v in RESERVED_IDS.items()}

HOST_ID = RESERVED_IDS["host"]
WORLD_ID = RESERVED_IDS["world"]
#: Identity 0 never names a peer; in table rows it is the wildcard "any peer".
WILDCARD_ID = 0

FIRST_CLUSTER_ID = 256
FIRST_LOCAL_ID = 1 << 24

#: Entities usable in `fromEntities`/`toEntities`/`entities:` and what they select.
#: `cluster` is every identity inside the cluster (reserved ones other than world, and all
#: workloads); `all` is everything. Both are expanded by the engine, not here.
ENTITIES = frozenset({*RESERVED_IDS, "cluster", "all"})
CLUSTER_RESERVED = frozenset(
    {"host", "remote-node", "init", "health", "unmanaged", "kube-apiserver", "ingress"}
)


def reserved_labels(name: str) -> Labels:
    """The label set of reserved identity `name` (``reserved:<name>``)."""
    return Labels([Label("reserved", name)])
