"""The compiler: policies + inventory + identities → :class:`Table`.

Resolution happens in three steps, each cached so that changing one policy recompiles only
what it touches:

1. identities: every workload's label set gets a number; every CIDR prefix a policy names
   gets a CIDR identity (labels ``reserved:world`` and ``cidr:prefix=<p>``), as in Cilium;
2. selection: each rule's subject selector → the endpoint identities it governs, and each
   endpoint's (direction → rule set) signature; endpoints with equal signatures share one
   :class:`EndpointPolicy`;
3. distillation: each distinct signature's rule entries are expanded into rows, with cells
   interned.
"""

from __future__ import annotations

import gc
import ipaddress
import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cport.engine._selectors import SelectorCache
from cport.engine._table import (
    EndpointPolicy,
    Entry,
    PolicyInfo,
    PortMap,
    Table,
)
from cport.engine._types import LOCALHOST_REF, Cell, Decision, Reason, RuleRef, Verdict
from cport.errors import EngineError
from cport.identity import HOST_ID, WILDCARD_ID, IdentityAllocator, Label, Labels
from cport.model import (
    PROTO_NUMBERS,
    Direction,
    Inventory,
    Mode,
    Op,
    PeerRule,
    Policy,
    PolicyKey,
    Rule,
    Workload,
)

ALL_PROTOS = (6, 17, 132)
_SECTIONS = {
    Direction.INGRESS: ("ingress", "ingressDeny"),
    Direction.EGRESS: ("egress", "egressDeny"),
}
RuleId = tuple[PolicyKey, int]


@dataclass(frozen=True, slots=True)
class _State:
    """What an endpoint policy's selection implies when no entry matches."""

    dd_enforce: bool
    dd_audit: bool
    sel_enforce: bool


def _cell_for(refs: frozenset[RuleRef], st: _State) -> tuple[Verdict, Reason]:
    """Verdict algebra (docs/policy.md): deny beats allow; auth-required beats plain allow;
    audit-mode policies never change enforcement, they turn would-be denials into `audit`."""
    e_deny = a_deny = e_allow = a_allow = e_auth = a_auth = False
    for r in refs:
        enforce = r.mode is Mode.ENFORCE
        if r.deny:
            if enforce:
                e_deny = True
            else:
                a_deny = True
        elif enforce:
            e_allow = True
            e_auth = e_auth or r.auth
        else:
            a_allow = True
            a_auth = a_auth or r.auth
    if e_deny:
        verdict, reason = Verdict.DENIED, Reason.DENIED_BY_POLICY
    elif e_auth:
        verdict, reason = Verdict.AUTH_REQUIRED, Reason.AUTH_REQUIRED
    elif e_allow:
        verdict, reason = Verdict.ALLOWED, Reason.ALLOWED
    elif st.dd_enforce:
        verdict, reason = Verdict.DENIED, Reason.DEFAULT_DENY
    else:
        verdict = Verdict.ALLOWED
        reason = Reason.NO_DEFAULT_DENY if st.sel_enforce else Reason.NOT_SELECTED
    if verdict is Verdict.ALLOWED:
        # Evaluate again as if audit-mode policies were enforced.
        any_allow = e_allow or a_allow
        would_block = (
            a_deny or (any_allow and a_auth) or (not any_allow and (st.dd_enforce or st.dd_audit))
        )
        if would_block:
            verdict, reason = Verdict.AUDIT, Reason.AUDIT
    return verdict, reason


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Compiling allocates millions of long-lived objects; the cyclic collector would scan
    them again and again (about 30% of a large compile) and find nothing to free."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _info(pol: Policy, revision: int) -> PolicyInfo:
    return PolicyInfo(pol.key, revision, pol.mode.value, len(pol.rules))


def segment(items: list[tuple[int, int, RuleRef]]) -> list[tuple[int, int, frozenset[RuleRef]]]:
    """Split overlapping port intervals into disjoint segments with their active entries."""
    if len(items) == 1:
        lo, hi, ref = items[0]
        return [(lo, hi, frozenset((ref,)))]
    points = sorted({p for lo, hi, _ in items for p in (lo, hi + 1)})
    out: list[tuple[int, int, frozenset[RuleRef]]] = []
    for a, b in itertools.pairwise(points):
        active = frozenset(ref for lo, hi, ref in items if lo <= a and hi >= b - 1)
        if not active:
            continue
        if out and out[-1][2] == active and out[-1][1] == a - 1:
            out[-1] = (out[-1][0], b - 1, active)
        else:
            out.append((a, b - 1, active))
    return out


class Compiler:
    """Holds the caches behind a table so that later changes recompile only what they touch.

    >>> from cport.model import load
    >>> bundle = load(["examples/"])                                   # doctest: +SKIP
    >>> compiler = Compiler(bundle.inventory)                          # doctest: +SKIP
    >>> table = compiler.compile(bundle.policies)                      # doctest: +SKIP
    >>> table2 = compiler.update(upsert=[changed_policy])              # doctest: +SKIP
    """

    def __init__(
        self,
        inventory: Inventory,
        allocator: IdentityAllocator | None = None,
        *,
        allow_localhost: bool = True,
        extra_identities: Iterable[Labels] = (),
    ) -> None:
        self.inventory = inventory
        self.allocator = allocator or IdentityAllocator()
        self.allow_localhost = allow_localhost
        self.revision = 0
        self.cache = SelectorCache()
        self.policies: dict[PolicyKey, tuple[Policy, int]] = {}
        self._extra = list(extra_identities)
        self._endpoints: dict[int, list[Workload]] = {}
        self._named: dict[int, dict[str, set[tuple[int, int]]]] = {}
        self._all_named: dict[str, set[tuple[int, int]]] = {}
        self._addresses: dict[str, int] = {}
        self._workload_ids: dict[tuple[str, str], int] = {}
        self._cidrs: set[str] = set()
        self._ipcache: dict[int, dict[object, int]] = {}
        self._subjects: dict[RuleId, frozenset[int]] = {}
        self._ep_rules: dict[Direction, dict[int, tuple[RuleId, ...]]] = {
            Direction.INGRESS: {},
            Direction.EGRESS: {},
        }
        self._shared: dict[tuple[Direction, tuple[RuleId, ...], object], EndpointPolicy] = {}
        self._ingress: dict[int, EndpointPolicy] = {}
        self._egress: dict[int, EndpointPolicy] = {}
        self._cells: dict[tuple[object, ...], Cell] = {}
        self._ep_rids: dict[int, set[RuleId]] = {}
        self._shared_by_policy: dict[
            PolicyKey, set[tuple[Direction, tuple[RuleId, ...], object]]
        ] = {}
        self._infos: dict[PolicyKey, PolicyInfo] = {}
        self._identities_ready = False

    # -- public --------------------------------------------------------------------------
    def compile(self, policies: Iterable[Policy]) -> Table:
        """Compile `policies` from scratch (forgetting any earlier ones)."""
        with _gc_paused():
            self.revision += 1
            self.policies = {p.key: (p, self.revision) for p in policies}
            self._infos = {k: _info(p, rev) for k, (p, rev) in self.policies.items()}
            return self._rebuild()

    def _rebuild(self) -> Table:
        """Resolve everything again for the current policies, keeping their revisions."""
        self._shared.clear()
        self._shared_by_policy.clear()
        self._subjects.clear()
        self._ep_rids.clear()
        for d in self._ep_rules.values():
            d.clear()
        self._ingress, self._egress = {}, {}
        self._setup_identities()
        for key, (pol, _) in self.policies.items():
            for i, rule in enumerate(pol.rules):
                self._set_subject((key, i), self._select_subject(rule))
        self._reselect(set(self._endpoints))
        return self._snapshot()

    def update(self, *, upsert: Iterable[Policy] = (), remove: Iterable[PolicyKey] = ()) -> Table:
        """Apply policy changes and return the next table revision. Only endpoints whose rule
        sets change are re-distilled; other endpoint policies are reused as they are, and the
        work done is proportional to what the change touches."""
        if not self._identities_ready:
            raise EngineError("update() before compile()")
        with _gc_paused():
            return self._update(list(upsert), list(remove))

    def _update(self, upsert: list[Policy], remove: list[PolicyKey]) -> Table:
        self.revision += 1
        touched: set[int] = set()
        changed: set[PolicyKey] = set()
        new_cidrs = False
        for key in remove:
            if key in self.policies:
                changed.add(key)
                touched |= self._drop_policy(key)
        for pol in upsert:
            changed.add(pol.key)
            touched |= self._drop_policy(pol.key)
            self.policies[pol.key] = (pol, self.revision)
            self._infos[pol.key] = _info(pol, self.revision)
            if self._policy_cidrs(pol) - self._cidrs:
                new_cidrs = True
        if new_cidrs:
            # A new CIDR prefix adds identities every selector may match: start over.
            return self._rebuild()
        for key in changed:
            if key in self.policies:
                for i, rule in enumerate(self.policies[key][0].rules):
                    sel = self._select_subject(rule)
                    self._set_subject((key, i), sel)
                    touched |= sel
        # Endpoint policies built from a changed policy are stale: forget them.
        for key in changed:
            for skey in self._shared_by_policy.pop(key, set()):
                self._shared.pop(skey, None)
        self._reselect(touched)
        return self._snapshot()

    def add_identities(self, label_sets: Iterable[Labels]) -> tuple[Table, list[int]]:
        """Give peers that are not workloads (verified credentials seen at runtime) an
        identity and rows, and return the next table with their numbers. Only endpoint
        policies with an entry whose selectors match a new identity are re-distilled; peers
        no selector names fall through to the wildcard rows, so nothing else changes. Label
        sets that already have an identity cost nothing and produce no new revision."""
        if not self._identities_ready:
            raise EngineError("add_identities() before compile()")
        wanted = list(label_sets)
        numbers = self.allocator.allocate_many(wanted)
        fresh = [
            (num, labels)
            for num, labels in zip(numbers, wanted, strict=True)
            if num not in self.cache.labels
        ]
        if not fresh:
            return self._snapshot(), numbers
        with _gc_paused():
            self.revision += 1
            self._extra.extend(labels for _, labels in fresh)
            # Earlier snapshots share the label map; they may see the new entries, which
            # no row of theirs refers to.
            self.cache.add_identities(fresh)
            stale = {
                skey
                for skey, epp in self._shared.items()
                if any(
                    e.selectors is not None
                    and any(sel.matches(labels) for sel in e.selectors for _, labels in fresh)
                    for e in epp.entries
                )
            }
            touched: set[int] = set()
            for skey in stale:
                direction, sig, _ = skey
                del self._shared[skey]
                for ep, ep_sig in self._ep_rules[direction].items():
                    if ep_sig == sig:
                        touched.add(ep)
            self._reselect(touched)
            return self._snapshot(), numbers

    # -- identities ----------------------------------------------------------------------
    def _setup_identities(self) -> None:
        """Allocate every identity the table needs in one batch (one lock and write when the
        allocator persists), then index them for selection."""
        alloc = self.allocator
        # Fresh maps, not cleared ones: earlier table snapshots share the old ones read-only.
        self._endpoints = {}
        self._named = {}
        self._all_named = {}
        self._addresses = {}
        self._workload_ids = {}
        # Both /0 prefixes always get an identity, so every outside address resolves to one
        # of its own family (see cidr_match).
        self._cidrs = {"0.0.0.0/0", "::/0"}
        for pol, _ in self.policies.values():
            self._cidrs |= self._policy_cidrs(pol)
        cidr_labels = {
            prefix: Labels([Label("reserved", "world"), Label("cidr", "prefix", prefix)])
            for prefix in sorted(self._cidrs)
        }
        wl_labels = [self.inventory.identity_labels(w) for w in self.inventory]
        numbers = alloc.allocate_many([*wl_labels, *self._extra, *cidr_labels.values()])
        items: list[tuple[int, Labels]] = list(alloc)
        for w, labels, num in zip(self.inventory, wl_labels, numbers, strict=False):
            self._workload_ids[(w.namespace, w.name)] = num
            for addr in w.addresses:
                self._addresses[addr] = num
            if w.host_network:
                continue
            items.append((num, labels))
            self._endpoints.setdefault(num, []).append(w)
            named = self._named.setdefault(num, {})
            for cp in w.ports:
                if cp.name:
                    pair = (PROTO_NUMBERS[cp.protocol], cp.port)
                    named.setdefault(cp.name, set()).add(pair)
                    self._all_named.setdefault(cp.name, set()).add(pair)
        self._ipcache = {}
        for prefix, labels in cidr_labels.items():
            net = ipaddress.ip_network(prefix)
            num = alloc.allocate(labels)
            self._ipcache.setdefault(net.version * 1000 + net.prefixlen, {})[net] = num
        self.cache = SelectorCache()
        self.cache.add_identities(items)
        self._identities_ready = True

    @staticmethod
    def _policy_cidrs(pol: Policy) -> set[str]:
        out: set[str] = set()
        for rule in pol.rules:
            for section in (rule.ingress, rule.ingress_deny, rule.egress, rule.egress_deny):
                for pr in section:
                    for sel in pr.peers or ():
                        for req in sel.requirements:
                            if req.op is Op.CIDR:
                                out.update(req.values)
        return out

    # -- selection -----------------------------------------------------------------------
    def _select_subject(self, rule: Rule) -> frozenset[int]:
        return self.cache.select(rule.subject) & self._endpoints.keys()

    def _set_subject(self, rid: RuleId, eps: frozenset[int]) -> None:
        self._subjects[rid] = eps
        for ep in eps:
            self._ep_rids.setdefault(ep, set()).add(rid)

    def _drop_policy(self, key: PolicyKey) -> set[int]:
        touched: set[int] = set()
        old = self.policies.pop(key, None)
        self._infos.pop(key, None)
        if old is not None:
            for i in range(len(old[0].rules)):
                eps = self._subjects.pop((key, i), frozenset())
                for ep in eps:
                    self._ep_rids[ep].discard((key, i))
                touched |= eps
        return touched

    def _reselect(self, endpoints: set[int]) -> None:
        """Recompute the rule signature and endpoint policy of each endpoint in `endpoints`."""
        by_ep: dict[int, dict[Direction, list[RuleId]]] = {}
        for ep in endpoints:
            dirs: dict[Direction, list[RuleId]] = {Direction.INGRESS: [], Direction.EGRESS: []}
            by_ep[ep] = dirs
            for rid in self._ep_rids.get(ep, ()):
                rule = self.policies[rid[0]][0].rules[rid[1]]
                if rule.selects_ingress:
                    dirs[Direction.INGRESS].append(rid)
                if rule.selects_egress:
                    dirs[Direction.EGRESS].append(rid)
        for ep, dirs in by_ep.items():
            for direction, rids in dirs.items():
                target = self._ingress if direction is Direction.INGRESS else self._egress
                sig = tuple(sorted(rids, key=lambda r: (str(r[0]), r[1])))
                self._ep_rules[direction][ep] = sig
                if not sig:
                    target.pop(ep, None)
                    continue
                named_key: object = None
                if direction is Direction.INGRESS and self._uses_named_ports(sig, direction):
                    named_key = frozenset(
                        (n, frozenset(v)) for n, v in self._named.get(ep, {}).items()
                    )
                skey = (direction, sig, named_key)
                epp = self._shared.get(skey)
                if epp is None:
                    epp = self._shared[skey] = self._distill(direction, sig, ep)
                    for rid in sig:
                        self._shared_by_policy.setdefault(rid[0], set()).add(skey)
                target[ep] = epp

    def _uses_named_ports(self, sig: tuple[RuleId, ...], direction: Direction) -> bool:
        for key, idx in sig:
            rule = self.policies[key][0].rules[idx]
            for section in self._sections(rule, direction):
                for pr in section[1]:
                    if any(p.name for p in pr.ports or ()):
                        return True
        return False

    @staticmethod
    def _sections(rule: Rule, direction: Direction) -> tuple[tuple[str, tuple[PeerRule, ...]], ...]:
        allow, deny = _SECTIONS[direction]
        if direction is Direction.INGRESS:
            return ((allow, rule.ingress), (deny, rule.ingress_deny))
        return ((allow, rule.egress), (deny, rule.egress_deny))

    # -- distillation --------------------------------------------------------------------
    def _intern(self, refs: frozenset[RuleRef], st: _State, direction: Direction) -> Cell:
        key = (refs, st, direction)
        cell = self._cells.get(key)
        if cell is None:
            verdict, reason = _cell_for(refs, st)
            ordered = tuple(
                sorted(
                    refs, key=lambda r: (r.deny is False, str(r.policy), r.rule, r.section, r.entry)
                )
            )
            cell = Cell(verdict, reason, ordered)
            decision = Decision(
                cell.verdict,
                cell.reason,
                cell if direction is Direction.EGRESS else None,
                cell if direction is Direction.INGRESS else None,
            )
            object.__setattr__(cell, "decision", decision)
            self._cells[key] = cell
        return cell

    def _distill(self, direction: Direction, sig: tuple[RuleId, ...], ep: int) -> EndpointPolicy:
        selected_by: list[RuleRef] = []
        dd_enforce = dd_audit = sel_enforce = False
        entries: list[Entry] = []
        for key, idx in sig:
            pol, rev = self.policies[key]
            rule = pol.rules[idx]
            enforce = pol.mode is Mode.ENFORCE
            dd = (
                rule.default_deny_ingress
                if direction is Direction.INGRESS
                else (rule.default_deny_egress)
            )
            sel_enforce |= enforce
            dd_enforce |= enforce and dd
            dd_audit |= (not enforce) and dd
            selected_by.append(RuleRef(key, rev, pol.mode, idx, "selector", 0, rule.location))
            for section, prs in self._sections(rule, direction):
                for ei, pr in enumerate(prs):
                    ref = RuleRef(key, rev, pol.mode, idx, section, ei, pr.location, pr.auth)
                    entries.extend(self._entries(ref, pr, direction, ep))
        if direction is Direction.INGRESS and self.allow_localhost:
            entries.append(
                Entry(
                    LOCALHOST_REF,
                    None,
                    frozenset((HOST_ID,)),
                    tuple((p, 0, 65535) for p in ALL_PROTOS),
                )
            )
        st = _State(dd_enforce, dd_audit, sel_enforce)
        epp = EndpointPolicy(
            direction,
            tuple(selected_by),
            self._intern(frozenset(), st, direction),
            entries=tuple(entries),
        )
        self._fill(epp, entries, st, direction)
        return epp

    def _entries(self, ref: RuleRef, pr: PeerRule, direction: Direction, ep: int) -> list[Entry]:
        """A rule entry resolved for one endpoint policy. Named ports resolve on ingress
        against the endpoint's own ports; on egress against each destination's own ports, so
        peers that name a port differently get different rows (one entry per group)."""
        peers = None if pr.peers is None else self.cache.select_any(pr.peers)
        ports: list[tuple[int, int, int]] = []
        unresolved: list[str] = []
        # Egress named ports: destination peer → its resolved (proto, port, port) rows.
        per_peer: dict[int, list[tuple[int, int, int]]] = {}
        if pr.ports is None:
            ports = [(p, 0, 65535) for p in ALL_PROTOS]
        for rng in pr.ports or ():
            protos = ALL_PROTOS if rng.protocol == "ANY" else (PROTO_NUMBERS[rng.protocol],)
            if rng.name and direction is Direction.INGRESS:
                found = self._named.get(ep, {}).get(rng.name, set())
                hits = [(proto, port, port) for proto, port in sorted(found) if proto in protos]
                if not hits:
                    unresolved.append(rng.name)
                ports.extend(hits)
            elif rng.name:
                candidates = self._named if peers is None else peers
                resolved = False
                for peer in candidates:
                    found = self._named.get(peer, {}).get(rng.name, set())
                    hits = [(pr_, port, port) for pr_, port in sorted(found) if pr_ in protos]
                    if hits:
                        resolved = True
                        per_peer.setdefault(peer, []).extend(hits)
                if not resolved:
                    unresolved.append(rng.name)
            elif rng.port == 0:
                ports.extend((p, 0, 65535) for p in protos)
            else:
                ports.extend((p, rng.port, rng.end_port or rng.port) for p in protos)
        out = [Entry(ref, pr.peers, peers, tuple(ports), tuple(unresolved))]
        groups: dict[tuple[tuple[int, int, int], ...], set[int]] = {}
        for peer, hits in per_peer.items():
            groups.setdefault(tuple(sorted(set(hits))), set()).add(peer)
        out.extend(Entry(ref, pr.peers, frozenset(group), rows) for rows, group in groups.items())
        return out

    def _fill(
        self, epp: EndpointPolicy, entries: list[Entry], st: _State, direction: Direction
    ) -> None:
        """Write the rows. Peers matched by the same entries get the same segments, so peers
        are grouped by the tuple of entry indices that select them and each group is
        segmented once per protocol; then rows are written per peer."""
        wild: dict[int, list[tuple[int, int, RuleRef]]] = {}
        by_peer: dict[int, list[int]] = {}
        for i, e in enumerate(entries):
            if not e.ports:
                continue
            if e.peers is None:
                for proto, lo, hi in e.ports:
                    wild.setdefault(proto, []).append((lo, hi, e.ref))
                continue
            for peer in e.peers:
                hit = by_peer.get(peer)
                if hit is None:
                    by_peer[peer] = [i]
                else:
                    hit.append(i)
        groups: dict[tuple[int, ...], list[int]] = {}
        for peer, idxs in by_peer.items():
            groups.setdefault(tuple(idxs), []).append(peer)
        if WILDCARD_ID in by_peer:
            raise EngineError("identity 0 must never be allocated")
        exact = epp.exact
        ranges = epp.ranges

        def segments(
            items: list[tuple[int, int, RuleRef]],
        ) -> tuple[list[tuple[int, int, Cell]], PortMap | None]:
            segs = [(lo, hi, self._intern(refs, st, direction)) for lo, hi, refs in segment(items)]
            return segs, (PortMap(segs) if any(lo != hi for lo, hi, _ in segs) else None)

        def place(
            peers: list[int], proto: int, segs: list[tuple[int, int, Cell]], pmap: PortMap | None
        ) -> None:
            singles = [(lo, cell) for lo, hi, cell in segs if lo == hi]
            proto_bits = proto << 16
            for peer in peers:
                base = (peer << 24) | proto_bits
                for port, cell in singles:
                    exact[base | port] = cell
                if pmap is not None:
                    ranges[(peer << 8) | proto] = pmap

        for proto, items in wild.items():
            place([WILDCARD_ID], proto, *segments(items))
        epp.has_wildcard = bool(wild)
        for group, peers in groups.items():
            per_proto: dict[int, list[tuple[int, int, RuleRef]]] = {}
            for i in group:
                e = entries[i]
                for proto, lo, hi in e.ports:
                    per_proto.setdefault(proto, []).append((lo, hi, e.ref))
            for proto, items in per_proto.items():
                place(peers, proto, *segments(items + wild.get(proto, [])))

    # -- snapshot ------------------------------------------------------------------------
    def _snapshot(self) -> Table:
        return Table(
            revision=self.revision,
            ingress=dict(self._ingress),
            egress=dict(self._egress),
            # Shared read-only with the compiler: replaced, never mutated, on a rebuild.
            identities=self.cache.labels,
            endpoints=self._endpoints,
            policies=dict(self._infos),
            ipcache=self._ipcache,
            addresses=self._addresses,
            workload_ids=self._workload_ids,
        )


def compile_table(
    policies: Iterable[Policy],
    inventory: Inventory,
    identities: IdentityAllocator | None = None,
    *,
    allow_localhost: bool = True,
    extra_identities: Iterable[Labels] = (),
) -> Table:
    """Compile `policies` against `inventory` into a :class:`Table`.

    `identities` allocates numeric identities (in memory unless given one with a state
    directory). `extra_identities` adds peers that are not workloads (users from tokens,
    hypothetical label sets) so they get rows too.
    """
    compiler = Compiler(
        inventory, identities, allow_localhost=allow_localhost, extra_identities=extra_identities
    )
    return compiler.compile(policies)


__all__ = ["Compiler", "compile_table"]
