"""Table → map entries: the stage after :class:`cport.engine.Table`, before the kernel.

Pure (no I/O, no ctypes): :class:`Encoder` turns a table into the entries of one policy
generation — the ipcache (workload addresses and CIDR identities, longest prefix wins), the
endpoints map (identity → its ingress and egress policy ids) and the policy rows of every
distinct :class:`~cport.engine.EndpointPolicy`, keyed like Cilium's policy map. Port ranges
become prefix-aligned blocks (:func:`port_blocks`); every policy also gets a default entry.

Numbers are stable so that a diff against what the kernel holds stays small, even across
processes: a policy id is a hash of the policy's direction and the rules selecting it; a
cookie (what a row's value points back to) is a hash of the text naming its verdict, reason
and contributing rule entries, which is also stored in the ``cookies`` map for readers.
"""

from __future__ import annotations

import gc
import hashlib
import ipaddress
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from cport.ebpf import _layout as L
from cport.engine import Cell, EndpointPolicy, Reason, RuleRef, Table, Verdict
from cport.model import Mode

VERDICT_CODES = {
    Verdict.ALLOWED: L.V_ALLOWED,
    Verdict.AUDIT: L.V_AUDIT,
    Verdict.AUTH_REQUIRED: L.V_AUTH,
    Verdict.DENIED: L.V_DENIED,
}
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"
COOKIE_TEXT_MAX = 252


@contextmanager
def gc_paused() -> Iterator[None]:
    """Encoding and diffing allocate hundreds of thousands of long-lived objects; the cyclic
    collector would scan them again and again and find nothing (as in the compiler)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def port_blocks(lo: int, hi: int) -> list[tuple[int, int]]:
    """Split the inclusive port range lo–hi into prefix-aligned blocks ``(base, bits)``: the
    block holds the ports whose top `bits` bits equal `base`'s. ``(0, 0)`` is every port;
    ``(p, 16)`` is port p alone. At most 30 blocks for any range.

    >>> port_blocks(8000, 8010)
    [(8000, 13), (8008, 15), (8010, 16)]
    """
    if not 0 <= lo <= hi <= 0xFFFF:
        raise ValueError(f"bad port range {lo}-{hi}")
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while lo + size - 1 > hi:
            size >>= 1
        out.append((lo, 17 - size.bit_length()))
        lo += size
    return out


def block_range(base: int, bits: int) -> tuple[int, int]:
    """The inclusive port range of a block."""
    return base, base + (1 << (16 - bits)) - 1


def mapped(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """16 bytes: IPv6 as is, IPv4 as ``::ffff:a.b.c.d``."""
    if addr.version == 4:
        return _V4_MAPPED + addr.packed
    return addr.packed


def ipcache_key(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bytes:
    plen = net.prefixlen + (96 if net.version == 4 else 0)
    return L.IPCACHE_KEY.pack(plen, mapped(net.network_address))


def unmapped(raw: bytes, prefixlen: int = 128) -> tuple[str, int]:
    """(address text, prefix length in its own family) of a 16-byte key address."""
    if raw[:12] == _V4_MAPPED and prefixlen >= 96:
        return str(ipaddress.IPv4Address(raw[12:])), prefixlen - 96
    return str(ipaddress.IPv6Address(raw)), prefixlen


def address_bytes(text: str) -> bytes:
    return mapped(ipaddress.ip_address(text))


def _hash32(text: str, salt: int = 0) -> int:
    digest = hashlib.blake2b(text.encode(), digest_size=4, person=b"cport%d" % salt).digest()
    return int.from_bytes(digest, "little")


def ref_text(r: RuleRef) -> str:
    where = r.section if r.section in ("default", "selector") else f"{r.section}[{r.entry}]"
    return f"{r.policy}#{r.rule} {where} {r.mode.value}{' auth' if r.auth else ''}"


@dataclass(frozen=True, slots=True)
class CellInfo:
    """What a cookie stands for: a row's verdict and reason, and the rule entries behind it
    (as `explain` reports them: contributions, plus the audit-mode policies selecting the
    endpoint when they are why the verdict is ``audit``). `refs` is empty for a cookie read
    back from the kernel by another process; `text` then still names them."""

    verdict: str
    reason: str
    text: str
    refs: tuple[RuleRef, ...] = ()


def cell_info(cell: Cell, epp: EndpointPolicy) -> CellInfo:
    refs = cell.contributions
    if cell.reason is Reason.AUDIT and not any(r.deny and r.mode is Mode.AUDIT for r in refs):
        refs = refs + tuple(r for r in epp.selected_by if r.mode is Mode.AUDIT)
    text = f"{cell.verdict.value}/{cell.reason.value}"
    if refs:
        text += ": " + "; ".join(ref_text(r) for r in refs)
    return CellInfo(cell.verdict.value, cell.reason.value, text, refs)


def cookie_value(info: CellInfo) -> bytes:
    raw = info.text.encode()[:COOKIE_TEXT_MAX]
    verdict = VERDICT_CODES[Verdict(info.verdict)]
    reason = L.REASONS.index(info.reason) if info.reason in L.REASONS else 255
    return L.COOKIE_VALUE.pack(verdict, reason, len(raw), raw)


def decode_cookie(raw: bytes) -> CellInfo:
    verdict, reason, length, text = L.COOKIE_VALUE.unpack(raw[: L.COOKIE_VALUE.size])
    return CellInfo(
        L.VERDICT_NAMES.get(verdict, str(verdict)),
        L.REASONS[reason] if reason < len(L.REASONS) else str(reason),
        text[:length].decode(errors="replace"),
    )


class Numbering:
    """Stable cookies and policy ids. A number is a 32-bit hash of what it stands for; a
    collision probes to the next free number (0 is never used). Seed it with what the kernel
    already holds (:meth:`seed_cookie`) so a new process keeps the numbers of an old one."""

    def __init__(self) -> None:
        self.cookies: dict[int, CellInfo] = {}
        self._by_text: dict[str, int] = {}
        # numbers read back from the kernel, by their stored (possibly truncated) text, not
        # yet claimed by a cell of this process
        self._seeded: dict[bytes, int] = {}
        self._policy_ids: dict[str, int] = {}
        self._policy_keys: dict[int, str] = {}

    def seed_cookie(self, cookie: int, info: CellInfo) -> None:
        if cookie not in self.cookies:
            self.cookies[cookie] = info
            self._seeded.setdefault(info.text.encode()[:COOKIE_TEXT_MAX], cookie)

    def cookie(self, info: CellInfo) -> int:
        found = self._by_text.get(info.text)
        if found is not None:
            if info.refs and not self.cookies[found].refs:
                self.cookies[found] = info  # the same text, now with its rule refs
            return found
        n = self._seeded.pop(info.text.encode()[:COOKIE_TEXT_MAX], 0)
        if not n:
            n = _hash32(info.text) or 1
            while n in self.cookies:
                n = (n + 1) & 0xFFFFFFFF or 1
        self.cookies[n] = info
        self._by_text[info.text] = n
        return n

    def forget_cookies(self, keep: set[int]) -> list[int]:
        """Drop cookies not in `keep`; returns the dropped ones."""
        gone = [c for c in self.cookies if c not in keep]
        for c in gone:
            info = self.cookies.pop(c)
            if self._by_text.get(info.text) == c:
                del self._by_text[info.text]
            prefix = info.text.encode()[:COOKIE_TEXT_MAX]
            if self._seeded.get(prefix) == c:
                del self._seeded[prefix]
        return gone

    def policy_id(self, key: str) -> int:
        found = self._policy_ids.get(key)
        if found is not None:
            return found
        n = _hash32(key, 1) or 1
        while n in self._policy_keys:
            n = (n + 1) & 0xFFFFFFFF or 1
        self._policy_ids[key] = n
        self._policy_keys[n] = key
        return n


@dataclass
class PolicyRows:
    """One endpoint policy as map entries. `source` is the EndpointPolicy they were encoded
    from (None when read back from the kernel): the same object means the same rows."""

    source: EndpointPolicy | None
    rows: dict[bytes, bytes]
    cookies: frozenset[int]


@dataclass
class Generation:
    """The entries of one policy generation (what is desired, or what a generation holds)."""

    revision: int = 0
    ipcache: dict[bytes, bytes] = field(default_factory=dict)
    endpoints: dict[bytes, bytes] = field(default_factory=dict)
    policies: dict[int, PolicyRows] = field(default_factory=dict)

    @property
    def entries(self) -> int:
        return (
            len(self.ipcache)
            + len(self.endpoints)
            + sum(len(p.rows) for p in self.policies.values())
        )

    def cookies(self) -> set[int]:
        out: set[int] = set()
        for p in self.policies.values():
            out |= p.cookies
        return out


def _signature(epp: EndpointPolicy) -> str:
    rules = sorted(f"{r.policy}#{r.rule}" for r in epp.selected_by)
    return f"{epp.direction.value}|{'|'.join(rules)}"


class Encoder:
    """Encodes tables into :class:`Generation` s, reusing the rows of endpoint policies that
    did not change between tables (the compiler shares those objects between snapshots)."""

    def __init__(self, numbering: Numbering | None = None) -> None:
        self.numbering = numbering or Numbering()
        self._rows: dict[tuple[int, int], tuple[EndpointPolicy, PolicyRows]] = {}
        self._packed: dict[int, Packed] = {}  # policy id → its last encoding, for reuse

    def encode(self, table: Table) -> Generation:
        with gc_paused():
            return self._encode(table)

    def _encode(self, table: Table) -> Generation:
        gen = Generation(revision=table.revision)
        gen.ipcache = encode_ipcache(table)
        ids = self.policy_ids(table)
        endpoints: dict[int, list[int]] = {}
        for direction, source in ((0, table.ingress), (1, table.egress)):
            for ident, epp in source.items():
                pid = ids[id(epp)]
                endpoints.setdefault(ident, [0, 0])[direction] = pid
                if pid not in gen.policies:
                    gen.policies[pid] = self.rows(epp, pid)
        gen.endpoints = {
            L.ENDPOINT_KEY.pack(ident): L.ENDPOINT_VALUE.pack(ing, eg)
            for ident, (ing, eg) in endpoints.items()
        }
        # keep the rows of this table's endpoint policies only: the next table shares them
        live = {(id(p.source), pid) for pid, p in gen.policies.items() if p.source is not None}
        self._rows = {k: v for k, v in self._rows.items() if k in live}
        self._packed = {pid: v for pid, v in self._packed.items() if pid in gen.policies}
        return gen

    def policy_ids(self, table: Table) -> dict[int, int]:
        """id(EndpointPolicy) → policy id. Endpoint policies selected by the same rules (but
        resolved differently, e.g. named ports) are told apart by their lowest endpoint."""
        by_sig: dict[str, dict[int, tuple[int, EndpointPolicy]]] = {}
        for source in (table.ingress, table.egress):
            for ident, epp in source.items():
                group = by_sig.setdefault(_signature(epp), {})
                cur = group.get(id(epp))
                if cur is None or ident < cur[0]:
                    group[id(epp)] = (ident, epp)
        out: dict[int, int] = {}
        for sig in sorted(by_sig):
            ordered = sorted(by_sig[sig].items(), key=lambda kv: kv[1][0])
            for n, (oid, _) in enumerate(ordered):
                out[oid] = self.numbering.policy_id(f"{sig}|{n}")
        return out

    def rows(self, epp: EndpointPolicy, pid: int) -> PolicyRows:
        cached = self._rows.get((id(epp), pid))
        if cached is not None and cached[0] is epp:
            return cached[1]
        rows, self._packed[pid] = encode_policy(epp, pid, self.numbering, self._packed.get(pid))
        self._rows[(id(epp), pid)] = (epp, rows)
        return rows


def encode_ipcache(table: Table) -> dict[bytes, bytes]:
    """Every CIDR identity's prefix and every workload address (a workload's /32 or /128
    wins over a CIDR identity with the same prefix, as `resolve_endpoint` prefers it)."""
    out: dict[bytes, bytes] = {}
    for bucket in table.ipcache.values():
        for net, ident in bucket.items():
            assert isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network)
            out[ipcache_key(net)] = L.IPCACHE_VALUE.pack(ident, L.IP_CIDR)
    for addr, ident in table.addresses.items():
        ip = ipaddress.ip_address(addr)  # a host: /128, or IPv4-mapped /32
        out[L.IPCACHE_KEY.pack(128, mapped(ip))] = L.IPCACHE_VALUE.pack(ident, L.IP_WORKLOAD)
    return out


@dataclass
class Packed:
    """One endpoint policy's packed rows indexed by where they came from, so the next
    encoding of the same policy id repacks only what changed. A key depends only on the
    table key (exact rows) or the segments (ranges), a value only on the cell's verdict and
    cookie — not on the cell object, which a policy update replaces even when its verdict and
    rules stay (its rule refs carry the new revision)."""

    exact: dict[int, bytes]  # table key → packed policy key
    ranges: dict[int, tuple[list[int], list[int], list[tuple[int, int]], list[tuple[bytes, bytes]]]]


def encode_policy(
    epp: EndpointPolicy, pid: int, numbering: Numbering, prev: Packed | None = None
) -> tuple[PolicyRows, Packed]:
    """An endpoint policy's rows: one per exact port, one per prefix block of each range,
    and the default entry (prefixlen 32) carrying the has-wildcard flag. With `prev` (the
    same policy id's previous encoding) unchanged keys and blocks are reused, not repacked."""
    egress = 1 if epp.direction.value == "egress" else 0
    pack_key = L.POLICY_KEY.pack
    pack_value = L.POLICY_VALUE.pack
    htons = socket.htons
    codes: dict[int, tuple[int, int]] = {}  # id(cell) → (verdict code, cookie)
    singles: dict[int, bytes] = {}  # id(cell) → packed value of a one-port row
    keep: list[Cell] = []  # the cells whose ids key the dicts above stay alive meanwhile

    def code_of(cell: Cell) -> tuple[int, int]:
        found = codes.get(id(cell))
        if found is None:
            keep.append(cell)
            found = codes[id(cell)] = (
                VERDICT_CODES[cell.verdict],
                numbering.cookie(cell_info(cell, epp)),
            )
        return found

    def single_of(cell: Cell) -> bytes:
        verdict, cookie = code_of(cell)
        value = singles[id(cell)] = pack_value(verdict, 0, 16, 0, cookie)
        return value

    rows: dict[bytes, bytes] = {}
    verdict, cookie = code_of(epp.default)
    flags = L.PV_DEFAULT | (L.PV_HAS_WILDCARD if epp.has_wildcard else 0)
    rows[pack_key(L.POLICY_DEFAULT_BITS, pid, 0, 0, 0, 0)] = pack_value(
        verdict, flags, 0, 0, cookie
    )
    full = L.POLICY_BITS
    old_exact = prev.exact if prev is not None else {}
    exact: dict[int, bytes] = {}
    for k, cell in epp.exact.items():
        key = old_exact.get(k)
        if key is None:
            key = pack_key(full, pid, k >> 24, egress, (k >> 16) & 0xFF, htons(k & 0xFFFF))
        exact[k] = key
        rows[key] = singles.get(id(cell)) or single_of(cell)
    base = L.POLICY_PORT_BASE
    old_ranges = prev.ranges if prev is not None else {}
    ranges: dict[
        int, tuple[list[int], list[int], list[tuple[int, int]], list[tuple[bytes, bytes]]]
    ] = {}
    for k, pm in epp.ranges.items():
        seg_values = [code_of(c) for c in pm.cells]
        found = old_ranges.get(k)
        if found is None or (found[0], found[1], found[2]) != (pm.starts, pm.ends, seg_values):
            peer, proto = k >> 8, k & 0xFF
            blocks = []
            for lo, hi, cell in zip(pm.starts, pm.ends, pm.cells, strict=True):
                verdict, cookie = code_of(cell)
                for port, bits in port_blocks(lo, hi):
                    blocks.append(
                        (
                            pack_key(base + bits, pid, peer, egress, proto, htons(port)),
                            pack_value(verdict, 0, bits, 0, cookie),
                        )
                    )
            found = (pm.starts, pm.ends, seg_values, blocks)
        ranges[k] = found
        rows.update(found[3])
    cookies = frozenset(cookie for _, cookie in codes.values())
    return PolicyRows(epp, rows, cookies), Packed(exact, ranges)


@dataclass(frozen=True, slots=True)
class PolicyEntry:
    """One policy map entry, decoded (what ``cport bpf policy`` prints)."""

    policy_id: int
    direction: str  # ingress | egress
    peer: int  # 0: any peer
    protocol: int  # 0 with `default`
    port_lo: int
    port_hi: int
    verdict: str
    cookie: int
    default: bool = False
    has_wildcard: bool = False

    @property
    def ports(self) -> str:
        if self.default:
            return "-"
        if (self.port_lo, self.port_hi) == (0, 65535):
            return "*"
        if self.port_lo == self.port_hi:
            return str(self.port_lo)
        return f"{self.port_lo}-{self.port_hi}"


def decode_policy(key: bytes, value: bytes) -> PolicyEntry:
    plen, pid, peer, egress, proto, dport = L.POLICY_KEY.unpack(key)
    verdict, flags, _bits, _, cookie = L.POLICY_VALUE.unpack(value[: L.POLICY_VALUE.size])
    default = bool(flags & L.PV_DEFAULT)
    lo, hi = (0, 0) if default else block_range(socket.ntohs(dport), plen - L.POLICY_PORT_BASE)
    return PolicyEntry(
        pid,
        "egress" if egress else "ingress",
        peer,
        proto,
        lo,
        hi,
        L.VERDICT_NAMES.get(verdict, str(verdict)),
        cookie,
        default,
        bool(flags & L.PV_HAS_WILDCARD),
    )


def rows_by_policy(items: Iterable[tuple[bytes, bytes]]) -> dict[int, PolicyRows]:
    """Group policy map entries read back from the kernel by policy id."""
    grouped: dict[int, dict[bytes, bytes]] = {}
    for key, value in items:
        pid = L.U32.unpack_from(key, 4)[0]
        grouped.setdefault(pid, {})[key] = value[: L.POLICY_VALUE.size]
    return {
        pid: PolicyRows(None, rows, frozenset(L.U32.unpack_from(v, 4)[0] for v in rows.values()))
        for pid, rows in grouped.items()
    }
