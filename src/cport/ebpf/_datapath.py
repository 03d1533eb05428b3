"""`BpfDatapath`: the eBPF enforcer's one object, what the agent calls.

Lifecycle::

    dp = BpfDatapath("eth0")                 # pin root /sys/fs/bpf/cport
    dp.open()          # compile if needed; adopt pinned programs and maps, or load them
    stats = dp.sync(table)                   # diff → inactive generation → flip; attach
    dp.grant(identity, "192.0.2.7", expires_at=cred.expires_at)
    dp.bind("203.0.113.7", user_identity)    # an address → a credential's identity
    dp.grant(user_identity, "203.0.113.7", expires_at=cred.expires_at)
    for ev in dp.poll_events(timeout_ms=100): ...
    dp.close()         # programs keep enforcing (pinned, attached); detach=True removes them

Sync writes the table into the *inactive* generation (ipcache, endpoints and policy maps)
by diff against what that generation holds, then flips the one-element ``active`` map: a
packet reads the epoch once and sees either the whole old policy or the whole new one.

Bindings (:meth:`BpfDatapath.bind`) are host entries laid over the table's ipcache: an
address that is no workload's resolves to a credential's identity (an OIDC user's, say)
while the agent holds a grant for it. They are written into the active generation at once
and into every generation a sync writes; a sync realises exactly the table plus the bindings
this process knows, so bindings of an earlier process end with its first sync.
"""

from __future__ import annotations

import ctypes
import functools
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Concatenate, ParamSpec, TypeVar

from cport.ebpf import _btf, _build, _tc
from cport.ebpf import _layout as L
from cport.ebpf._clock import boot_ns, wall_minus_boot_ns, wall_to_boot_ns
from cport.ebpf._encode import (
    CellInfo,
    Encoder,
    Generation,
    address_bytes,
    cookie_value,
    gc_paused,
    unmapped,
)
from cport.ebpf._events import RingReader, VerdictEvent, decode_event
from cport.ebpf._libbpf import check, check_ptr, lib, obj_info, prog_stats
from cport.ebpf._netns import entered
from cport.ebpf._state import (
    DEFAULT_PIN_ROOT,
    MAPS,
    PROGRAMS,
    ZERO,
    GrantEntry,
    IpcacheEntry,
    PinnedState,
    PolicyMapEntry,
    is_bpffs,
    pinned_programs,
)
from cport.engine import Table
from cport.errors import EbpfError

#: Time left between a generation switch and the next write into the generation it retired,
#: so no program still running on the old epoch reads a half-rewritten generation (a tc
#: program runs for microseconds, with preemption off).
GRACE_SECONDS = 0.01
_PROGRAM_NAMES = {"ingress": "cport_ingress", "egress": "cport_egress"}


@dataclass(frozen=True, slots=True)
class SyncStats:
    """What one :meth:`BpfDatapath.sync` did. `changed` is False when the table changed
    nothing in the kernel (no generation switch; only the realised revision moved)."""

    revision: int
    epoch: int
    generation: int
    written: int
    deleted: int
    entries: int
    seconds: float
    changed: bool = True

    def to_json(self) -> dict[str, object]:
        return {
            "revision": self.revision,
            "epoch": self.epoch,
            "generation": self.generation,
            "written": self.written,
            "deleted": self.deleted,
            "entries": self.entries,
            "seconds": round(self.seconds, 6),
            "changed": self.changed,
        }


def ensure_bpffs(pin_root: Path) -> None:
    """Make sure `pin_root` can live on a BPF filesystem: mount one at /sys/fs/bpf when the
    pin root is under it and nothing is mounted there (as Cilium does)."""
    probe = pin_root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if is_bpffs(probe):
        return
    bpffs = Path("/sys/fs/bpf")
    if (pin_root == bpffs or bpffs in pin_root.parents) and bpffs.is_dir():
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(b"bpf", b"/sys/fs/bpf", b"bpf", 0, None) == 0:
            return
        err = ctypes.get_errno()
        raise EbpfError(
            f"mounting the BPF filesystem at /sys/fs/bpf failed: {os.strerror(err)}",
            code="no-bpffs",
            errno=err,
        )
    raise EbpfError(
        f"pin root {pin_root} is not on a BPF filesystem (mount -t bpf bpf /sys/fs/bpf)",
        code="no-bpffs",
    )


P = ParamSpec("P")
R = TypeVar("R")


def _locked(
    fn: Callable[Concatenate[BpfDatapath, P], R],
) -> Callable[Concatenate[BpfDatapath, P], R]:
    """Serialise the methods that change maps or this object's state: the agent may grant
    from one thread while another syncs."""

    @functools.wraps(fn)
    def wrapper(dp: BpfDatapath, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with dp._lock:
            return fn(dp, *args, **kwargs)

    return wrapper


def _prog_id(fd: int) -> int:
    return int(L.U32.unpack_from(obj_info(fd, 8), 4)[0])


class BpfDatapath:
    """Identity-to-port policy enforced by tc programs on `interface` (in network
    namespace `netns`, an ``ip netns`` name or a path, if given).

    Maps and programs are pinned under `pin_root`, one datapath per pin root (tests use
    their own). `cache_dir` holds compiled objects (default ``$XDG_CACHE_HOME/cport/bpf``).
    `emit_allowed`: also report each new allowed flow as an event (for the audit record);
    `event_interval`: at most one event per flow and kind this often (seconds);
    `events_per_second`: at most this many events per second per CPU."""

    def __init__(
        self,
        interface: str,
        *,
        pin_root: Path = DEFAULT_PIN_ROOT,
        cache_dir: Path | None = None,
        netns: str | None = None,
        emit_allowed: bool = True,
        event_interval: float = 1.0,
        events_per_second: int = 2000,
    ) -> None:
        if not interface or len(interface) > 15:
            raise EbpfError(f"bad interface name {interface!r}", code="interface-not-found")
        self.interface = interface
        self.pin_root = Path(pin_root)
        self.cache_dir = cache_dir
        self.netns = netns
        self.emit_allowed = emit_allowed
        self.event_interval = event_interval
        self.events_per_second = events_per_second
        self.adopted = False  # open() found pinned programs of this build and kept them
        self._state: PinnedState | None = None
        self._progs: dict[str, int] = {}
        self._build: _build.Build | None = None
        self._encoder = Encoder()
        self._realised: dict[int, Generation | None] = {0: None, 1: None}
        self._retired_cookies: set[int] = set()
        self._cookies_in_map: set[int] = set()
        self._epoch = 0
        self._revision = 0
        self._epoch_revisions: dict[int, int] = {}
        self._last_flip = 0.0
        self._reader: RingReader | None = None
        self._lock = threading.RLock()
        self._bindings: dict[bytes, int] = {}  # 16-byte address → the identity bound to it
        # the ipcache of the last synced table, before bindings (None until this process syncs)
        self._base_ipcache: dict[bytes, bytes] | None = None

    # -- lifecycle -----------------------------------------------------------------------
    @_locked
    def open(self) -> None:
        """Compile the programs if needed, then adopt the pinned programs and maps (same
        build: nothing is reloaded, enforcement never pauses) or load them (reusing any
        pinned maps, replacing older programs in place). Attaching waits for the first
        realised policy; an adopted datapath with a policy is (re)attached at once."""
        if self._state is not None:
            return
        ensure_bpffs(self.pin_root)
        build = self._build = _build.build(self.cache_dir)
        _btf.check_object(build.path)
        self.pin_root.mkdir(parents=True, exist_ok=True)
        self._ifindex()  # fail early on a missing interface
        pinned = pinned_programs(self.pin_root)
        state: PinnedState | None = None
        if len(pinned) == len(PROGRAMS) and all((self.pin_root / m).exists() for m in MAPS):
            state = PinnedState.open(self.pin_root)
            if state.build_id() == build.build_id:
                self._progs = {
                    point: check(
                        lib().bpf_obj_get(os.fsencode(path)), f"opening pinned program {path}"
                    )
                    for point, path in pinned.items()
                }
                self.adopted = True
            else:
                state.close()
                state = None
        if state is None:
            self._progs = self._load(build)
            state = PinnedState.open(self.pin_root)
        self._state = state
        try:
            self._adopt_state(state)
            self._write_config()
            self._reader = RingReader(state["events"].fd)
            if self._epoch:
                self.ensure_attached()
        except BaseException:
            self.close()
            raise

    def _adopt_state(self, state: PinnedState) -> None:
        self._epoch = state.epoch()
        for g in (0, 1):
            self._realised[g] = state.read_generation(g)
            rev, _, _, gen_epoch = state.gen_meta(g)
            if gen_epoch:
                self._epoch_revisions[gen_epoch] = rev
        for cookie, info in state.cookies().items():
            self._encoder.numbering.seed_cookie(cookie, info)
            self._cookies_in_map.add(cookie)
        self._revision = state.realised_revision()
        self._last_flip = time.monotonic()

    def _load(self, build: _build.Build) -> dict[str, int]:
        bpf = lib()
        obj = check_ptr(
            bpf.bpf_object__open_file(os.fsencode(build.path), None),
            f"opening {build.path}",
            code="bpf-load-failed",
        )
        try:
            for name in MAPS:
                m = bpf.bpf_object__find_map_by_name(obj, name.encode())
                if not m:
                    raise EbpfError(f"the object has no map {name!r}", code="layout-mismatch")
                check(bpf.bpf_map__set_pin_path(m, os.fsencode(self.pin_root / name)), name)
            check(
                bpf.bpf_object__load(obj),
                "loading the BPF programs (verifier or pinned-map mismatch)",
                code="bpf-load-failed",
            )
            fds = {}
            for point, fn in _PROGRAM_NAMES.items():
                prog = check_ptr(bpf.bpf_object__find_program_by_name(obj, fn.encode()), fn)
                fd = bpf.bpf_program__fd(prog)
                pin = self.pin_root / PROGRAMS[point]
                if pin.exists():
                    pin.unlink()
                check(bpf.bpf_obj_pin(fd, os.fsencode(pin)), f"pinning {pin}")
                fds[point] = os.dup(fd)
            return fds
        finally:
            bpf.bpf_object__close(obj)

    def _write_config(self) -> None:
        flags = L.CFG_EMIT_ALLOWED if self.emit_allowed else 0
        value = L.CONFIG_VALUE.pack(
            int(self.event_interval * 1e9), flags, max(0, self.events_per_second)
        )
        self.state["config"].update(ZERO, value)

    def _ifindex(self) -> int:
        with entered(self.netns):
            try:
                return socket.if_nametoindex(self.interface)
            except OSError:
                where = f" in network namespace {self.netns}" if self.netns else ""
                raise EbpfError(
                    f"no interface {self.interface!r}{where}", code="interface-not-found"
                ) from None

    @_locked
    def ensure_attached(self) -> dict[str, int]:
        """Make sure cport's filters on the interface run this datapath's programs (attach
        them, or replace older ones in place); returns the program id per hook. Cheap when
        they already do: two netlink queries. :meth:`sync` calls it, so a recreated
        interface gets its filters back with the next sync."""
        assert self._build is not None
        with entered(self.netns):
            ifindex = socket.if_nametoindex(self.interface)
            ids, changed, created = {}, False, False
            for point, fd in self._progs.items():
                want = _prog_id(fd)
                current = _tc.query(ifindex, point)
                if current != want:
                    created = _tc.create_hook(ifindex) or created
                    current = _tc.attach(ifindex, point, fd)
                    changed = True
                ids[point] = current
        raw = self.state["attachment"].lookup(ZERO)
        prev = L.ATTACH_INFO.unpack(raw[: L.ATTACH_INFO.size]) if raw else None
        same = prev is not None and (prev[1], prev[3], prev[5], prev[6]) == (
            self._build.build_id,
            ifindex,
            ids["ingress"],
            ids["egress"],
        )
        if changed or not same:
            flags = L.AT_CREATED_HOOK if created else 0
            if prev is not None and prev[3] == ifindex:
                flags |= prev[4] & L.AT_CREATED_HOOK
            self.state["attachment"].update(
                ZERO,
                L.ATTACH_INFO.pack(
                    self.interface.encode(),
                    self._build.build_id,
                    time.time_ns(),
                    ifindex,
                    flags,
                    ids["ingress"],
                    ids["egress"],
                ),
            )
        return ids

    @_locked
    def close(self, *, detach: bool = False, unpin: bool = False) -> None:
        """Release this process's handles. By default the programs stay attached and pinned,
        enforcing the last realised policy (a restarted agent adopts them). `detach`:
        remove cport's tc filters (and the clsact qdisc if cport created it); `unpin`
        (implies detach): also remove every pinned map and program and the pin root."""
        if unpin:
            detach = True
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if detach and self._state is None and (self.pin_root / "attachment").exists():
            self._state = PinnedState.open(self.pin_root)  # closed before: detach from the pins
        if detach and self._state is not None:
            self._detach()
        if self._state is not None:
            self._state.close()
            self._state = None
        for fd in self._progs.values():
            os.close(fd)
        self._progs = {}
        if unpin:
            remove_pins(self.pin_root)

    def _detach(self) -> None:
        raw = self.state["attachment"].lookup(ZERO)
        info = L.ATTACH_INFO.unpack(raw[: L.ATTACH_INFO.size]) if raw else None
        try:
            ifindex = self._ifindex()
        except EbpfError:
            ifindex = 0  # the interface is gone, and its filters with it
        if ifindex:
            with entered(self.netns):
                for point in ("ingress", "egress"):
                    _tc.detach(ifindex, point)
                if info is not None and info[3] == ifindex and info[4] & L.AT_CREATED_HOOK:
                    _tc.destroy_hook(ifindex)
        self.state["attachment"].update(ZERO, bytes(L.ATTACH_INFO.size))

    def __enter__(self) -> BpfDatapath:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def state(self) -> PinnedState:
        if self._state is None:
            raise EbpfError("the datapath is not open (call open() first)", code="not-open")
        return self._state

    # -- sync ----------------------------------------------------------------------------
    @property
    def realised_revision(self) -> int:
        """The table revision the kernel enforces (0 before the first sync)."""
        return self._revision

    @property
    def epoch(self) -> int:
        return self._epoch

    @_locked
    def sync(self, table: Table) -> SyncStats:
        """Realise `table`: write it into the inactive generation by diff (batched), then
        switch generations in one map write. Returns what was written; the realised
        revision is `table.revision` afterwards. Attaches the programs on the first sync."""
        state = self.state
        t0 = time.perf_counter()
        desired = self._encoder.encode(table)
        base = desired.ipcache  # what unbind() restores, once this table is realised
        desired.ipcache = self._with_bindings(base)
        active = self._realised[self._epoch & 1] if self._epoch else None
        if active is not None and _same(active, desired):
            g = self._epoch & 1
            self._write_meta(g, table.revision, desired.entries, self._epoch)
            self._revision = table.revision
            self._realised[g] = desired  # same entries, newer sources: cheaper next diffs
            self._base_ipcache = base
            self._epoch_revisions[self._epoch] = table.revision
            self.ensure_attached()
            return SyncStats(
                table.revision, self._epoch, g, 0, 0, desired.entries,
                time.perf_counter() - t0, changed=False,
            )  # fmt: skip
        new_epoch = self._epoch + 1
        g = new_epoch & 1
        wait = GRACE_SECONDS - (time.monotonic() - self._last_flip)
        if wait > 0:
            time.sleep(wait)
        current = self._realised[g]
        if current is None:  # unknown after a failed write: read it back
            current = state.read_generation(g)
        self._realised[g] = None
        with gc_paused():
            written, deleted = self._write_generation(g, current, desired)
        self._write_cookies(desired)
        self._write_meta(g, table.revision, desired.entries, new_epoch)
        state["active"].update(ZERO, L.ACTIVE_VALUE.pack(new_epoch, 0))  # the switch
        self._last_flip = time.monotonic()
        self._epoch = new_epoch
        self._revision = table.revision
        self._epoch_revisions[new_epoch] = table.revision
        for old in [e for e in self._epoch_revisions if e < new_epoch - 8]:
            del self._epoch_revisions[old]
        self._realised[g] = desired
        self._base_ipcache = base
        self._collect_cookies(current)
        self.ensure_attached()
        return SyncStats(
            table.revision, new_epoch, g, written, deleted, desired.entries,
            time.perf_counter() - t0,
        )  # fmt: skip

    def _with_bindings(self, base: dict[bytes, bytes]) -> dict[bytes, bytes]:
        """The table's ipcache entries with the bindings laid over them (a copy). A binding
        never covers a workload's address: one that became a workload's since is inert."""
        out = dict(base)
        for addr, identity in self._bindings.items():
            key = L.IPCACHE_KEY.pack(128, addr)
            if _is_workload(base.get(key)):
                continue
            out[key] = L.IPCACHE_VALUE.pack(identity, L.IP_BOUND)
        return out

    def _write_generation(self, g: int, cur: Generation, new: Generation) -> tuple[int, int]:
        state = self.state
        written = deleted = 0
        for name, old, want in (
            ("ipcache", cur.ipcache, new.ipcache),
            ("endpoints", cur.endpoints, new.endpoints),
        ):
            m = state[f"{name}{g}"]
            written += m.update_many([(k, v) for k, v in want.items() if old.get(k) != v])
            deleted += m.delete_many([k for k in old if k not in want])
        updates: list[tuple[bytes, bytes]] = []
        deletes: list[bytes] = []
        for pid, rows in new.policies.items():
            prev = cur.policies.get(pid)
            if prev is not None and prev.source is not None and prev.source is rows.source:
                continue
            if prev is None:
                updates.extend(rows.rows.items())
                continue
            old = prev.rows
            updates.extend((k, v) for k, v in rows.rows.items() if old.get(k) != v)
            deletes.extend(k for k in old if k not in rows.rows)
        for pid, prev in cur.policies.items():
            if pid not in new.policies:
                deletes.extend(prev.rows)
        m = state[f"policy{g}"]
        written += m.update_many(updates)
        deleted += m.delete_many(deletes)
        return written, deleted

    def _write_cookies(self, gen: Generation) -> None:
        numbering = self._encoder.numbering
        fresh = [c for c in gen.cookies() if c not in self._cookies_in_map]
        items = [(L.U32.pack(c), cookie_value(numbering.cookies[c])) for c in fresh]
        self.state["cookies"].update_many(items)
        self._cookies_in_map.update(fresh)

    def _collect_cookies(self, overwritten: Generation) -> None:
        """Forget cookies neither generation uses — one sync late, so events emitted under
        the generation just overwritten can still be named."""
        keep = set()
        for gen in self._realised.values():
            if gen is not None:
                keep |= gen.cookies()
        retired = overwritten.cookies() - keep
        gone = [c for c in self._cookies_in_map if c not in keep and c not in retired]
        gone_set = set(gone) | (self._retired_cookies - keep - retired)
        self._retired_cookies = retired
        self.state["cookies"].delete_many([L.U32.pack(c) for c in gone_set])
        self._cookies_in_map -= gone_set
        self._encoder.numbering.forget_cookies(keep | retired)

    def _write_meta(self, g: int, revision: int, entries: int, epoch: int) -> None:
        self.state["meta"].update(
            L.U32.pack(g), L.GEN_META.pack(revision, time.time_ns(), entries, epoch)
        )

    # -- address bindings ----------------------------------------------------------------
    @_locked
    def bind(self, address: str, identity: int) -> None:
        """Resolve the host `address` to `identity` (a credential's: an OIDC user has no
        address of its own) until :meth:`unbind`. Written into the active generation at
        once, and into every generation later syncs write. Refuses a workload's address
        (``bind-workload-address``) and an address bound to another identity
        (``address-bound``); binding the same identity again is a no-op. Needs a policy
        realised by this process (``no-policy``): the table must already hold the
        identity's rows, or the address would resolve to an identity without policy."""
        addr = address_bytes(address)
        base = self._base_ipcache
        if not self._epoch or base is None:
            raise EbpfError(
                "binding an address needs a policy synced by this process (sync first)",
                code="no-policy",
            )
        key = L.IPCACHE_KEY.pack(128, addr)
        if _is_workload(base.get(key)):
            raise EbpfError(
                f"{address} is a workload's address: it keeps the workload's identity",
                code="bind-workload-address",
            )
        current = self._bindings.get(addr)
        if current == identity:
            return
        if current is not None:
            raise EbpfError(
                f"{address} is bound to identity {current}; unbind it first",
                code="address-bound",
            )
        # the kernel first: a failed write leaves nothing this process believes bound
        self._write_active_ipcache(key, L.IPCACHE_VALUE.pack(identity, L.IP_BOUND))
        self._bindings[addr] = identity
        self._forget_flows(addr)

    @_locked
    def unbind(self, address: str, identity: int | None = None) -> bool:
        """Return `address` to what the table says it is (a CIDR identity or world), if it
        is bound (to `identity`, when given); returns whether it was. The address's tracked
        flows are forgotten, so each is decided again (as the table's identity) with its next
        packet: nothing admitted under the binding outlives it."""
        addr = address_bytes(address)
        current = self._bindings.get(addr)
        if current is None or (identity is not None and current != identity):
            return False
        base = self._base_ipcache
        if self._epoch and base is not None:
            key = L.IPCACHE_KEY.pack(128, addr)
            self._write_active_ipcache(key, base.get(key))  # a failure keeps it bound: retry
        del self._bindings[addr]
        if self._epoch and base is not None:
            self._forget_flows(addr)
        return True

    def bindings(self) -> dict[str, int]:
        """Address → bound identity, as this process knows them."""
        with self._lock:
            return {unmapped(a)[0]: ident for a, ident in self._bindings.items()}

    def _write_active_ipcache(self, key: bytes, value: bytes | None) -> None:
        """Write (or, with None, delete) one host entry of the active generation, keeping
        what this process knows of that generation in step (later diffs rely on it)."""
        g = self._epoch & 1
        m = self.state[f"ipcache{g}"]
        gen = self._realised[g]
        if value is None:
            m.delete(key)
            if gen is not None:
                gen.ipcache.pop(key, None)
        else:
            m.update(key, value)
            if gen is not None:
                gen.ipcache[key] = value

    def _forget_flows(self, addr: bytes) -> int:
        """Delete the conntrack entries of flows from or to `addr` (16 bytes): their cached
        verdicts were decided under the address's previous identity."""
        ct = self.state["conntrack"]
        doomed = [k for k in ct.keys() if k[:16] == addr or k[16:32] == addr]  # noqa: SIM118
        ct.delete_many(doomed)
        return len(doomed)

    # -- grants --------------------------------------------------------------------------
    @_locked
    def grant(self, peer_identity: int, peer_address: str, expires_at: float) -> None:
        """Let `peer_identity` from `peer_address` pass auth-required rows until
        `expires_at` (unix seconds, e.g. the credential's expiry). Replaces an earlier grant
        for the same peer; an expiry in the past removes it. `peer_address` must resolve to
        `peer_identity` in the active generation (``grant-identity-mismatch`` otherwise): a
        workload's or CIDR identity's own address, or an address :meth:`bind` bound to it."""
        addr = address_bytes(peer_address)
        key = L.GRANT_KEY.pack(peer_identity, addr)
        active = self._realised[self._epoch & 1] if self._epoch else None
        if active is not None:
            resolved = resolve_address(active, addr)
            if resolved != peer_identity:
                raise EbpfError(
                    f"{peer_address} is identity {resolved} in the realised ipcache, not "
                    f"{peer_identity}: the programs check grants for the identity an address "
                    "resolves to, so this grant could never admit anything",
                    code="grant-identity-mismatch",
                )
        expires = wall_to_boot_ns(expires_at)
        grants = self.state["grants"]
        if expires <= boot_ns():
            grants.delete(key)
            return
        grants.update(key, L.GRANT_VALUE.pack(expires))

    @_locked
    def revoke(self, *, peer_identity: int | None = None, peer_address: str | None = None) -> int:
        """Remove the grants of `peer_identity`, of `peer_address`, or of both together;
        returns how many. Flows admitted by them are dropped from their next packet."""
        if peer_identity is None and peer_address is None:
            raise ValueError("revoke() needs peer_identity, peer_address or both")
        grants = self.state["grants"]
        want_addr = address_bytes(peer_address) if peer_address is not None else None
        if peer_identity is not None and want_addr is not None:
            return int(grants.delete(L.GRANT_KEY.pack(peer_identity, want_addr)))
        doomed = []
        for key in grants.keys():  # noqa: SIM118  (a BPF map, not a dict)
            peer, addr = L.GRANT_KEY.unpack(key)
            if (peer_identity is None or peer == peer_identity) and (
                want_addr is None or addr == want_addr
            ):
                doomed.append(key)
        grants.delete_many(doomed)
        return len(doomed)

    @_locked
    def prune_grants(self, *, unresolved: bool = False) -> int:
        """Delete expired grants (they are already powerless); returns how many. With
        `unresolved`, also the grants whose address no longer resolves to their identity in
        the active generation (powerless too: e.g. those of bindings an earlier process
        made, which this process's first sync removed)."""
        grants = self.state["grants"]
        now = boot_ns()
        active = self._realised[self._epoch & 1] if self._epoch else None
        doomed = []
        for k, v in grants.items():
            if L.GRANT_VALUE.unpack(v[:8])[0] <= now:
                doomed.append(k)
            elif unresolved and active is not None:
                peer, addr = L.GRANT_KEY.unpack(k)
                if resolve_address(active, addr) != peer:
                    doomed.append(k)
        grants.delete_many(doomed)
        return len(doomed)

    # -- events --------------------------------------------------------------------------
    def poll_events(self, timeout_ms: int = 0) -> list[VerdictEvent]:
        """The verdict events that arrived, waiting up to `timeout_ms` for the first."""
        if self._reader is None:
            raise EbpfError("the datapath is not open (call open() first)", code="not-open")
        records = self._reader.poll(timeout_ms)
        if not records:
            return []
        offset = wall_minus_boot_ns()
        cookies = self._encoder.numbering.cookies
        return [decode_event(raw, cookies.get, self._revision_of, offset) for raw in records]

    def _revision_of(self, epoch: int) -> int:
        return self._epoch_revisions.get(epoch, 0)

    def cell(self, cookie: int) -> CellInfo | None:
        """What a cookie stands for (rule entries included when this process wrote it)."""
        return self._encoder.numbering.cookies.get(cookie)

    # -- reading the kernel's state ------------------------------------------------------
    def status(self) -> dict[str, object]:
        out = self.state.status()
        out["interface"] = self.interface
        out["netns"] = self.netns
        out["adopted"] = self.adopted
        out["programs"] = self.program_stats()
        return out

    def program_stats(self) -> dict[str, dict[str, int]]:
        """Per tc hook: program id, runs and total run time (ns). Runs and time count only
        while the kernel's run-time statistics are on (``sysctl kernel.bpf_stats_enabled=1``
        or :func:`cport.ebpf._libbpf.enable_run_time_stats`)."""
        out = {}
        for point, fd in self._progs.items():
            ident, run_ns, runs = prog_stats(fd)
            out[point] = {"id": ident, "runs": runs, "run_time_ns": run_ns}
        return out

    def policy_entries(
        self, generation: int | None = None, *, identity: int | None = None
    ) -> list[PolicyMapEntry]:
        return self.state.policy_entries(generation, identity=identity)

    def ipcache_entries(self, generation: int | None = None) -> list[IpcacheEntry]:
        return self.state.ipcache_entries(generation)

    def grant_entries(self) -> list[GrantEntry]:
        return self.state.grant_entries()

    def conntrack_entries(self) -> int:
        return len(self.state["conntrack"])

    @_locked
    def flush_conntrack(self) -> int:
        """Forget every tracked flow (replies of existing connections are then decided as
        new flows); returns how many entries there were."""
        return self.state["conntrack"].clear()


def resolve_address(gen: Generation, addr: bytes) -> int:
    """The identity the programs resolve a 16-byte address to in `gen` (longest prefix)."""
    value = int.from_bytes(addr, "big")
    for plen in range(128, -1, -1):
        masked = (value >> (128 - plen) << (128 - plen)) if plen else 0
        hit = gen.ipcache.get(L.IPCACHE_KEY.pack(plen, masked.to_bytes(16, "big")))
        if hit is not None:
            return int(L.IPCACHE_VALUE.unpack(hit)[0])
    return 2  # reserved:world, as the programs do


def _is_workload(value: bytes | None) -> bool:
    return value is not None and bool(L.IPCACHE_VALUE.unpack_from(value)[1] & L.IP_WORKLOAD)


def _same(a: Generation, b: Generation) -> bool:
    if a.ipcache != b.ipcache or a.endpoints != b.endpoints:
        return False
    if a.policies.keys() != b.policies.keys():
        return False
    for pid, p in a.policies.items():
        q = b.policies[pid]
        if p.source is not None and p.source is q.source:
            continue
        if p.rows != q.rows:
            return False
    return True


def remove_pins(pin_root: Path) -> None:
    """Remove every map and program cport pins under `pin_root`, then the directory (if
    empty). Attached programs keep running until detached; pinned state is gone."""
    for name in (*MAPS, *PROGRAMS.values()):
        path = pin_root / name
        if path.exists():
            path.unlink()
    try:
        pin_root.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise EbpfError(f"cannot remove {pin_root}: {exc.strerror}", code="unpin-failed") from None


__all__ = ["BpfDatapath", "SyncStats", "ensure_bpffs", "remove_pins", "resolve_address"]
