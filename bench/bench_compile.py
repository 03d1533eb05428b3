"""Compile cost of the cport engine: full compile time, memory, rows, and incremental updates.

What it measures
----------------
For each scenario (``policies x identities``): a generated cluster and policy set, then

* **full compile** - wall time of ``Compiler(inventory, IdentityAllocator(),
  extra_identities=users)`` plus ``.compile(policies)`` (identity allocation, selector
  resolution, distillation, the snapshot: everything between "inputs built" and "table
  ready"), collector on, as a user runs it; best of 5 / 3 / 1 runs for small / mid / large;
* **memory** - each scenario runs in a fresh subprocess. ``peak`` is ``ru_maxrss`` after the
  compile minus ``ru_maxrss`` after building the inputs (the compile's high-water mark over
  the baseline); ``retained`` is the current RSS (``/proc/self/statm``) with the table and its
  compiler alive minus the current RSS before compiling - what keeping a compiled table costs,
  including the compiler's caches that ``update`` needs;
* **rows** - ``table.rows`` (rows of shared endpoint policies counted once) and
  ``table.rows_expanded()`` (per endpoint, what a per-endpoint BPF map would hold);
* **bytes per row** - ``retained / rows``; also ``deep``: the bytes of the row structures
  alone (``exact`` dicts with their int keys, ``ranges`` dicts, PortMaps, interned cells,
  each object counted once, via ``sys.getsizeof``) per row;
* **incremental update** - K different policies are changed one at a time, each through
  ``Compiler.update(upsert=[p2])`` on the live compiler (same key, changed content: one more
  port on an ingress entry, one more peer selector, a new ingressDeny entry, or one more
  egress port, in rotation); the mean wall time of one update versus the full compile is the
  incremental speedup. Also counted: endpoint policies re-distilled per update (new objects
  in the table after the update), which shows the update touched only what it should;
* **collector cost** - the verification compile below runs with ``gc.disable()``; its time
  next to the full compile's (collector on, as a user runs it) shows the garbage
  collector's share (the two policy sets differ only in the K changed policies);
* **correctness of the incremental path** - after the K updates, the changed policy set is
  compiled from scratch (same identity allocator, so the same identity numbers) and both
  tables decide the same sample of flows: flows aimed at every changed policy (its subject's
  endpoints x its peers, old and new ports) plus random flows between any identities. Verdict,
  reason and the contributing rule entries (ignoring revision numbers) must be identical, as
  must the row counts; otherwise the script exits with status 1.

The generated input: workloads over 50 namespaces (namespace labels ``team`` and ``env``),
each with ``app``/``tier``/``team``/``version`` labels, a service account per app and named
container ports, plus a ``kube-system/kube-dns``; 80% of the identities are workloads, 20%
users (OIDC ``iss``/``sub``/``groups``, 1-3 groups each, about 25 members per group). Policies
are PortPolicy-equivalent model objects built as the importer builds them: a subject (an app,
or 1 in 10 a whole tier, in one namespace), 1-3 ingress allow entries each selecting a
modest peer set (an app in the same or another namespace, an app across a team's
namespaces, a tier across a team's namespaces, a service account, an OIDC group, rarely
every peer), 1-3 ports each (numbers, some ranges, some named ports, some UDP), ingressDeny
entries on 1 in 10 policies and egress (to apps, to kube-dns, to CIDRs) on 1 in 4.

Scenarios: ``small`` 1,000 policies x 3,000 identities, ``mid`` 3,000 x 12,000 and ``large``
10,000 x 50,000. ``--quick`` runs small and mid (under a minute); the default runs all three;
``--scenarios`` picks. ``--child NAME`` runs one scenario in this process (for profiling:
``python -m cProfile -s cumtime bench/bench_compile.py --child small``).

The last line printed is one JSON object: ``{"bench": "compile", "full_s": <full compile
seconds of the largest scenario run>, "incremental_speedup": <full / mean update>,
"bytes_per_row": <retained bytes per row>, ...}`` plus one key per scenario with all its
figures. Progress lines go to stderr. Target: incremental >= 50x faster than full.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cport.engine import Cell, Compiler, Decision, Flow, Table, decide
from cport.engine._table import PortMap
from cport.errors import Location
from cport.identity import IdentityAllocator, Label, Labels
from cport.identity._labels import NAMESPACE_KEY, NAMESPACE_LABELS_PREFIX, SERVICEACCOUNT_KEY
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
from cport.model._selector import cidr_requirement, eq

LOC = Location("bench")
N_NAMESPACES = 50
TEAMS = 10
ENVS = ("prod", "staging", "dev")
TIERS = ("web", "api", "db", "cache", "worker")
TIER_PORTS: dict[str, tuple[ContainerPort, ...]] = {
    "web": (ContainerPort(8443, "TCP", "https"),),
    "api": (ContainerPort(7000, "TCP", "grpc"),),
    "db": (ContainerPort(5432, "TCP", "pg"),),
    "cache": (ContainerPort(6379, "TCP", "redis"),),
    "worker": (ContainerPort(7070, "UDP", "jobs"),),
}
COMMON_PORTS = (ContainerPort(8080, "TCP", "http"), ContainerPort(9090, "TCP", "metrics"))
VERSIONS = 4
ISSUER = "corp"
CIDRS = tuple(f"10.{i}.0.0/16" for i in range(20))
TARGET_SPEEDUP = 50.0


@dataclass(frozen=True)
class Scenario:
    name: str
    policies: int
    identities: int
    updates: int
    compile_runs: int  # full compiles timed (best taken)
    timeout_s: int


SCENARIOS = {
    "small": Scenario("small", 1_000, 3_000, 10, 5, 300),
    "mid": Scenario("mid", 3_000, 12_000, 10, 3, 600),
    "large": Scenario("large", 10_000, 50_000, 10, 1, 3_600),
}


# -- inputs --------------------------------------------------------------------------------
@dataclass
class App:
    namespace: str
    name: str
    tier: str
    team: str

    @property
    def ports(self) -> tuple[ContainerPort, ...]:
        return COMMON_PORTS + TIER_PORTS[self.tier]


@dataclass
class Inputs:
    inventory: Inventory
    users: list[Labels]
    groups: list[str]
    apps: list[App]
    apps_by_ns: dict[str, list[App]]
    ns_team: dict[str, str]
    policies: list[Policy]


def ns_name(i: int) -> str:
    return f"ns-{i:02d}"


def build_inputs(sc: Scenario, seed: int) -> Inputs:
    rng = random.Random(seed)
    n_users = sc.identities // 5
    n_workload_ids = sc.identities - n_users - 1  # kube-dns is one more
    per_ns = n_workload_ids // N_NAMESPACES
    namespaces: dict[str, dict[str, str]] = {}
    ns_team: dict[str, str] = {}
    for i in range(N_NAMESPACES):
        team = f"team-{i % TEAMS}"
        namespaces[ns_name(i)] = {"team": team, "env": ENVS[i % len(ENVS)]}
        ns_team[ns_name(i)] = team
    namespaces["kube-system"] = {"team": "platform", "env": "prod"}
    inv = Inventory(namespaces=namespaces, cluster="default")
    apps: list[App] = []
    apps_by_ns: dict[str, list[App]] = {}
    for i in range(N_NAMESPACES):
        ns = ns_name(i)
        n_apps = max(1, -(-per_ns // VERSIONS))
        for j in range(n_apps):
            app = App(ns, f"app-{j}", TIERS[j % len(TIERS)], ns_team[ns])
            apps.append(app)
            apps_by_ns.setdefault(ns, []).append(app)
            for v in range(VERSIONS):
                inv.add(
                    Workload(
                        namespace=ns,
                        name=f"{app.name}-v{v}",
                        labels=(
                            ("app", app.name),
                            ("team", app.team),
                            ("tier", app.tier),
                            ("version", f"v{v}"),
                        ),
                        service_account=app.name,
                        addresses=(),
                        ports=app.ports,
                        location=LOC,
                    )
                )
    inv.add(
        Workload(
            namespace="kube-system",
            name="kube-dns",
            labels=(("k8s-app", "kube-dns"),),
            service_account="coredns",
            addresses=(),
            ports=(ContainerPort(53, "UDP", "dns"), ContainerPort(53, "TCP", "dns-tcp")),
            location=LOC,
        )
    )
    n_groups = max(10, n_users // 25)
    groups = [f"grp-{i}" for i in range(n_groups)]
    users = []
    for i in range(n_users):
        member = rng.sample(groups, rng.choice((1, 1, 2, 3)))
        items = [Label("oidc", "iss", ISSUER), Label("oidc", "sub", f"user-{i}")]
        items += [Label("oidc", "groups", g) for g in member]
        users.append(Labels(items))
    inputs = Inputs(inv, users, groups, apps, apps_by_ns, ns_team, [])
    inputs.policies = [make_policy(inputs, i, rng) for i in range(sc.policies)]
    return inputs


def app_selector(ns: str, app: str) -> Selector:
    return Selector.of(eq("k8s", "app", app), eq("k8s", NAMESPACE_KEY, ns))


def users_selector(group: str) -> Selector:
    """As the PortPolicy importer builds ``users: {issuer: corp, claims: {groups: [g]}}``."""
    return Selector.of(
        Requirement("agent", "actor", Op.DOES_NOT_EXIST),
        eq("oidc", "iss", ISSUER),
        Requirement("oidc", "groups", Op.IN, (group,)),
    )


def team_selector(team: str, key: str, value: str) -> Selector:
    """``workloads: {matchLabels: {key: value}, namespaceSelector: {matchLabels: {team}}}``."""
    return Selector.of(
        eq("k8s", key, value),
        eq("k8s", NAMESPACE_LABELS_PREFIX + "team", team),
        Requirement("k8s", NAMESPACE_KEY, Op.EXISTS),
    )


def pick_peers(inp: Inputs, ns: str, rng: random.Random) -> tuple[Selector, ...] | None:
    roll = rng.random()
    if roll < 0.35:  # an app in the same namespace (4 identities)
        return (app_selector(ns, rng.choice(inp.apps_by_ns[ns]).name),)
    if roll < 0.55:  # an app in another namespace
        other = rng.choice(inp.apps)
        return (app_selector(other.namespace, other.name),)
    if roll < 0.65:  # an app across a team's namespaces (5 namespaces x 4)
        return (team_selector(rng.choice(list(inp.ns_team.values())), "app", "app-0"),)
    if roll < 0.68:  # a whole tier across a team's namespaces (large)
        return (team_selector(inp.ns_team[ns], "tier", rng.choice(TIERS)),)
    if roll < 0.73:  # a service account
        other = rng.choice(inp.apps_by_ns[ns])
        return (
            Selector.of(eq("k8s", SERVICEACCOUNT_KEY, other.name), eq("k8s", NAMESPACE_KEY, ns)),
        )
    if roll < 0.97:  # an OIDC group, sometimes two
        k = 2 if rng.random() < 0.2 else 1
        return tuple(users_selector(g) for g in rng.sample(inp.groups, k))
    return None  # every peer


def pick_ports(ports: Sequence[ContainerPort], rng: random.Random) -> tuple[PortRange, ...] | None:
    out: list[PortRange] = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        roll = rng.random()
        cp = rng.choice(ports)
        if roll < 0.1:
            lo = rng.choice((8000, 30000, 9000))
            out.append(PortRange("TCP", lo, lo + rng.choice((9, 99, 999))))
        elif roll < 0.2:
            out.append(PortRange(cp.protocol, 0, 0, cp.name))
        else:
            out.append(PortRange(cp.protocol, cp.port, cp.port))
    if rng.random() < 0.02:
        return None  # every port
    return tuple(dict.fromkeys(out))


def make_policy(inp: Inputs, i: int, rng: random.Random) -> Policy:
    ns = ns_name(i % N_NAMESPACES)
    apps = inp.apps_by_ns[ns]
    if rng.random() < 0.1:
        tier = rng.choice(TIERS)
        subject = Selector.of(eq("k8s", "tier", tier), eq("k8s", NAMESPACE_KEY, ns))
        ports: Sequence[ContainerPort] = COMMON_PORTS + TIER_PORTS[tier]
        name = f"tier-{tier}-{i}"
    else:
        app = apps[(i // N_NAMESPACES) % len(apps)]
        subject = app_selector(ns, app.name)
        ports = app.ports
        name = f"{app.name}-{i}"
    ingress = tuple(
        PeerRule(pick_peers(inp, ns, rng), pick_ports(ports, rng), LOC)
        for _ in range(rng.choice((1, 2, 2, 3)))
    )
    deny: tuple[PeerRule, ...] = ()
    if rng.random() < 0.1:
        if rng.random() < 0.5:
            peers = (users_selector(rng.choice(inp.groups)),)
        else:
            peers = (
                Selector.of(
                    eq("k8s", "app", rng.choice(apps).name),
                    eq("k8s", NAMESPACE_LABELS_PREFIX + "env", "dev"),
                    Requirement("k8s", NAMESPACE_KEY, Op.EXISTS),
                ),
            )
        deny = (PeerRule(peers, (PortRange("TCP", 22, 22), PortRange("TCP", 5432, 5432)), LOC),)
    egress: tuple[PeerRule, ...] = ()
    if rng.random() < 0.25:
        dns = PeerRule(
            (app_selector("kube-system", "kube-dns"),),
            (PortRange("UDP", 53, 53), PortRange("TCP", 53, 53)),
            LOC,
        )
        other = rng.choice(inp.apps)
        to_app = PeerRule(
            (app_selector(other.namespace, other.name),),
            (PortRange("TCP", 8080, 8080),),
            LOC,
        )
        entries = [dns, to_app]
        if rng.random() < 0.3:
            net = ipaddress.ip_network(rng.choice(CIDRS))
            entries.append(
                PeerRule((Selector.of(cidr_requirement(net)),), (PortRange("TCP", 443, 443),), LOC)
            )
        egress = tuple(entries)
    rule = Rule(
        subject=subject,
        location=LOC,
        ingress=ingress,
        ingress_deny=deny,
        egress=egress,
        selects_ingress=True,
        selects_egress=bool(egress),
    )
    return Policy(PolicyKey("PortPolicy", ns, name), Mode.ENFORCE, (rule,), LOC)


def changed(inp: Inputs, pol: Policy, k: int, rng: random.Random) -> Policy:
    """`pol` with one change (same key): kind `k % 4` picks which."""
    rule = pol.rules[0]
    first = rule.ingress[0]
    kind = k % 4
    if kind == 3 and not rule.egress:
        kind = 0
    if kind == 0:  # one more port on the first ingress entry
        ports = (*(first.ports or ()), PortRange("TCP", 15000 + k, 15000 + k))
        rule = replace(rule, ingress=(replace(first, ports=ports), *rule.ingress[1:]))
    elif kind == 1:  # one more peer selector on the first ingress entry
        other = rng.choice(inp.apps)
        peers = (*(first.peers or ()), app_selector(other.namespace, other.name))
        rule = replace(rule, ingress=(replace(first, peers=peers), *rule.ingress[1:]))
    elif kind == 2:  # a new ingressDeny entry
        deny = PeerRule(
            (users_selector(rng.choice(inp.groups)),), (PortRange("TCP", 8080, 8080),), LOC
        )
        rule = replace(rule, ingress_deny=(*rule.ingress_deny, deny))
    else:  # one more port on the first egress entry
        eg = rule.egress[0]
        ports = (*(eg.ports or ()), PortRange("TCP", 16000 + k, 16000 + k))
        rule = replace(rule, egress=(replace(eg, ports=ports), *rule.egress[1:]))
    return replace(pol, rules=(rule,))


# -- measuring -----------------------------------------------------------------------------
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def deep_row_bytes(table: Table) -> int:
    """Bytes of the row structures: exact/ranges dicts, their int keys, PortMaps, cells."""
    seen: set[int] = set()
    total = 0

    def add(obj: object) -> None:
        nonlocal total
        if id(obj) not in seen:
            seen.add(id(obj))
            total += sys.getsizeof(obj)

    for epp in (*table.ingress.values(), *table.egress.values()):
        if id(epp) in seen:
            continue
        seen.add(id(epp))
        add(epp.exact)
        add(epp.ranges)
        for key, cell in epp.exact.items():
            add(key)
            add(cell)
        for key, pm in epp.ranges.items():
            add(key)
            add(pm)
            if isinstance(pm, PortMap):
                for part in (pm.starts, pm.ends, pm.cells):
                    add(part)
                for cell in pm.cells:
                    add(cell)
    return total


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    gc.collect()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def progress(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- verification --------------------------------------------------------------------------
def decision_key(d: Decision) -> tuple[object, ...]:
    def cell(c: Cell | None) -> tuple[object, ...] | None:
        if c is None:
            return None
        refs = tuple((r.policy, r.mode, r.rule, r.section, r.entry) for r in c.contributions)
        return (c.verdict, c.reason, refs)

    return (d.verdict, d.reason, cell(d.egress), cell(d.ingress))


def sample_flows(
    compiler: Compiler, policies: Iterable[Policy], table: Table, rng: random.Random, n_random: int
) -> list[Flow]:
    flows: list[Flow] = []
    endpoints = list(table.endpoints)
    everyone = list(table.identities)
    cache = compiler.cache
    for pol in policies:
        for rule in pol.rules:
            subj = sorted(cache.select(rule.subject) & table.endpoints.keys())
            for section in (rule.ingress, rule.ingress_deny, rule.egress, rule.egress_deny):
                for pr in section:
                    peers = sorted(cache.select_any(pr.peers)) if pr.peers else everyone
                    ports = {p.port for p in pr.ports or () if p.port} | {22, 8080, 15000, 16000}
                    ports |= {p.end_port for p in pr.ports or () if p.end_port}
                    for dst in rng.sample(subj, min(3, len(subj))):
                        for src in rng.sample(peers, min(8, len(peers))) + rng.sample(everyone, 3):
                            for port in sorted(ports):
                                flows.append(Flow(src, dst, 6, port))
                                flows.append(Flow(dst, src, 6, port))  # the egress side
    common = (22, 53, 443, 5432, 6379, 7000, 7070, 8080, 8443, 9090, 15003, 30050)
    for _ in range(n_random):
        src = rng.choice(everyone)
        dst = rng.choice(endpoints)
        flows.append(Flow(src, dst, rng.choice((6, 6, 6, 17)), rng.choice(common)))
    return flows


# -- one scenario --------------------------------------------------------------------------
def run_scenario(sc: Scenario, seed: int) -> dict[str, Any]:
    progress(f"{sc.name}: building {sc.policies} policies x {sc.identities} identities")
    inp, build_s = timed(build_inputs, sc, seed)
    gc.collect()
    peak0, rss0 = rss_peak(), rss_now()

    progress(f"{sc.name}: inputs built in {build_s:.1f}s; full compile")

    def full() -> tuple[Compiler, Table]:
        c = Compiler(inp.inventory, IdentityAllocator(), extra_identities=inp.users)
        return c, c.compile(inp.policies)

    (compiler, table), full_s = timed(full)
    peak1 = rss_peak()
    gc.collect()
    rss1 = rss_now()
    rows = table.rows
    rows_expanded = table.rows_expanded()
    deep = deep_row_bytes(table)
    n_ids = len(table.identities)
    n_endpoints = len(table.endpoints)
    n_epp = len({id(e) for e in (*table.ingress.values(), *table.egress.values())})
    full_runs = [full_s]
    for _ in range(sc.compile_runs - 1):  # more samples of the time; keep the last compiler
        del compiler, table
        (compiler, table), dt = timed(full)
        full_runs.append(dt)
    full_s = min(full_runs)
    alloc = compiler.allocator
    progress(
        f"{sc.name}: full compile {full_s:.2f}s (best of {len(full_runs)}), {rows} rows, "
        f"{n_epp} endpoint policies"
    )

    rng = random.Random(seed + 1)
    picks = rng.sample(range(len(inp.policies)), sc.updates)
    current = {p.key: p for p in inp.policies}
    update_s: list[float] = []
    redistilled: list[int] = []
    changed_pols: list[Policy] = []
    for k, idx in enumerate(picks):
        p2 = changed(inp, inp.policies[idx], k, rng)
        current[p2.key] = p2
        changed_pols.append(p2)
        before = {id(e) for e in (*table.ingress.values(), *table.egress.values())}
        new_table, dt = timed(compiler.update, upsert=[p2])
        after = {id(e) for e in (*new_table.ingress.values(), *new_table.egress.values())}
        redistilled.append(len(after - before))  # `table` still holds the old objects
        table = new_table
        update_s.append(dt)
    mean_update = sum(update_s) / len(update_s)
    progress(
        f"{sc.name}: {len(update_s)} updates, mean {mean_update * 1000:.1f} ms, "
        f"max {max(update_s) * 1000:.1f} ms; verifying against a fresh compile"
    )

    def fresh() -> Table:
        return Compiler(inp.inventory, alloc, extra_identities=inp.users).compile(
            list(current.values())
        )

    gc.collect()
    gc.disable()  # also shows what the collector costs a full compile
    try:
        ref, fresh_s = timed(fresh)
    finally:
        gc.enable()
    flows = sample_flows(compiler, changed_pols, table, random.Random(seed + 2), 5000)
    mismatches = []
    for f in flows:
        a, b = decision_key(decide(table, f)), decision_key(decide(ref, f))
        if a != b:
            mismatches.append((f, a, b))
    problems = []
    if mismatches:
        f, a, b = mismatches[0]
        problems.append(
            f"{len(mismatches)} of {len(flows)} flows decided differently after update, "
            f"e.g. {f}: incremental {a[:2]}, fresh {b[:2]}"
        )
    if table.rows != ref.rows:
        problems.append(f"rows after update {table.rows} != fresh compile {ref.rows}")
    if table.identities != ref.identities:
        problems.append("identities differ between incremental and fresh tables")
    return {
        "policies": sc.policies,
        "identities": n_ids,
        "endpoints": n_endpoints,
        "users": len(inp.users),
        "endpoint_policies": n_epp,
        "build_s": round(build_s, 3),
        "full_s": round(full_s, 3),
        "full_s_runs": [round(x, 3) for x in full_runs],
        "full_s_gc_off": round(fresh_s, 3),
        "rows": rows,
        "rows_expanded": rows_expanded,
        "peak_mb": round((peak1 - peak0) / 2**20, 1),
        "retained_mb": round((rss1 - rss0) / 2**20, 1),
        "baseline_mb": round(rss0 / 2**20, 1),
        "bytes_per_row": round((rss1 - rss0) / max(rows, 1), 1),
        "bytes_per_row_deep": round(deep / max(rows, 1), 1),
        "update_ms_mean": round(mean_update * 1000, 3),
        "update_ms_min": round(min(update_s) * 1000, 3),
        "update_ms_max": round(max(update_s) * 1000, 3),
        "updates": len(update_s),
        "redistilled_mean": round(sum(redistilled) / len(redistilled), 1),
        "incremental_speedup": round(full_s / mean_update, 1),
        "verified_flows": len(flows),
        "problems": problems,
    }


# -- driver --------------------------------------------------------------------------------
def run_child(name: str, seed: int) -> int:
    result = run_scenario(SCENARIOS[name], seed)
    print(json.dumps(result))
    return 0


def run_in_subprocess(sc: Scenario, seed: int) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", sc.name, "--seed", str(seed)]
    try:
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, text=True, timeout=sc.timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return {"problems": [f"timed out after {sc.timeout_s}s"], "error": True}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"problems": [f"child exited with status {proc.returncode}"], "error": True}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def report(results: dict[str, dict[str, Any]]) -> None:
    header = (
        "scenario",
        "policies",
        "idents",
        "full s",
        "gc off s",
        "peak MB",
        "kept MB",
        "rows",
        "rows/ep",
        "B/row",
        "deep B/row",
        "update ms",
        "speedup",
    )
    lines: list[tuple[str, ...]] = [header]
    for name, r in results.items():
        if r.get("error"):
            lines.append((name, *(["-"] * (len(header) - 1))))
            continue
        lines.append(
            (
                name,
                f"{r['policies']:,}",
                f"{r['identities']:,}",
                f"{r['full_s']:.2f}",
                f"{r['full_s_gc_off']:.2f}",
                f"{r['peak_mb']:.0f}",
                f"{r['retained_mb']:.0f}",
                f"{r['rows']:,}",
                f"{r['rows_expanded']:,}",
                f"{r['bytes_per_row']:.0f}",
                f"{r['bytes_per_row_deep']:.0f}",
                f"{r['update_ms_mean']:.1f}",
                f"{r['incremental_speedup']:,.0f}x",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells))
    print(
        "  full s: full compile, collector on; gc off s: the verification compile of the updated\n"
        "  set, collector off; peak: ru_maxrss rise during the compile; kept: RSS retained with\n"
        "  table and compiler; rows/ep: rows counted per endpoint; B/row: kept / rows; deep:\n"
        "  row structures only; update: mean Compiler.update() of one changed policy"
    )
    for name, r in results.items():
        if not r.get("error"):
            print(
                f"  {name}: {r['endpoints']:,} endpoints, {r['users']:,} users, "
                f"{r['endpoint_policies']:,} endpoint policies; {r['updates']} updates: "
                f"min {r['update_ms_min']:.1f} / max {r['update_ms_max']:.1f} ms, "
                f"{r['redistilled_mean']:.1f} endpoint policies re-distilled per update; "
                f"{r['verified_flows']:,} flows verified"
            )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Compile cost: full, memory, incremental.")
    ap.add_argument("--quick", action="store_true", help="small and mid scenarios only")
    ap.add_argument("--scenarios", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    ap.add_argument("--child", choices=sorted(SCENARIOS), help="run one scenario in-process")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    if args.child:
        return run_child(args.child, args.seed)
    if args.scenarios:
        names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            ap.error(f"unknown scenarios: {', '.join(unknown)}")
    else:
        names = ["small", "mid"] if args.quick else list(SCENARIOS)
    print(f"bench_compile ({'quick' if args.quick else 'full'}): {', '.join(names)}")
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        sc = SCENARIOS[name]
        t0 = time.perf_counter()
        results[name] = run_in_subprocess(sc, args.seed)
        print(f"  {name}: done in {time.perf_counter() - t0:.1f}s (subprocess)", flush=True)
    print()
    report(results)
    problems = [f"{n}: {p}" for n, r in results.items() for p in r.get("problems", [])]
    ok = [n for n in names if not results[n].get("error")]
    if not ok:
        print("FAIL: no scenario completed", file=sys.stderr)
        for p in problems:
            print(f"FAIL: {p}", file=sys.stderr)
        return 1
    last = results[ok[-1]]
    speedup = last["incremental_speedup"]
    met = all(results[n]["incremental_speedup"] >= TARGET_SPEEDUP for n in ok)
    print(
        f"incremental update vs full compile: {speedup:,.0f}x on {ok[-1]} "
        f"(target >= {TARGET_SPEEDUP:g}x: {'met' if met else 'MISSED'}); "
        + ("incremental tables match fresh compiles" if not problems else "PROBLEMS")
    )
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    out: dict[str, Any] = {
        "bench": "compile",
        "full_s": last["full_s"],
        "incremental_speedup": speedup,
        "bytes_per_row": last["bytes_per_row"],
        "scenario": ok[-1],
        "target_met": met,
        "verified": not problems,
    }
    for n in names:
        out[n] = results[n]
    print(json.dumps(out))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
