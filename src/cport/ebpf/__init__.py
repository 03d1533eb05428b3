"""The eBPF enforcer (issue 6): identity-to-port policy enforced in the kernel.

Stage 4 of the pipeline: a compiled :class:`cport.engine.Table` becomes map entries
(:mod:`cport.ebpf._encode`) that tc programs on an interface enforce exactly as
:func:`cport.engine.decide` decides. Design, map layouts and operations: docs/ebpf.md.

>>> from cport.ebpf import BpfDatapath                              # doctest: +SKIP
>>> with BpfDatapath("eth0") as dp:                                 # doctest: +SKIP
...     dp.sync(table)
"""

from __future__ import annotations

from cport.ebpf._datapath import BpfDatapath, SyncStats, ensure_bpffs, remove_pins
from cport.ebpf._encode import CellInfo, Encoder, Generation, PolicyEntry, port_blocks
from cport.ebpf._events import VerdictEvent, to_audit_event
from cport.ebpf._state import (
    DEFAULT_PIN_ROOT,
    GrantEntry,
    IpcacheEntry,
    PinnedState,
    PolicyMapEntry,
)

__all__ = [
    "DEFAULT_PIN_ROOT",
    "BpfDatapath",
    "CellInfo",
    "Encoder",
    "Generation",
    "GrantEntry",
    "IpcacheEntry",
    "PinnedState",
    "PolicyEntry",
    "PolicyMapEntry",
    "SyncStats",
    "VerdictEvent",
    "ensure_bpffs",
    "port_blocks",
    "remove_pins",
    "to_audit_event",
]
