"""``PortPolicy`` (cport.dev/v1alpha1): cport's native, identity-first resource.

Semantics beyond Cilium's, decided here and documented in docs/policy.md:
- ``from``/``to`` omitted: every peer; an empty list is rejected (it would match nobody).
- ``ports`` omitted: every port of every protocol; a port entry's protocol defaults to TCP.
- The presence of ``ingress`` or ``ingressDeny`` (even ``[]``) puts selected workloads'
  ingress under policy (default-deny unless ``enableDefaultDeny.ingress: false``); likewise egress.
- ``users`` peers never match an AI agent acting for a user; ``agents`` peers match only agents.
"""

from __future__ import annotations

from cport.errors import PolicyError
from cport.identity import ENTITIES
from cport.identity._labels import NAMESPACE_KEY, NAMESPACE_LABELS_PREFIX, SERVICEACCOUNT_KEY
from cport.model._common import (
    in_namespace,
    metadata,
    parse_cidr,
    parse_cidr_rule,
    parse_label_selector,
    parse_port,
)
from cport.model._entities import entity_selectors
from cport.model._fields import Cursor
from cport.model._selector import Op, Requirement, Selector, cidr_requirement, eq
from cport.model._types import Mode, PeerRule, Policy, PolicyKey, PortRange, Rule

API_VERSION = "cport.dev/v1alpha1"
_SPEC = frozenset(
    {
        "mode",
        "selector",
        "ingress",
        "ingressDeny",
        "egress",
        "egressDeny",
        "enableDefaultDeny",
        "description",
    }
)
_PEER_KINDS = (
    "workloads",
    "serviceAccount",
    "users",
    "aws",
    "spiffe",
    "agents",
    "entities",
    "cidr",
    "cidrSet",
)


def _values_req(source: str, key: str, values: list[str]) -> Requirement:
    if any(ch in v for v in values for ch in "*?["):
        return Requirement(source, key, Op.GLOB, tuple(sorted(values)))
    return Requirement(source, key, Op.IN, tuple(sorted(values)))


def _claims(cur: Cursor, source: str) -> list[Requirement]:
    if not isinstance(cur.value, dict):
        cur.fail("expected a mapping of claim name to value(s)", hint="claims: {groups: [dba]}")
    reqs = []
    for claim, vals in cur.mapping(set(cur.value or {})).entries():
        values = (
            [v.scalar_string() for v in vals.sequence().items()]
            if isinstance(vals.value, list)
            else [vals.scalar_string()]
        )
        if not values:
            vals.fail(f"claim {claim!r} needs at least one value")
        reqs.append(_values_req(source, claim, values))
    return reqs


def _peer(cur: Cursor, namespace: str) -> list[Selector] | None:
    """One peer entry; returns its selectors (a disjunction), or None for "every peer"."""
    cur.mapping(set(_PEER_KINDS))
    if len(cur.value) != 1:
        cur.fail(
            f"a peer needs exactly one of: {', '.join(_PEER_KINDS)}",
            hint="write two list items for two kinds of peer",
        )
    kind, body = next(cur.entries())
    if kind == "workloads":
        body.mapping({"matchLabels", "matchExpressions", "namespace", "namespaceSelector"})
        sel = parse_label_selector(
            Cursor(
                body.doc,
                body.path,
                {k: v for k, v in body.value.items() if k in ("matchLabels", "matchExpressions")},
                body.error_cls,
            ),
            "k8s",
        )
        ns = body.get("namespace")
        nss = body.get("namespaceSelector")
        if ns is not None and nss is not None:
            ns.fail("give namespace or namespaceSelector, not both")
        if nss is not None:
            ns_sel = parse_label_selector(nss, "k8s")
            for r in ns_sel.requirements:
                sel = sel.with_requirement(
                    Requirement("k8s", NAMESPACE_LABELS_PREFIX + r.key, r.op, r.values)
                )
            sel = sel.with_requirement(Requirement("k8s", NAMESPACE_KEY, Op.EXISTS))
        elif ns is not None and ns.string() == "*":
            sel = sel.with_requirement(Requirement("k8s", NAMESPACE_KEY, Op.EXISTS))
        else:
            sel = in_namespace(sel, ns.string() if ns is not None else namespace)
        return [sel]
    if kind == "serviceAccount":
        body.mapping({"namespace", "name"})
        ns = body.get("namespace")
        return [
            Selector.of(
                eq("k8s", SERVICEACCOUNT_KEY, body.require("name").string()),
                eq("k8s", NAMESPACE_KEY, ns.string() if ns else namespace),
            )
        ]
    if kind == "users":
        body.mapping({"issuer", "subject", "claims"})
        reqs = [Requirement("agent", "actor", Op.DOES_NOT_EXIST)]
        if (iss := body.get("issuer")) is not None:
            reqs.append(eq("oidc", "iss", iss.string()))
        if (sub := body.get("subject")) is not None:
            reqs.append(_values_req("oidc", "sub", [sub.string()]))
        if (claims := body.get("claims")) is not None:
            reqs.extend(_claims(claims, "oidc"))
        if len(reqs) == 1:
            body.fail(
                "users needs an issuer, a subject or claims",
                hint="an unconstrained users peer would admit every user of every issuer",
            )
        return [Selector.of(*reqs)]
    if kind == "aws":
        body.mapping({"arn", "account", "role"})
        reqs = []
        for field, label in (("arn", "arn"), ("account", "account"), ("role", "role")):
            if (c := body.get(field)) is not None:
                reqs.append(_values_req("aws", label, [c.scalar_string()]))
        if not reqs:
            body.fail("aws needs arn, account or role")
        return [Selector.of(*reqs)]
    if kind == "spiffe":
        body.mapping({"id", "trustDomain"})
        reqs = []
        if (c := body.get("id")) is not None:
            text = c.string()
            if not text.startswith("spiffe://"):
                c.fail(f"invalid SPIFFE ID {text!r}", hint="spiffe://trust-domain/path")
            reqs.append(_values_req("spiffe", "id", [text]))
        if (c := body.get("trustDomain")) is not None:
            reqs.append(eq("spiffe", "trust-domain", c.string()))
        if not reqs:
            body.fail("spiffe needs id or trustDomain")
        return [Selector.of(*reqs)]
    if kind == "agents":
        body.mapping({"actor", "onBehalfOf"})
        reqs = [Requirement("agent", "actor", Op.EXISTS)]
        actor = body.require("actor").mapping({"issuer", "subject", "claims"})
        if not actor.value:
            actor.fail(
                "actor needs an issuer, a subject or claims",
                hint="an unconstrained actor would admit every AI agent",
            )
        if (c := actor.get("issuer")) is not None:
            reqs.append(eq("agent", "iss", c.string()))
        if (c := actor.get("subject")) is not None:
            reqs.append(_values_req("agent", "actor", [c.string()]))
        if (c := actor.get("claims")) is not None:
            reqs.extend(_claims(c, "agent"))
        obo = body.get("onBehalfOf")
        if obo is not None:
            obo.mapping({"issuer", "subject", "claims"})
            if (c := obo.get("issuer")) is not None:
                reqs.append(eq("oidc", "iss", c.string()))
            if (c := obo.get("subject")) is not None:
                reqs.append(_values_req("oidc", "sub", [c.string()]))
            if (c := obo.get("claims")) is not None:
                reqs.extend(_claims(c, "oidc"))
        return [Selector.of(*reqs)]
    if kind == "entities":
        names = body.sequence()
        out: list[Selector] = []
        for item in names.items():
            name = item.choice(tuple(sorted(ENTITIES)))
            sels = entity_selectors(name)
            if sels is None:
                return None
            out.extend(sels)
        if not out:
            body.fail("entities must not be empty")
        return out
    if kind == "cidr":
        items = list(body.sequence().items())
        if not items:
            body.fail("cidr must not be empty")
        return [Selector.of(cidr_requirement(parse_cidr(i))) for i in items]
    # cidrSet
    items = list(body.sequence().items())
    if not items:
        body.fail("cidrSet must not be empty")
    return [Selector.of(parse_cidr_rule(i)) for i in items]


def _peers(cur: Cursor | None, namespace: str) -> tuple[Selector, ...] | None:
    if cur is None:
        return None
    items = list(cur.sequence(allow_null=False).items())
    if not items:
        cur.fail("an empty list matches no peer", hint="omit the field to mean every peer")
    out: list[Selector] = []
    for item in items:
        sels = _peer(item, namespace)
        if sels is None:
            return None
        out.extend(sels)
    return tuple(dict.fromkeys(out))


def _ports(cur: Cursor | None) -> tuple[PortRange, ...] | None:
    if cur is None:
        return None
    items = list(cur.sequence(allow_null=False).items())
    if not items:
        cur.fail("an empty ports list matches nothing", hint="omit ports to mean every port")
    return tuple(parse_port(i, port_key="port", default_protocol="TCP") for i in items)


def _rules(
    cur: Cursor | None, peer_key: str, namespace: str, *, deny: bool, ingress: bool
) -> tuple[PeerRule, ...]:
    if cur is None:
        return ()
    out = []
    known = {peer_key, "ports", "description"}
    if ingress and not deny:
        known.add("authentication")
    for item in cur.sequence().items():
        if (
            isinstance(item.value, dict)
            and "authentication" in item.value
            and not (ingress and not deny)
        ):
            item.require("authentication").fail(
                "authentication applies only to ingress allow rules",
                hint="the peer proves its identity to the port it connects to",
            )
        item.mapping(known)
        auth = False
        if (a := item.get("authentication")) is not None:
            auth = a.choice(("required", "disabled")) == "required"
        desc = item.get("description")
        out.append(
            PeerRule(
                peers=_peers(item.get(peer_key), namespace),
                ports=_ports(item.get("ports")),
                location=item.location,
                auth=auth,
                description=desc.string() if desc else "",
            )
        )
    return tuple(out)


def parse_port_policy(doc: Cursor) -> Policy:
    doc.mapping({"apiVersion", "kind", "metadata", "spec"})
    version = doc.require("apiVersion")
    if version.value != API_VERSION:
        version.fail(f"unsupported apiVersion {version.value!r}", hint=f"use {API_VERSION}")
    namespace, name = metadata(doc, namespaced=True)
    spec = doc.require("spec").mapping(_SPEC, allow_null=False)
    mode_cur = spec.get("mode")
    mode = Mode(mode_cur.choice(("enforce", "audit"))) if mode_cur else Mode.ENFORCE
    sel_cur = spec.require("selector", "selector: {matchLabels: {...}} names whose ports these are")
    subject = in_namespace(parse_label_selector(sel_cur, "k8s"), namespace)
    dd_in = dd_out = True
    if (dd := spec.get("enableDefaultDeny")) is not None:
        dd.mapping({"ingress", "egress"})
        dd_in = dd.get("ingress").boolean() if dd.get("ingress") else True  # type: ignore[union-attr]
        dd_out = dd.get("egress").boolean() if dd.get("egress") else True  # type: ignore[union-attr]
    desc = spec.get("description")
    rule = Rule(
        subject=subject,
        location=spec.location,
        ingress=_rules(spec.get("ingress"), "from", namespace, deny=False, ingress=True),
        ingress_deny=_rules(spec.get("ingressDeny"), "from", namespace, deny=True, ingress=True),
        egress=_rules(spec.get("egress"), "to", namespace, deny=False, ingress=False),
        egress_deny=_rules(spec.get("egressDeny"), "to", namespace, deny=True, ingress=False),
        selects_ingress="ingress" in spec.value or "ingressDeny" in spec.value,
        selects_egress="egress" in spec.value or "egressDeny" in spec.value,
        default_deny_ingress=dd_in,
        default_deny_egress=dd_out,
        description=desc.string() if desc else "",
    )
    if not rule.selects_ingress and not rule.selects_egress:
        spec.fail(
            "the policy says nothing: give ingress, ingressDeny, egress or egressDeny",
            code="empty-policy",
        )
    return Policy(PolicyKey("PortPolicy", namespace, name), mode, (rule,), doc.location)


__all__ = ["API_VERSION", "PolicyError", "parse_port_policy"]
