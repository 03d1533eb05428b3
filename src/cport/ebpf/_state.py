"""The realised kernel state, read from the maps pinned under a pin root.

:class:`PinnedState` opens every pinned map of a datapath by path (no compiler, no program
load), checks their key and value sizes against :mod:`cport.ebpf._layout`, and decodes them:
both policy generations, the ipcache, grants, per-row counters, global counters and the
attachment. :class:`~cport.ebpf.BpfDatapath` reads through it, and so does ``cport bpf``.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cport._time import iso_ms
from cport.ebpf import _layout as L
from cport.ebpf._clock import boot_ns, wall_minus_boot_ns
from cport.ebpf._encode import (
    CellInfo,
    Generation,
    decode_cookie,
    decode_policy,
    rows_by_policy,
    unmapped,
)
from cport.ebpf._maps import BpfMap
from cport.errors import EbpfError

DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/cport")
BPF_FS_MAGIC = 0xCAFE4A11

#: Every map the object defines, with the (key size, value size) this version expects.
MAPS: dict[str, tuple[int, int]] = {
    "ipcache0": (L.IPCACHE_KEY.size, L.IPCACHE_VALUE.size),
    "ipcache1": (L.IPCACHE_KEY.size, L.IPCACHE_VALUE.size),
    "endpoints0": (L.ENDPOINT_KEY.size, L.ENDPOINT_VALUE.size),
    "endpoints1": (L.ENDPOINT_KEY.size, L.ENDPOINT_VALUE.size),
    "policy0": (L.POLICY_KEY.size, L.POLICY_VALUE.size),
    "policy1": (L.POLICY_KEY.size, L.POLICY_VALUE.size),
    "active": (4, L.ACTIVE_VALUE.size),
    "meta": (4, L.GEN_META.size),
    "attachment": (4, L.ATTACH_INFO.size),
    "config": (4, L.CONFIG_VALUE.size),
    "cookies": (4, L.COOKIE_VALUE.size),
    "grants": (L.GRANT_KEY.size, L.GRANT_VALUE.size),
    "conntrack": (L.FLOW_KEY.size, L.CT_VALUE.size),
    "policy_stats": (L.POLICY_KEY.size, L.ROW_STATS.size),
    "evt_limit": (36, 16),
    "evt_budget": (4, 16),
    "evt_scratch": (4, L.VERDICT_EVENT.size),
    "events": (0, 0),
    "counters": (4, L.COUNTERS_VALUE.size),
}
PROGRAMS = {"ingress": "prog_ingress", "egress": "prog_egress"}
ZERO = L.U32.pack(0)


def is_bpffs(path: Path) -> bool:
    """Whether `path` lies on a BPF filesystem (statfs magic)."""
    import ctypes

    buf = ctypes.create_string_buffer(128)  # struct statfs; f_type is the first long
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return False
    return int.from_bytes(buf.raw[:8], "little") == BPF_FS_MAGIC


def _iso(unix_ns: int) -> str:
    return iso_ms(unix_ns) if unix_ns else ""


@dataclass(frozen=True, slots=True)
class PolicyMapEntry:
    """One policy map entry with what it applies to, what it stands for, and its counters."""

    generation: int
    policy_id: int
    endpoints: tuple[int, ...]  # identities whose policy this is
    direction: str
    peer: int  # 0: any peer
    protocol: int
    port_lo: int
    port_hi: int
    ports: str
    verdict: str
    cookie: int
    rules: str  # the cookie's text: verdict/reason: contributing rule entries
    default: bool
    packets: int
    bytes: int

    def to_json(self) -> dict[str, object]:
        return {
            "generation": self.generation,
            "policyId": self.policy_id,
            "endpoints": list(self.endpoints),
            "direction": self.direction,
            "peer": self.peer,
            "protocol": self.protocol,
            "ports": self.ports,
            "default": self.default,
            "verdict": self.verdict,
            "cookie": self.cookie,
            "rules": self.rules,
            "packets": self.packets,
            "bytes": self.bytes,
        }


@dataclass(frozen=True, slots=True)
class IpcacheEntry:
    """An ipcache entry: a prefix (a workload's host prefix or a CIDR identity's), or an
    address bound to a credential's identity by a grant."""

    prefix: str
    identity: int
    kind: str  # workload | cidr | bound
    generation: int

    def to_json(self) -> dict[str, object]:
        return {
            "prefix": self.prefix,
            "identity": self.identity,
            "kind": self.kind,
            "generation": self.generation,
        }


@dataclass(frozen=True, slots=True)
class GrantEntry:
    """A grant: the peer identity from this address may pass auth-required rows until
    `expires_at` (unix seconds)."""

    peer_identity: int
    address: str
    expires_at: float
    live: bool

    def to_json(self) -> dict[str, object]:
        return {
            "peerIdentity": self.peer_identity,
            "address": self.address,
            "expiresAt": _iso(int(self.expires_at * 1e9)),
            "live": self.live,
        }


class PinnedState:
    """The maps pinned under `pin_root`, open for reading (and for writing, by the datapath).

    >>> state = PinnedState.open(Path("/sys/fs/bpf/cport"))          # doctest: +SKIP
    >>> state.status()["realisedRevision"]                            # doctest: +SKIP
    """

    def __init__(self, pin_root: Path, maps: dict[str, BpfMap]) -> None:
        self.pin_root = pin_root
        self.maps = maps

    @classmethod
    def open(cls, pin_root: Path) -> PinnedState:
        if not pin_root.is_dir():
            raise EbpfError(f"no cport datapath is pinned at {pin_root}", code="not-pinned")
        maps: dict[str, BpfMap] = {}
        try:
            for name, (ks, vs) in MAPS.items():
                path = pin_root / name
                if not path.exists():
                    raise EbpfError(
                        f"{pin_root} holds no map {name!r}: not a cport pin root, or from an "
                        "incompatible version",
                        code="not-pinned",
                    )
                m = maps[name] = BpfMap.from_pin(path)
                if (m.key_size, m.value_size) != (ks, vs):
                    raise EbpfError(
                        f"pinned map {path} has key/value sizes {m.key_size}/{m.value_size}, "
                        f"this cport expects {ks}/{vs} (pinned by an incompatible version)",
                        code="layout-mismatch",
                    )
        except BaseException:
            for m in maps.values():
                m.close()
            raise
        return cls(pin_root, maps)

    def close(self) -> None:
        for m in self.maps.values():
            m.close()
        self.maps = {}

    def __getitem__(self, name: str) -> BpfMap:
        return self.maps[name]

    # -- scalars -------------------------------------------------------------------------
    def epoch(self) -> int:
        raw = self.maps["active"].lookup(ZERO)
        return L.ACTIVE_VALUE.unpack(raw[: L.ACTIVE_VALUE.size])[0] if raw else 0

    def gen_meta(self, g: int) -> tuple[int, int, int, int]:
        """(revision, synced unix ns, entries, epoch) of generation `g`."""
        raw = self.maps["meta"].lookup(L.U32.pack(g))
        if raw is None:
            return (0, 0, 0, 0)
        rev, synced, entries, epoch = L.GEN_META.unpack(raw[: L.GEN_META.size])
        return rev, synced, entries, epoch

    def realised_revision(self) -> int:
        epoch = self.epoch()
        return self.gen_meta(epoch & 1)[0] if epoch else 0

    def attachment(self) -> dict[str, object] | None:
        raw = self.maps["attachment"].lookup(ZERO)
        if raw is None:
            return None
        ifname, build, at, ifindex, flags, ing, eg = L.ATTACH_INFO.unpack(raw[: L.ATTACH_INFO.size])
        if not ifindex:
            return None
        return {
            "interface": ifname.rstrip(b"\0").decode(errors="replace"),
            "ifindex": ifindex,
            "buildId": f"{build:016x}",
            "attachedAt": _iso(at),
            "ingressProgId": ing,
            "egressProgId": eg,
            "createdClsact": bool(flags & L.AT_CREATED_HOOK),
        }

    def build_id(self) -> int:
        raw = self.maps["attachment"].lookup(ZERO)
        return L.ATTACH_INFO.unpack(raw[: L.ATTACH_INFO.size])[1] if raw else 0

    def counters(self) -> dict[str, int]:
        totals = [0] * L.COUNTERS_MAX
        for value in self.maps["counters"].lookup_percpu(ZERO):
            for i, n in enumerate(L.COUNTERS_VALUE.unpack(value[: L.COUNTERS_VALUE.size])):
                totals[i] += n
        return dict(zip(L.COUNTERS, totals, strict=False))

    def config(self) -> dict[str, object]:
        raw = self.maps["config"].lookup(ZERO)
        interval, flags, budget = (
            L.CONFIG_VALUE.unpack(raw[: L.CONFIG_VALUE.size]) if raw else (0, 0, 0)
        )
        return {
            "eventIntervalSeconds": interval / 1e9,
            "emitAllowed": bool(flags & L.CFG_EMIT_ALLOWED),
            "eventsPerSecondPerCpu": budget,
        }

    # -- generations ---------------------------------------------------------------------
    def read_generation(self, g: int) -> Generation:
        """What generation `g` holds, read back entry by entry."""

        def trim(items: list[tuple[bytes, bytes]], size: int) -> dict[bytes, bytes]:
            return {k: v[:size] for k, v in items}

        gen = Generation(revision=self.gen_meta(g)[0])
        gen.ipcache = trim(self.maps[f"ipcache{g}"].items(), L.IPCACHE_VALUE.size)
        gen.endpoints = trim(self.maps[f"endpoints{g}"].items(), L.ENDPOINT_VALUE.size)
        gen.policies = rows_by_policy(self.maps[f"policy{g}"].items())
        return gen

    def cookies(self) -> dict[int, CellInfo]:
        return {L.U32.unpack(k)[0]: decode_cookie(v) for k, v in self.maps["cookies"].items()}

    def row_stats(self) -> dict[bytes, tuple[int, int]]:
        m = self.maps["policy_stats"]
        out = {}
        for key in list(m.keys()):
            packets = nbytes = 0
            for v in m.lookup_percpu(key):
                p, b = L.ROW_STATS.unpack(v[: L.ROW_STATS.size])
                packets += p
                nbytes += b
            out[key] = (packets, nbytes)
        return out

    def active_generation(self, generation: int | None) -> int:
        if generation is not None:
            return generation
        epoch = self.epoch()
        if not epoch:
            raise EbpfError("no policy has been realised yet (epoch 0)", code="no-policy")
        return epoch & 1

    def policy_entries(
        self, generation: int | None = None, *, identity: int | None = None
    ) -> list[PolicyMapEntry]:
        """The policy rows of a generation (default: the active one), optionally only those
        of the policies governing endpoint `identity`, with their rules and counters."""
        g = self.active_generation(generation)
        governed: dict[int, list[int]] = {}
        for key, value in self.maps[f"endpoints{g}"].items():
            ident = L.U32.unpack(key)[0]
            ing, eg = L.ENDPOINT_VALUE.unpack(value[: L.ENDPOINT_VALUE.size])
            for pid in (ing, eg):
                if pid:
                    governed.setdefault(pid, []).append(ident)
        wanted = None
        if identity is not None:
            wanted = {pid for pid, ids in governed.items() if identity in ids}
        cookies = self.cookies()
        stats = self.row_stats()
        out = []
        for key, value in self.maps[f"policy{g}"].items():
            e = decode_policy(key, value)
            if wanted is not None and e.policy_id not in wanted:
                continue
            info = cookies.get(e.cookie)
            packets, nbytes = stats.get(key, (0, 0))
            out.append(
                PolicyMapEntry(
                    g,
                    e.policy_id,
                    tuple(sorted(governed.get(e.policy_id, ()))),
                    e.direction,
                    e.peer,
                    e.protocol,
                    e.port_lo,
                    e.port_hi,
                    e.ports,
                    e.verdict,
                    e.cookie,
                    info.text if info else "",
                    e.default,
                    packets,
                    nbytes,
                )
            )
        out.sort(
            key=lambda r: (
                r.endpoints,
                r.direction,
                r.policy_id,
                not r.default,
                r.peer,
                r.protocol,
                r.port_lo,
            )
        )
        return out

    def ipcache_entries(self, generation: int | None = None) -> list[IpcacheEntry]:
        g = self.active_generation(generation)
        out = []
        for key, value in self.maps[f"ipcache{g}"].items():
            plen, raw = L.IPCACHE_KEY.unpack(key)
            ident, flags = L.IPCACHE_VALUE.unpack(value[: L.IPCACHE_VALUE.size])
            addr, bits = unmapped(raw, plen)
            kind = (
                "workload" if flags & L.IP_WORKLOAD else "bound" if flags & L.IP_BOUND else "cidr"
            )
            out.append(IpcacheEntry(f"{addr}/{bits}", ident, kind, g))
        out.sort(
            key=lambda e: (ipaddress.ip_network(e.prefix).version, ipaddress.ip_network(e.prefix))
        )
        return out

    def grant_entries(self) -> list[GrantEntry]:
        now = boot_ns()
        offset = wall_minus_boot_ns()
        out = []
        for key, value in self.maps["grants"].items():
            peer, raw = L.GRANT_KEY.unpack(key)
            (expires,) = L.GRANT_VALUE.unpack(value[: L.GRANT_VALUE.size])
            addr, _ = unmapped(raw)
            out.append(GrantEntry(peer, addr, (expires + offset) / 1e9, expires > now))
        out.sort(key=lambda g: (g.peer_identity, g.address))
        return out

    def map_summary(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for name, m in self.maps.items():
            entry: dict[str, object] = {
                "type": m.info.type_name,
                "maxEntries": m.info.max_entries,
                "id": m.info.id,
            }
            if m.info.type_name in ("hash", "lru_hash", "lpm_trie", "lru_percpu_hash"):
                entry["entries"] = len(m)
            out[name] = entry
        return out

    def status(self) -> dict[str, object]:
        epoch = self.epoch()
        gens = []
        for g in (0, 1):
            rev, synced, entries, gen_epoch = self.gen_meta(g)
            gens.append(
                {
                    "generation": g,
                    "active": bool(epoch) and (epoch & 1) == g,
                    "revision": rev,
                    "entries": entries,
                    "epoch": gen_epoch,
                    "syncedAt": _iso(synced),
                }
            )
        return {
            "pinRoot": str(self.pin_root),
            "attached": self.attachment(),
            "epoch": epoch,
            "activeGeneration": (epoch & 1) if epoch else None,
            "realisedRevision": self.realised_revision(),
            "generations": gens,
            "counters": self.counters(),
            "config": self.config(),
            "maps": self.map_summary(),
        }


def pinned_programs(pin_root: Path) -> dict[str, Path]:
    """The program pins that exist under `pin_root`."""
    return {
        point: pin_root / name for point, name in PROGRAMS.items() if (pin_root / name).exists()
    }
