"""Binary layouts of the enforcer's maps: the user-space side of ``bpf/cport.h``.

Each C struct has two twins here: a ctypes ``Structure`` (the documented layout; the test
``tests/ebpf/test_layout.py`` compares its size and every field's offset with the BTF of the
compiled object, and :func:`check_layouts` does the same at load time) and a
:class:`struct.Struct` used for packing (faster), whose size the same test checks. Byte order
is the host's (``=``), as the kernel's; ports are stored in network order, so they are packed
as ``socket.htons(port)``. Constants mirror cport.h's ``#define`` lines (compared as text by
the test).
"""

from __future__ import annotations

import ctypes
import struct
from ctypes import Structure, c_char, c_uint8, c_uint16, c_uint32, c_uint64

from cport.engine import Reason

# -- constants (cport.h) -------------------------------------------------------------------
V_ALLOWED, V_AUDIT, V_AUTH, V_DENIED = 0, 1, 2, 3
VERDICT_NAMES = {
    V_ALLOWED: "allowed",
    V_AUDIT: "audit",
    V_AUTH: "auth-required",
    V_DENIED: "denied",
}
PV_DEFAULT = 0x1
PV_HAS_WILDCARD = 0x2
IP_WORKLOAD = 0x1
IP_CIDR = 0x2
IP_BOUND = 0x4
CT_AUTH = 0x1
CT_CLOSING = 0x2
EV_ALLOWED, EV_DENIED, EV_AUDIT, EV_AUTH = 1, 2, 3, 4
EVENT_KINDS = {
    EV_ALLOWED: "allowed",
    EV_DENIED: "denied",
    EV_AUDIT: "audit",
    EV_AUTH: "auth-required",
}
D_INGRESS = 0x1
D_EGRESS = 0x2
D_AUTHENTICATED = 0x4
HOOK_INGRESS, HOOK_EGRESS = 0, 1
CFG_EMIT_ALLOWED = 0x1
AT_CREATED_HOOK = 0x1
POLICY_BITS = 96
POLICY_PORT_BASE = 80
POLICY_DEFAULT_BITS = 32

#: struct counters' indices (CPORT_C_*), in order.
COUNTERS = (
    "packets",
    "passthrough",
    "reply",
    "allowed",
    "denied",
    "auth_drop",
    "audit",
    "ct_new",
    "ct_cached",
    "events",
    "events_lost",
    "events_rate_limited",
    "events_over_budget",
    "no_policy",
    "malformed",
)
COUNTERS_MAX = 16

#: cookie_value.reason: an index into this tuple (a Reason's value).
REASONS: tuple[str, ...] = tuple(r.value for r in Reason)

#: The C `#define` names whose values the test compares with this module.
DEFINES = {
    "CPORT_V_ALLOWED": V_ALLOWED,
    "CPORT_V_AUDIT": V_AUDIT,
    "CPORT_V_AUTH": V_AUTH,
    "CPORT_V_DENIED": V_DENIED,
    "CPORT_PV_DEFAULT": PV_DEFAULT,
    "CPORT_PV_HAS_WILDCARD": PV_HAS_WILDCARD,
    "CPORT_IP_WORKLOAD": IP_WORKLOAD,
    "CPORT_IP_CIDR": IP_CIDR,
    "CPORT_IP_BOUND": IP_BOUND,
    "CPORT_CT_AUTH": CT_AUTH,
    "CPORT_CT_CLOSING": CT_CLOSING,
    "CPORT_EV_ALLOWED": EV_ALLOWED,
    "CPORT_EV_DENIED": EV_DENIED,
    "CPORT_EV_AUDIT": EV_AUDIT,
    "CPORT_EV_AUTH": EV_AUTH,
    "CPORT_D_INGRESS": D_INGRESS,
    "CPORT_D_EGRESS": D_EGRESS,
    "CPORT_D_AUTHENTICATED": D_AUTHENTICATED,
    "CPORT_HOOK_INGRESS": HOOK_INGRESS,
    "CPORT_HOOK_EGRESS": HOOK_EGRESS,
    "CPORT_CFG_EMIT_ALLOWED": CFG_EMIT_ALLOWED,
    "CPORT_AT_CREATED_HOOK": AT_CREATED_HOOK,
    "CPORT_POLICY_BITS": POLICY_BITS,
    "CPORT_POLICY_PORT_BASE": POLICY_PORT_BASE,
    "CPORT_POLICY_DEFAULT_BITS": POLICY_DEFAULT_BITS,
    "CPORT_C_MAX": COUNTERS_MAX,
    "CPORT_C_PACKETS": 0,
    "CPORT_C_PASSTHROUGH": 1,
    "CPORT_C_REPLY": 2,
    "CPORT_C_ALLOWED": 3,
    "CPORT_C_DENIED": 4,
    "CPORT_C_AUTH_DROP": 5,
    "CPORT_C_AUDIT": 6,
    "CPORT_C_CT_NEW": 7,
    "CPORT_C_CT_CACHED": 8,
    "CPORT_C_EVENTS": 9,
    "CPORT_C_EV_LOST": 10,
    "CPORT_C_EV_LIMITED": 11,
    "CPORT_C_EV_BUDGET": 12,
    "CPORT_C_NO_POLICY": 13,
    "CPORT_C_MALFORMED": 14,
}


# -- structs -------------------------------------------------------------------------------
class IpcacheKey(Structure):
    """``struct ipcache_key``: LPM key; IPv4 stored IPv4-mapped, prefixlen 96 + p."""

    _fields_ = [("prefixlen", c_uint32), ("addr", c_uint8 * 16)]


class IpcacheValue(Structure):
    """``struct ipcache_value``: the identity; flags IP_WORKLOAD, IP_CIDR or IP_BOUND."""

    _fields_ = [("identity", c_uint32), ("flags", c_uint32)]


class EndpointValue(Structure):
    """``struct endpoint_value`` (key: __u32 identity): policy ids, 0 for none."""

    _fields_ = [("ingress_policy", c_uint32), ("egress_policy", c_uint32)]


class PolicyKey(Structure):
    """``struct policy_key``: LPM key ``policy_id, peer_id, egress, protocol, dport(BE)``."""

    _fields_ = [
        ("prefixlen", c_uint32),
        ("policy_id", c_uint32),
        ("peer_id", c_uint32),
        ("egress", c_uint8),
        ("protocol", c_uint8),
        ("dport", c_uint16),
    ]


class PolicyValue(Structure):
    """``struct policy_value``: verdict (V_*), flags (PV_*), the row's port prefix bits and
    the cookie naming the rules behind it."""

    _fields_ = [
        ("verdict", c_uint8),
        ("flags", c_uint8),
        ("port_bits", c_uint8),
        ("pad", c_uint8),
        ("cookie", c_uint32),
    ]


class RowStats(Structure):
    """``struct row_stats``: per-CPU packets and bytes of one policy row."""

    _fields_ = [("packets", c_uint64), ("bytes", c_uint64)]


class CookieValue(Structure):
    """``struct cookie_value``: verdict, reason index, text length and text (≤ 252 bytes)."""

    _fields_ = [
        ("verdict", c_uint8),
        ("reason", c_uint8),
        ("len", c_uint16),
        ("text", c_char * 252),
    ]


class GrantKey(Structure):
    """``struct grant_key``: peer identity and peer address (IPv4-mapped)."""

    _fields_ = [("peer_id", c_uint32), ("addr", c_uint8 * 16)]


class GrantValue(Structure):
    """``struct grant_value``: expiry on the kernel's boot clock (ns)."""

    _fields_ = [("expires_boot_ns", c_uint64)]


class FlowKey(Structure):
    """``struct flow_key``: the forward 5-tuple (ports in network order)."""

    _fields_ = [
        ("saddr", c_uint8 * 16),
        ("daddr", c_uint8 * 16),
        ("sport", c_uint16),
        ("dport", c_uint16),
        ("protocol", c_uint8),
        ("pad", c_uint8 * 3),
    ]


class CtValue(Structure):
    """``struct ct_value``: a tracked allowed flow and its cached verdict."""

    _fields_ = [
        ("created_ns", c_uint64),
        ("last_seen_ns", c_uint64),
        ("grant_expires_ns", c_uint64),
        ("epoch", c_uint32),
        ("src_id", c_uint32),
        ("dst_id", c_uint32),
        ("ingress_cookie", c_uint32),
        ("egress_cookie", c_uint32),
        ("verdict", c_uint8),
        ("flags", c_uint8),
        ("decision_flags", c_uint8),
        ("pad", c_uint8),
        ("ingress_row", PolicyKey),
        ("egress_row", PolicyKey),
    ]


class Counters(Structure):
    """``struct counters``: one per-CPU element, indexed by COUNTERS."""

    _fields_ = [("c", c_uint64 * COUNTERS_MAX)]


class ActiveValue(Structure):
    """``struct active_value``: the policy epoch (generation = epoch & 1)."""

    _fields_ = [("epoch", c_uint32), ("pad", c_uint32)]


class GenMeta(Structure):
    """``struct gen_meta``: what user space realised in one generation."""

    _fields_ = [
        ("revision", c_uint64),
        ("synced_unix_ns", c_uint64),
        ("entries", c_uint64),
        ("epoch", c_uint64),
    ]


class AttachInfo(Structure):
    """``struct attach_info``: interface, build and program ids of the attachment."""

    _fields_ = [
        ("ifname", c_char * 16),
        ("build_id", c_uint64),
        ("attached_unix_ns", c_uint64),
        ("ifindex", c_uint32),
        ("flags", c_uint32),
        ("ingress_prog_id", c_uint32),
        ("egress_prog_id", c_uint32),
    ]


class ConfigValue(Structure):
    """``struct config_value``: event rate limit, flags (CFG_*) and per-CPU budget."""

    _fields_ = [("event_interval_ns", c_uint64), ("flags", c_uint32), ("events_per_sec", c_uint32)]


class EvtLimitKey(Structure):
    """``struct evt_limit_key``: the flow an event rate limit applies to."""

    _fields_ = [
        ("saddr", c_uint8 * 16),
        ("daddr", c_uint8 * 16),
        ("dport", c_uint16),
        ("protocol", c_uint8),
        ("kind", c_uint8),
    ]


class EvtLimitValue(Structure):
    """``struct evt_limit_value``."""

    _fields_ = [("last_ns", c_uint64), ("suppressed", c_uint32), ("pad", c_uint32)]


class EvtBudget(Structure):
    """``struct evt_budget``."""

    _fields_ = [("window_start_ns", c_uint64), ("count", c_uint64)]


class VerdictEventC(Structure):
    """``struct verdict_event``: one ring buffer record."""

    _fields_ = [
        ("ts_boot_ns", c_uint64),
        ("saddr", c_uint8 * 16),
        ("daddr", c_uint8 * 16),
        ("sport", c_uint16),
        ("dport", c_uint16),
        ("protocol", c_uint8),
        ("verdict", c_uint8),
        ("kind", c_uint8),
        ("hook", c_uint8),
        ("src_id", c_uint32),
        ("dst_id", c_uint32),
        ("ingress_cookie", c_uint32),
        ("egress_cookie", c_uint32),
        ("epoch", c_uint32),
        ("ifindex", c_uint32),
        ("suppressed", c_uint32),
        ("flags", c_uint8),
        ("pad", c_uint8 * 3),
    ]


#: C struct name → its ctypes twin (what the BTF comparison walks).
STRUCTS: dict[str, type[Structure]] = {
    "ipcache_key": IpcacheKey,
    "ipcache_value": IpcacheValue,
    "endpoint_value": EndpointValue,
    "policy_key": PolicyKey,
    "policy_value": PolicyValue,
    "row_stats": RowStats,
    "cookie_value": CookieValue,
    "grant_key": GrantKey,
    "grant_value": GrantValue,
    "flow_key": FlowKey,
    "ct_value": CtValue,
    "counters": Counters,
    "active_value": ActiveValue,
    "gen_meta": GenMeta,
    "attach_info": AttachInfo,
    "config_value": ConfigValue,
    "evt_limit_key": EvtLimitKey,
    "evt_limit_value": EvtLimitValue,
    "evt_budget": EvtBudget,
    "verdict_event": VerdictEventC,
}

# -- packers (same layouts; sizes checked against the ctypes twins) -------------------------
IPCACHE_KEY = struct.Struct("=I16s")
IPCACHE_VALUE = struct.Struct("=II")
ENDPOINT_KEY = struct.Struct("=I")
ENDPOINT_VALUE = struct.Struct("=II")
POLICY_KEY = struct.Struct("=IIIBBH")
POLICY_VALUE = struct.Struct("=BBBBI")
ROW_STATS = struct.Struct("=QQ")
COOKIE_KEY = struct.Struct("=I")
COOKIE_VALUE = struct.Struct("=BBH252s")
GRANT_KEY = struct.Struct("=I16s")
GRANT_VALUE = struct.Struct("=Q")
FLOW_KEY = struct.Struct("=16s16sHHB3x")
CT_VALUE = struct.Struct("=QQQIIIIIBBBB16s16s")
ACTIVE_VALUE = struct.Struct("=II")
GEN_META = struct.Struct("=QQQQ")
ATTACH_INFO = struct.Struct("=16sQQIIII")
CONFIG_VALUE = struct.Struct("=QII")
VERDICT_EVENT = struct.Struct("=Q16s16sHHBBBBIIIIIIIB3x")
COUNTERS_VALUE = struct.Struct(f"={COUNTERS_MAX}Q")
U32 = struct.Struct("=I")
U64 = struct.Struct("=Q")

PACKERS: dict[str, struct.Struct] = {
    "ipcache_key": IPCACHE_KEY,
    "ipcache_value": IPCACHE_VALUE,
    "endpoint_value": ENDPOINT_VALUE,
    "policy_key": POLICY_KEY,
    "policy_value": POLICY_VALUE,
    "row_stats": ROW_STATS,
    "cookie_value": COOKIE_VALUE,
    "grant_key": GRANT_KEY,
    "grant_value": GRANT_VALUE,
    "flow_key": FLOW_KEY,
    "ct_value": CT_VALUE,
    "counters": COUNTERS_VALUE,
    "active_value": ACTIVE_VALUE,
    "gen_meta": GEN_META,
    "attach_info": ATTACH_INFO,
    "config_value": CONFIG_VALUE,
    "verdict_event": VERDICT_EVENT,
}


def struct_fields(cls: type[Structure]) -> list[tuple[str, int, int]]:
    """(name, byte offset, byte size) of each field of a ctypes struct."""
    out = []
    for name, *_ in cls._fields_:
        desc = getattr(cls, name)
        out.append((name, desc.offset, desc.size))
    return out


def check_layouts(btf_structs: dict[str, tuple[int, list[tuple[str, int, int]]]]) -> list[str]:
    """Differences between the ctypes twins and the BTF description
    ``{name: (size, [(field, offset, size), …])}``; empty when they agree."""
    problems = []
    for name, cls in STRUCTS.items():
        found = btf_structs.get(name)
        if found is None:
            problems.append(f"struct {name}: not in the object's BTF")
            continue
        size, members = found
        if size != ctypes.sizeof(cls):
            problems.append(f"struct {name}: size {size} in C, {ctypes.sizeof(cls)} in Python")
        if members != struct_fields(cls):
            problems.append(f"struct {name}: fields {members} in C, {struct_fields(cls)} in Python")
        packer = PACKERS.get(name)
        if packer is not None and packer.size != size:
            problems.append(f"struct {name}: packer size {packer.size}, C size {size}")
    return problems
