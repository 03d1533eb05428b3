"""The policy model: validated policies and workload inventory, from YAML documents.

Importers for ``PortPolicy`` (native), ``CiliumNetworkPolicy``,
``CiliumClusterwideNetworkPolicy`` and Kubernetes ``NetworkPolicy`` all produce the same
:class:`Policy`; ``Workload``, ``Pod`` and ``Namespace`` documents produce the
:class:`Inventory`. :func:`load` reads files and directories.
"""

from __future__ import annotations

from cport.model._inventory import ContainerPort, Inventory, Workload
from cport.model._loader import Bundle, load, load_text
from cport.model._selector import Op, Requirement, Selector
from cport.model._types import (
    PROTO_NAMES,
    PROTO_NUMBERS,
    Direction,
    Mode,
    PeerRule,
    Policy,
    PolicyKey,
    PortRange,
    Rule,
)

__all__ = [
    "PROTO_NAMES",
    "PROTO_NUMBERS",
    "Bundle",
    "ContainerPort",
    "Direction",
    "Inventory",
    "Mode",
    "Op",
    "PeerRule",
    "Policy",
    "PolicyKey",
    "PortRange",
    "Requirement",
    "Rule",
    "Selector",
    "Workload",
    "load",
    "load_text",
]
