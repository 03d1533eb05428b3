"""Per-decision latency of ``cport.engine.decide`` against a dict floor, cedarpy and casbin.

What it measures
----------------
One generated RBAC-like policy set: N users (OIDC identities with ``oidc:iss``, ``oidc:sub``
and ``oidc:groups`` labels) in 10 groups - a fifth of them in two groups, a few in none, and
one in 33 from a second issuer whose group names collide with the first's (they must never
match) - 20 workloads in 4 namespaces, 6 TCP ports. For every (workload, group) pair a few
ports are allowed, or none; group ``g0`` is allowed the port *range* 8000-9999 on every
workload. Every workload is selected by one PortPolicy-equivalent model
:class:`~cport.model.Policy`: ingress default-deny and one entry per granted group whose peer
is the selector the PortPolicy importer builds for ``users: {issuer: corp, claims: {groups:
[g]}}``.

The flow list is every (user, workload, port) triple over the 6 ports, shuffled: 36,000 flows
for 300 users in ``--quick`` mode, 72,000 for 600 users in full mode, about a fifth allowed. The
same list is decided by:

1. **cport** - ``decide(table, flow)`` on prebuilt :class:`~cport.engine.Flow` objects; the
   table is compiled once beforehand (compile time is ``bench_compile.py``'s business).
2. **floor** - a bare ``dict.get``: ``verdicts[(src, dst, proto, port)] = bool`` is precomputed
   and the timed function is ``floor(flow)``, returning
   ``verdicts.get((flow.src, flow.dst, flow.proto, flow.port))``. It deliberately has the same
   per-call shape as cport - one Python function call, four attribute reads from the same
   Flow object, building the key, one hash probe - so cport/floor is the cost of cport's
   lookup algorithm over the cheapest possible Python lookup, not the cost of Python itself.
3. **cedarpy** - ``cedarpy.is_authorized_batch(requests, policies, entities)``, one call per
   run for the whole list (its fastest mode), both with the policies and the entity graph
   pre-parsed into ``PolicySet`` / ``Entities`` handles and with plain text; the faster of
   the two is the reported figure. Cedar model: ``User`` entities whose parents are
   ``Group::"<issuer>/<group>"``; ``Port::"<ns>/<workload>:<port>"`` entities with a ``port``
   attribute and parent ``Workload::"<ns>/<workload>"``; one ``permit(principal in Group,
   action == Action::"connect", resource in Workload) when {<port condition>};`` per grant.
   For information, a data-driven variant is timed as well: a single policy
   ``permit(principal, action, resource is Port) when { principal in resource.allowed }``
   with the granted groups stored on each Port entity (Cedar evaluates every policy on every
   request, so this is the cheapest Cedar formulation; it is not the headline figure because
   its rules live in entity data, not in policies).
4. **casbin** - ``casbin.Enforcer`` (model from text, policy lines through a
   ``StringAdapter``), RBAC with role inheritance ``g(user, group)``;
   ``e.enforce(user, "<ns>/<workload>:<port>", "connect")`` per decision. The matcher tests
   the object first (cheapest predicate first); the port range is expanded to the concrete
   ports workloads listen on. casbin scans every policy line per request, so it decides a
   seeded random subset of the flows (the same subset is checked for agreement).
   ``casbin.FastEnforcer`` with a policy cache keyed on the object is timed for information.

In ``--quick`` mode cedarpy also decides a subset (12,000 flows) to stay under a minute.

Correctness: every verdict of cport, cedarpy (all variants) and casbin (both enforcers) is
compared with the generator's own ground truth - the floor's table, computed straight from
the grants; any disagreement exits with status 1.

Timing: ``time.perf_counter_ns``, best of several runs over the list, ``gc.disable()`` around
each run (after ``gc.freeze()`` of the setup objects). Figures are per decision and include
the Python ``for`` loop that drives the calls (the same loop for cport and the floor; its
cost alone is printed) - cedarpy's one batch call has no such loop.

The last line printed is one JSON object: ``{"bench": "decide", "floor_ratio": cport/floor,
"vs_cedarpy": cedarpy/cport, "vs_casbin": casbin/cport, ...}`` (times in microseconds per
decision under ``*_us``). Targets: cport <= 3x floor; >= 100x faster than both peers.

Usage: ``python bench/bench_decide.py [--quick] [--strict]`` (``--strict``: exit 1 when a
target is missed; by default targets are only reported).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cport.engine import Compiler, Flow, Table, decide
from cport.errors import Location
from cport.identity import Label, Labels
from cport.identity._labels import NAMESPACE_KEY
from cport.model import (
    ContainerPort,
    Inventory,
    Mode,
    Op,
    PeerRule,
    Policy,
    PolicyKey,
    PortRange,
    Requirement,
    Rule,
    Selector,
    Workload,
)
from cport.model._selector import eq

TCP = 6
PORTS = (22, 5432, 6379, 8080, 8443, 9090)
RANGE = (8000, 9999)  # group g0 is granted this range on every workload
ISSUER = "corp"
OTHER_ISSUER = "partner"  # its users claim the same group names: they must never match
N_GROUPS = 10
N_NAMESPACES = 4
N_WORKLOADS = 20
LOC = Location("bench")
TARGET_FLOOR = 3.0
TARGET_PEER = 100.0


# -- scenario ------------------------------------------------------------------------------
@dataclass(frozen=True)
class User:
    name: str
    issuer: str
    groups: tuple[str, ...]

    @property
    def ref(self) -> str:
        return f"{self.issuer}/{self.name}"

    def labels(self) -> Labels:
        items = [Label("oidc", "iss", self.issuer), Label("oidc", "sub", self.name)]
        items.extend(Label("oidc", "groups", g) for g in self.groups)
        return Labels(items)


@dataclass(frozen=True)
class Target:
    namespace: str
    name: str

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Grant:
    """Members of `group` (of ISSUER) may connect to `target` on `ports` (RANGE if `ranged`)."""

    group: str
    target: Target
    ports: tuple[int, ...]
    ranged: bool = False

    def allows(self, port: int) -> bool:
        if self.ranged:
            return RANGE[0] <= port <= RANGE[1]
        return port in self.ports


@dataclass
class Scenario:
    users: list[User]
    targets: list[Target]
    grants: list[Grant]

    def allowed(self, user: User, target: Target, port: int) -> bool:
        """Ground truth, straight from the grants."""
        if user.issuer != ISSUER:
            return False
        return any(
            g.target == target and g.group in user.groups and g.allows(port) for g in self.grants
        )


def make_scenario(n_users: int, seed: int) -> Scenario:
    rng = random.Random(seed)
    groups = [f"g{i}" for i in range(N_GROUPS)]
    users: list[User] = []
    for i in range(n_users):
        issuer = OTHER_ISSUER if i % 33 == 7 else ISSUER
        roll = rng.random()
        if roll < 0.02:
            member: tuple[str, ...] = ()
        elif roll < 0.22:
            member = tuple(sorted(rng.sample(groups, 2)))
        else:
            member = (rng.choice(groups),)
        users.append(User(f"u{i}", issuer, member))
    targets = [Target(f"ns{i % N_NAMESPACES}", f"w{i}") for i in range(N_WORKLOADS)]
    grants: list[Grant] = []
    for t in targets:
        grants.append(Grant(groups[0], t, (), ranged=True))
        for g in groups[1:]:
            if rng.random() < 0.4:
                grants.append(Grant(g, t, tuple(sorted(rng.sample(PORTS, rng.randint(1, 3))))))
    return Scenario(users, targets, grants)


# -- cport ---------------------------------------------------------------------------------
def users_selector(group: str) -> Selector:
    """What the PortPolicy importer builds for ``users: {issuer: corp, claims: {groups: [g]}}``."""
    return Selector.of(
        Requirement("agent", "actor", Op.DOES_NOT_EXIST),
        eq("oidc", "iss", ISSUER),
        Requirement("oidc", "groups", Op.IN, (group,)),
    )


def cport_policies(sc: Scenario) -> list[Policy]:
    out: list[Policy] = []
    for t in sc.targets:
        entries: list[PeerRule] = []
        for g in sc.grants:
            if g.target != t:
                continue
            ports: tuple[PortRange, ...]
            if g.ranged:
                ports = (PortRange(protocol="TCP", port=RANGE[0], end_port=RANGE[1]),)
            else:
                ports = tuple(PortRange(protocol="TCP", port=p, end_port=p) for p in g.ports)
            entries.append(PeerRule(peers=(users_selector(g.group),), ports=ports, location=LOC))
        rule = Rule(
            subject=Selector.of(eq("k8s", "app", t.name), eq("k8s", NAMESPACE_KEY, t.namespace)),
            location=LOC,
            ingress=tuple(entries),
            selects_ingress=True,
        )
        key = PolicyKey("PortPolicy", t.namespace, f"{t.name}-access")
        out.append(Policy(key, Mode.ENFORCE, (rule,), LOC))
    return out


def cport_inventory(sc: Scenario) -> Inventory:
    inv = Inventory(namespaces={}, cluster="default")
    for t in sc.targets:
        inv.add(
            Workload(
                namespace=t.namespace,
                name=t.name,
                labels=(("app", t.name),),
                service_account="default",
                addresses=(),
                ports=tuple(ContainerPort(p, "TCP", "") for p in PORTS),
                location=LOC,
            )
        )
    return inv


# -- cedar ---------------------------------------------------------------------------------
def _group_entities(sc: Scenario) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for gid in sorted({f"{u.issuer}/{g}" for u in sc.users for g in u.groups}):
        out.append({"uid": {"type": "Group", "id": gid}, "attrs": {}, "parents": []})
    for u in sc.users:
        parents = [{"type": "Group", "id": f"{u.issuer}/{g}"} for g in u.groups]
        out.append({"uid": {"type": "User", "id": u.ref}, "attrs": {}, "parents": parents})
    return out


def cedar_inputs(sc: Scenario) -> tuple[str, list[dict[str, Any]]]:
    """One Cedar policy per grant; Port entities are children of their Workload."""
    policies: list[str] = []
    for g in sc.grants:
        if g.ranged:
            cond = f"resource.port >= {RANGE[0]} && resource.port <= {RANGE[1]}"
        elif len(g.ports) == 1:
            cond = f"resource.port == {g.ports[0]}"
        else:
            cond = f"[{', '.join(map(str, g.ports))}].contains(resource.port)"
        policies.append(
            f'permit(principal in Group::"{ISSUER}/{g.group}", action == Action::"connect", '
            f'resource in Workload::"{g.target.ref}") when {{ {cond} }};'
        )
    entities = _group_entities(sc)
    for t in sc.targets:
        entities.append({"uid": {"type": "Workload", "id": t.ref}, "attrs": {}, "parents": []})
        for p in PORTS:
            entities.append(
                {
                    "uid": {"type": "Port", "id": f"{t.ref}:{p}"},
                    "attrs": {"port": p},
                    "parents": [{"type": "Workload", "id": t.ref}],
                }
            )
    return "\n".join(policies), entities


def cedar_data_inputs(sc: Scenario) -> tuple[str, list[dict[str, Any]]]:
    """The data-driven variant: one policy, the granted groups stored on each Port entity."""
    policy = (
        'permit(principal, action == Action::"connect", resource is Port) '
        "when { principal in resource.allowed };"
    )
    entities = _group_entities(sc)
    for t in sc.targets:
        for p in PORTS:
            groups = sorted({g.group for g in sc.grants if g.target == t and g.allows(p)})
            allowed = [{"__entity": {"type": "Group", "id": f"{ISSUER}/{g}"}} for g in groups]
            entities.append(
                {
                    "uid": {"type": "Port", "id": f"{t.ref}:{p}"},
                    "attrs": {"port": p, "allowed": allowed},
                    "parents": [],
                }
            )
    return policy, entities


def cedar_request(user: User, target: Target, port: int) -> dict[str, Any]:
    return {
        "principal": {"type": "User", "id": user.ref},
        "action": {"type": "Action", "id": "connect"},
        "resource": {"type": "Port", "id": f"{target.ref}:{port}"},
    }


# -- casbin --------------------------------------------------------------------------------
CASBIN_MODEL = """
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.obj == p.obj && r.act == p.act && g(r.sub, p.sub)
"""


def casbin_lines(sc: Scenario) -> str:
    lines: list[str] = []
    for g in sc.grants:
        ports = [p for p in PORTS if g.allows(p)]
        lines.extend(f"p, {ISSUER}/{g.group}, {g.target.ref}:{p}, connect" for p in ports)
    for u in sc.users:
        lines.extend(f"g, {u.ref}, {u.issuer}/{grp}" for grp in u.groups)
    return "\n".join(lines)


def casbin_enforcers(sc: Scenario) -> tuple[Any, Any]:
    """A plain ``casbin.Enforcer`` and a ``FastEnforcer`` whose policy is indexed by object."""
    import casbin  # type: ignore[import-untyped]
    from casbin.model import FastModel  # type: ignore[import-untyped]
    from casbin.persist.adapters.string_adapter import (  # type: ignore[import-untyped]
        StringAdapter,
    )

    text = casbin_lines(sc)
    plain = casbin.Enforcer(casbin.Enforcer.new_model(text=CASBIN_MODEL), StringAdapter(text))
    fast_model = FastModel([1])  # policy lines indexed by p[1]; the request's r[1] picks them
    fast_model.load_model_from_text(CASBIN_MODEL)
    fast = casbin.FastEnforcer(fast_model, StringAdapter(text), cache_key_order=[1])
    return plain, fast


# -- timing --------------------------------------------------------------------------------
def best_ns(runs: Mapping[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Best wall time (ns) of each of `runs` over `repeat` rounds, the collector off while
    timing. Rounds interleave the runs, so drifting machine load hits them alike."""
    times: dict[str, list[int]] = {name: [] for name in runs}
    gc.collect()
    for _ in range(repeat):
        for name, run in runs.items():
            gc.disable()
            try:
                t0 = time.perf_counter_ns()
                run()
                times[name].append(time.perf_counter_ns() - t0)
            finally:
                gc.enable()
    return {name: float(min(ts)) for name, ts in times.items()}


def make_floor(verdicts: dict[tuple[int, int, int, int], bool]) -> Callable[[Flow], object]:
    get = verdicts.get

    def floor(flow: Flow) -> bool | None:
        return get((flow.src, flow.dst, flow.proto, flow.port))

    return floor


def fail(msg: str) -> None:
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(name: str, got: Sequence[bool], want: Sequence[bool], labels: Sequence[str]) -> None:
    bad = [i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
    if bad:
        examples = "; ".join(f"{labels[i]}: {name}={got[i]}, expected {want[i]}" for i in bad[:5])
        fail(f"{name} disagrees on {len(bad)} of {len(want)} flows, e.g. {examples}")


@dataclass
class Result:
    name: str
    ns: float  # per decision
    flows: int
    target: str = ""


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Per-decision latency: cport vs floor and peers.")
    ap.add_argument("--quick", action="store_true", help="smaller runs, under a minute")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--seed", type=int, default=20240601)
    args = ap.parse_args(argv)

    n_users = 300 if args.quick else 600
    repeat = 7 if args.quick else 9
    peer_repeat = 3 if args.quick else 5
    n_cedar = 12_000 if args.quick else None  # None: every flow
    n_casbin = 600 if args.quick else 3000

    # -- inputs --
    sc = make_scenario(n_users, args.seed)
    compiler = Compiler(cport_inventory(sc), extra_identities=[u.labels() for u in sc.users])
    table: Table = compiler.compile(cport_policies(sc))
    ids = {lab: num for num, lab in table.identities.items()}
    user_id = {u.ref: ids[u.labels()] for u in sc.users}
    target_id = {t.ref: table.workload_ids[(t.namespace, t.name)] for t in sc.targets}

    triples = [(u, t, p) for u in sc.users for t in sc.targets for p in PORTS]
    random.Random(args.seed + 1).shuffle(triples)
    flows = [Flow(user_id[u.ref], target_id[t.ref], TCP, p) for u, t, p in triples]
    truth = [sc.allowed(u, t, p) for u, t, p in triples]
    names = [f"{u.ref} -> {t.ref}:{p}" for u, t, p in triples]
    verdicts = {(f.src, f.dst, f.proto, f.port): ok for f, ok in zip(flows, truth, strict=True)}
    if len(verdicts) != len(flows):
        fail("flow keys are not unique")
    n = len(flows)
    n_allowed = sum(truth)

    def subset(k: int | None, salt: int) -> list[int]:
        if k is None or k >= n:
            return list(range(n))
        return sorted(random.Random(args.seed + salt).sample(range(n), k))

    cedar_idx = subset(n_cedar, 2)
    casbin_idx = subset(n_casbin, 3)
    print(
        f"bench_decide ({'quick' if args.quick else 'full'}): {len(sc.users)} users, "
        f"{N_GROUPS} groups, {len(sc.targets)} workloads, {len(PORTS)} ports, "
        f"{len(sc.grants)} grants, {table.rows} table rows; "
        f"{n} flows ({n_allowed} allowed, {n - n_allowed} denied); "
        f"python {platform.python_version()}"
    )

    # -- agreement (also the warm-up) --
    check("cport", [decide(table, f).allowed for f in flows], truth, names)
    floor = make_floor(verdicts)
    check("floor", [bool(floor(f)) for f in flows], truth, names)

    import cedarpy

    c_truth = [truth[i] for i in cedar_idx]
    c_names = [names[i] for i in cedar_idx]
    requests = [cedar_request(*triples[i]) for i in cedar_idx]
    cedar_text, cedar_entities = cedar_inputs(sc)
    cedar_json = json.dumps(cedar_entities)
    cedar_ps = cedarpy.PolicySet.from_str(cedar_text)
    cedar_es = cedarpy.Entities.from_json_str(cedar_json)
    data_text, data_entities = cedar_data_inputs(sc)
    data_ps = cedarpy.PolicySet.from_str(data_text)
    data_es = cedarpy.Entities.from_json_str(json.dumps(data_entities))
    cedar_runs: dict[str, Callable[[], list[Any]]] = {
        "handles": lambda: cedarpy.is_authorized_batch(requests, cedar_ps, cedar_es),
        "text": lambda: cedarpy.is_authorized_batch(requests, cedar_text, cedar_json),
        "data": lambda: cedarpy.is_authorized_batch(requests, data_ps, data_es),
    }
    for variant, run in cedar_runs.items():
        results = run()
        errors = [r.diagnostics.errors for r in results if r.diagnostics.errors]
        if errors:
            fail(f"cedarpy ({variant}) reported evaluation errors, e.g. {errors[0]}")
        check(f"cedarpy ({variant})", [r.allowed for r in results], c_truth, c_names)

    plain, fast = casbin_enforcers(sc)
    k_truth = [truth[i] for i in casbin_idx]
    k_names = [names[i] for i in casbin_idx]
    k_args = [(triples[i][0].ref, f"{triples[i][1].ref}:{triples[i][2]}") for i in casbin_idx]
    enforce = plain.enforce
    enforce_fast = fast.enforce
    check("casbin", [enforce(s, o, "connect") for s, o in k_args], k_truth, k_names)
    check("casbin (fast)", [enforce_fast(s, o, "connect") for s, o in k_args], k_truth, k_names)
    print(
        f"agreement: cport on {n} flows, cedarpy on {len(cedar_idx)}, casbin on "
        f"{len(casbin_idx)}: every verdict matches the ground truth"
    )

    # -- timing --
    def run_empty() -> None:
        for _f in flows:
            pass

    def run_floor() -> None:
        fn = floor
        for f in flows:
            fn(f)

    def run_cport() -> None:
        d = decide
        t = table
        for f in flows:
            d(t, f)

    def run_casbin() -> None:
        for s, o in k_args:
            enforce(s, o, "connect")

    def run_casbin_fast() -> None:
        for s, o in k_args:
            enforce_fast(s, o, "connect")

    gc.collect()
    gc.freeze()  # setup objects out of the collector's way
    local = best_ns({"loop": run_empty, "floor": run_floor, "cport": run_cport}, repeat)
    loop_ns, floor_ns, cport_ns = (local[k] / n for k in ("loop", "floor", "cport"))
    cedar_ns = {k: v / len(cedar_idx) for k, v in best_ns(cedar_runs, peer_repeat).items()}
    peers = best_ns({"plain": run_casbin, "fast": run_casbin_fast}, peer_repeat)
    casbin_ns, casbin_fast_ns = peers["plain"] / len(casbin_idx), peers["fast"] / len(casbin_idx)

    best_cedar = min(("handles", "text"), key=lambda k: cedar_ns[k])
    floor_ratio = cport_ns / floor_ns
    vs_cedar = cedar_ns[best_cedar] / cport_ns
    vs_casbin = casbin_ns / cport_ns
    met_floor = floor_ratio <= TARGET_FLOOR
    met_cedar = vs_cedar >= TARGET_PEER
    met_casbin = vs_casbin >= TARGET_PEER

    def mark(ok: bool) -> str:
        return "met" if ok else "MISSED"

    results_table = [
        Result("floor: dict.get", floor_ns, n),
        Result("cport: decide", cport_ns, n, f"<= {TARGET_FLOOR:g}x floor: {mark(met_floor)}"),
    ]
    for variant, label in (("handles", "pre-parsed"), ("text", "text")):
        target = f">= {TARGET_PEER:g}x cport: {mark(met_cedar)}" if variant == best_cedar else ""
        results_table.append(
            Result(f"cedarpy: batch, {label}", cedar_ns[variant], len(cedar_idx), target)
        )
    results_table += [
        Result("cedarpy: 1 policy (info)", cedar_ns["data"], len(cedar_idx), "(grants as data)"),
        Result(
            "casbin: Enforcer",
            casbin_ns,
            len(casbin_idx),
            f">= {TARGET_PEER:g}x cport: {mark(met_casbin)}",
        ),
        Result("casbin: FastEnforcer", casbin_fast_ns, len(casbin_idx), "(info)"),
    ]
    print()
    print(f"{'engine':<28} {'us/decision':>12} {'x floor':>10} {'x cport':>9} {'flows':>7}  target")
    for r in results_table:
        print(
            f"{r.name:<28} {r.ns / 1000:>12.3f} {r.ns / floor_ns:>10.1f} "
            f"{r.ns / cport_ns:>9.1f} {r.flows:>7}  {r.target}"
        )
    print(f"(the bare `for` loop over the flows costs {loop_ns / 1000:.3f} us per item)")
    targets_met = met_floor and met_cedar and met_casbin
    if args.strict and not targets_met:
        print("FAIL: a target was missed (--strict)", file=sys.stderr)
    out = {
        "bench": "decide",
        "floor_ratio": round(floor_ratio, 3),
        "vs_cedarpy": round(vs_cedar, 1),
        "vs_casbin": round(vs_casbin, 1),
        "cport_us": round(cport_ns / 1000, 4),
        "floor_us": round(floor_ns / 1000, 4),
        "loop_us": round(loop_ns / 1000, 4),
        "cedarpy_us": round(cedar_ns[best_cedar] / 1000, 3),
        "cedarpy_mode": best_cedar,
        "cedarpy_handles_us": round(cedar_ns["handles"] / 1000, 3),
        "cedarpy_text_us": round(cedar_ns["text"] / 1000, 3),
        "cedarpy_1policy_us": round(cedar_ns["data"] / 1000, 3),
        "vs_cedarpy_1policy": round(cedar_ns["data"] / cport_ns, 1),
        "casbin_us": round(casbin_ns / 1000, 2),
        "casbin_fast_us": round(casbin_fast_ns / 1000, 2),
        "vs_casbin_fast": round(casbin_fast_ns / cport_ns, 1),
        "flows": n,
        "allowed": n_allowed,
        "cedarpy_flows": len(cedar_idx),
        "casbin_flows": len(casbin_idx),
        "rows": table.rows,
        "targets_met": targets_met,
        "quick": args.quick,
    }
    print(json.dumps(out))
    return 1 if args.strict and not targets_met else 0


if __name__ == "__main__":
    sys.exit(main())
