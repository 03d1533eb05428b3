"""Hypothesis strategies: small random estates, policies and flows over a shared vocabulary,
so random selectors actually select things."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from cport.errors import Location
from cport.identity import Labels
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
from cport.model._entities import entity_selectors
from cport.model._selector import cidr_requirement, eq

NAMESPACES = ["ns-a", "ns-b", "ns-c"]
APPS = ["web", "api", "db"]
TIERS = ["front", "back"]
PORTS = [80, 443, 5432, 8080, 8081]
PORT_NAMES = ["http", "db"]
CIDRS = [
    ("203.0.113.0/24", ()),
    ("203.0.113.0/25", ("203.0.113.64/26",)),
    ("192.0.2.0/24", ()),
    ("192.0.2.128/25", ()),
    ("0.0.0.0/0", ("198.51.100.0/24",)),
]
EXTERNAL_IPS = [
    "203.0.113.5",
    "203.0.113.70",
    "203.0.113.200",
    "192.0.2.1",
    "192.0.2.200",
    "198.51.100.250",
    "198.18.0.1",
]
GROUPS = ["dba", "dev"]
LOC = Location("hypothesis")


@st.composite
def workloads(draw: st.DrawFn, index: int) -> Workload:
    ns = draw(st.sampled_from(NAMESPACES))
    labels = {"app": draw(st.sampled_from(APPS))}
    if draw(st.booleans()):
        labels["tier"] = draw(st.sampled_from(TIERS))
    ports = draw(
        st.lists(
            st.tuples(
                st.sampled_from(PORT_NAMES), st.sampled_from(PORTS), st.sampled_from(["TCP", "UDP"])
            ),
            max_size=2,
            unique_by=lambda t: t[0],
        )
    )
    return Workload(
        namespace=ns,
        name=f"w{index}",
        labels=tuple(sorted(labels.items())),
        service_account=draw(st.sampled_from(["default", "sa1"])),
        addresses=(f"198.51.100.{index + 1}",),
        ports=tuple(ContainerPort(p, proto, n) for n, p, proto in ports),
        location=LOC,
        host_network=draw(st.booleans()) and index == 0 and draw(st.booleans()),
    )


@st.composite
def inventories(draw: st.DrawFn) -> Inventory:
    n = draw(st.integers(1, 6))
    inv = Inventory(namespaces={"ns-a": {"team": "x"}, "ns-b": {"team": "y"}})
    for i in range(n):
        inv.add(draw(workloads(i)))
    return inv


def _label_selector(draw: st.DrawFn, namespace: str | None) -> Selector:
    reqs = []
    if draw(st.booleans()):
        reqs.append(eq("k8s", "app", draw(st.sampled_from(APPS))))
    kind = draw(st.integers(0, 5))
    if kind == 1:
        reqs.append(
            Requirement(
                "k8s",
                "tier",
                Op.IN,
                tuple(sorted(set(draw(st.lists(st.sampled_from(TIERS), min_size=1, max_size=2))))),
            )
        )
    elif kind == 2:
        reqs.append(Requirement("k8s", "tier", Op.NOT_IN, (draw(st.sampled_from(TIERS)),)))
    elif kind == 3:
        reqs.append(Requirement("any", "tier", Op.EXISTS))
    elif kind == 4:
        reqs.append(Requirement("k8s", "tier", Op.DOES_NOT_EXIST))
    elif kind == 5:
        reqs.append(eq("k8s", SERVICEACCOUNT_KEY, draw(st.sampled_from(["default", "sa1"]))))
    ns_kind = draw(st.integers(0, 2))
    if ns_kind == 0 and namespace:
        reqs.append(eq("k8s", NAMESPACE_KEY, namespace))
    elif ns_kind == 1:
        reqs.append(eq("k8s", NAMESPACE_LABELS_PREFIX + "team", draw(st.sampled_from("xy"))))
    return Selector.of(*reqs)


@st.composite
def peer_selectors(draw: st.DrawFn, namespace: str) -> tuple[Selector, ...] | None:
    if draw(st.integers(0, 9)) == 0:
        return None
    out: list[Selector] = []
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.integers(0, 5))
        if kind <= 1:
            out.append(_label_selector(draw, namespace))
        elif kind == 2:
            found = entity_selectors(draw(st.sampled_from(["host", "world", "cluster"])))
            assert found is not None
            out.extend(found)
        elif kind == 3:
            prefix, excepts = draw(st.sampled_from(CIDRS))
            out.append(
                Selector.of(
                    cidr_requirement(
                        ipaddress.ip_network(prefix),
                        tuple(ipaddress.ip_network(e) for e in excepts),
                    )
                )
            )
        elif kind == 4:
            out.append(
                Selector.of(
                    Requirement("agent", "actor", Op.DOES_NOT_EXIST),
                    eq("oidc", "iss", "corp"),
                    eq("oidc", "groups", draw(st.sampled_from(GROUPS))),
                )
            )
        else:
            out.append(Selector.of(Requirement("oidc", "sub", Op.GLOB, ("u*",))))
    return tuple(dict.fromkeys(out))


@st.composite
def port_ranges(draw: st.DrawFn) -> tuple[PortRange, ...] | None:
    if draw(st.integers(0, 5)) == 0:
        return None
    out = []
    for _ in range(draw(st.integers(1, 2))):
        proto = draw(st.sampled_from(["TCP", "UDP", "ANY"]))
        kind = draw(st.integers(0, 4))
        if kind == 0:
            out.append(PortRange(proto, 0, 0))
        elif kind == 1:
            out.append(PortRange(proto, 0, 0, draw(st.sampled_from(PORT_NAMES))))
        elif kind == 2:
            lo = draw(st.sampled_from(PORTS))
            out.append(PortRange(proto, lo, draw(st.sampled_from([p for p in PORTS if p >= lo]))))
        else:
            p = draw(st.sampled_from(PORTS))
            out.append(PortRange(proto, p, p))
    return tuple(out)


@st.composite
def peer_rules(draw: st.DrawFn, namespace: str, *, allow_auth: bool) -> tuple[PeerRule, ...]:
    return tuple(
        PeerRule(
            draw(peer_selectors(namespace)),
            draw(port_ranges()),
            LOC,
            auth=allow_auth and draw(st.integers(0, 3)) == 0,
        )
        for _ in range(draw(st.integers(0, 2)))
    )


@st.composite
def policies(draw: st.DrawFn, index: int) -> Policy:
    ns = draw(st.sampled_from(NAMESPACES))
    clusterwide = draw(st.integers(0, 4)) == 0
    rules = []
    for _ in range(draw(st.integers(1, 2))):
        subject = _label_selector(draw, None if clusterwide else ns)
        if not clusterwide:
            subject = subject.with_requirement(eq("k8s", NAMESPACE_KEY, ns))
        ingress = draw(peer_rules(ns, allow_auth=True))
        ingress_deny = draw(peer_rules(ns, allow_auth=False)) if draw(st.booleans()) else ()
        egress = draw(peer_rules(ns, allow_auth=False))
        egress_deny = draw(peer_rules(ns, allow_auth=False)) if draw(st.booleans()) else ()
        rules.append(
            Rule(
                subject=subject,
                location=LOC,
                ingress=ingress,
                ingress_deny=ingress_deny,
                egress=egress,
                egress_deny=egress_deny,
                selects_ingress=bool(ingress or ingress_deny) or draw(st.booleans()),
                selects_egress=bool(egress or egress_deny) or draw(st.booleans()),
                default_deny_ingress=draw(st.integers(0, 4)) > 0,
                default_deny_egress=draw(st.integers(0, 4)) > 0,
            )
        )
    mode = Mode.AUDIT if draw(st.integers(0, 3)) == 0 else Mode.ENFORCE
    key = (
        PolicyKey("CiliumClusterwideNetworkPolicy", "", f"p{index}")
        if clusterwide
        else (PolicyKey("PortPolicy", ns, f"p{index}"))
    )
    return Policy(key, mode, tuple(rules), LOC)


@st.composite
def policy_sets(draw: st.DrawFn) -> list[Policy]:
    return [draw(policies(i)) for i in range(draw(st.integers(0, 5)))]


USERS = [
    Labels.parse("oidc:iss=corp,oidc:sub=u1,oidc:groups=dba"),
    Labels.parse("oidc:iss=corp,oidc:sub=v2,oidc:groups=dev"),
    Labels.parse("oidc:iss=corp,oidc:sub=u3,oidc:groups=dba,agent:actor=copilot"),
]
