"""Kubernetes ``NetworkPolicy`` (networking.k8s.io/v1), imported as Cilium imports it
(``pkg/k8s/network_policy.go``): pod and namespace selectors on ``k8s:`` labels, an empty
``from``/``to`` meaning every peer (``reserved:all``), ``ipBlock`` as a CIDR set (matching only
traffic from outside the cluster, as in Cilium), ports defaulting to TCP."""

from __future__ import annotations

from cport.identity._labels import NAMESPACE_KEY, NAMESPACE_LABELS_PREFIX
from cport.model._common import (
    in_namespace,
    metadata,
    parse_cidr_rule,
    parse_label_selector,
    parse_port,
)
from cport.model._fields import Cursor
from cport.model._selector import Op, Requirement, Selector
from cport.model._types import Mode, PeerRule, Policy, PolicyKey, PortRange, Rule

API_VERSION = "networking.k8s.io/v1"


def _peer(cur: Cursor, namespace: str) -> Selector:
    cur.mapping({"podSelector", "namespaceSelector", "ipBlock"})
    if "ipBlock" in cur.value:
        if len(cur.value) > 1:
            cur.fail("ipBlock cannot be combined with podSelector or namespaceSelector")
        return Selector.of(parse_cidr_rule(cur.require("ipBlock")))
    pod = cur.get("podSelector")
    ns = cur.get("namespaceSelector")
    if pod is None and ns is None:
        cur.fail("a peer needs podSelector, namespaceSelector or ipBlock")
    sel = parse_label_selector(pod, "k8s") if pod is not None else Selector()
    if ns is None:
        return in_namespace(sel, namespace)
    ns_sel = parse_label_selector(ns, "k8s")
    for r in ns_sel.requirements:
        sel = sel.with_requirement(
            Requirement("k8s", NAMESPACE_LABELS_PREFIX + r.key, r.op, r.values)
        )
    return sel.with_requirement(Requirement("k8s", NAMESPACE_KEY, Op.EXISTS))


def _rules(cur: Cursor | None, peer_key: str, namespace: str) -> tuple[PeerRule, ...]:
    out = []
    for item in cur.sequence().items() if cur else []:
        item.mapping({peer_key, "ports"})
        peers_cur = item.get(peer_key)
        peers: tuple[Selector, ...] | None = None
        if peers_cur is not None and peers_cur.sequence().value:
            peers = tuple(_peer(p, namespace) for p in peers_cur.items())
        ports_cur = item.get("ports")
        ports: tuple[PortRange, ...] | None = None
        if ports_cur is not None and ports_cur.sequence().value:
            ports = tuple(
                parse_port(p, port_key="port", default_protocol="TCP") for p in ports_cur.items()
            )
        out.append(PeerRule(peers=peers, ports=ports, location=item.location))
    return tuple(out)


def parse_network_policy(doc: Cursor) -> Policy:
    doc.mapping({"apiVersion", "kind", "metadata", "spec", "status"})
    namespace, name = metadata(doc, namespaced=True)
    spec = doc.require("spec").mapping({"podSelector", "policyTypes", "ingress", "egress"})
    subject = in_namespace(
        parse_label_selector(
            spec.require("podSelector", "podSelector: {} selects every pod"), "k8s"
        ),
        namespace,
    )
    # Kubernetes defaulting (pkg/apis/networking/v1/defaults.go): no (or an empty) policyTypes
    # means Ingress, plus Egress when there are egress rules.
    types_cur = spec.get("policyTypes")
    types = set()
    if types_cur is not None:
        types = {t.choice(("Ingress", "Egress")) for t in types_cur.sequence().items()}
    if not types:
        egress_rules = spec.value.get("egress")
        types = {"Ingress"} | (
            {"Egress"} if isinstance(egress_rules, list) and egress_rules else set()
        )
    ingress = _rules(spec.get("ingress"), "from", namespace) if "Ingress" in types else ()
    egress = _rules(spec.get("egress"), "to", namespace) if "Egress" in types else ()
    rule = Rule(
        subject=subject,
        location=spec.location,
        ingress=ingress,
        egress=egress,
        selects_ingress="Ingress" in types,
        selects_egress="Egress" in types,
    )
    return Policy(PolicyKey("NetworkPolicy", namespace, name), Mode.ENFORCE, (rule,), doc.location)
