"""``CiliumNetworkPolicy`` and ``CiliumClusterwideNetworkPolicy`` (cilium.io/v2), L3/L4 subset.

Namespace scoping follows Cilium's ``getEndpointSelector``
(``pkg/k8s/apis/cilium.io/utils/utils.go``): in a namespaced policy the subject and every
``fromEndpoints``/``toEndpoints`` selector that names no namespace is limited to the policy's
namespace; in a cluster-wide policy such peer selectors match only pods (namespace label must
exist). Selectors on ``reserved:`` labels are left alone. Fields outside L3/L4 raise
:class:`~cport.errors.UnsupportedFieldError` with their path.
"""

from __future__ import annotations

from cport.errors import UnsupportedFieldError
from cport.identity import ENTITIES
from cport.identity._labels import NAMESPACE_KEY, NAMESPACE_LABELS_PREFIX
from cport.model._common import (
    in_namespace,
    metadata,
    parse_cidr,
    parse_cidr_rule,
    parse_label_selector,
    parse_port,
)
from cport.model._entities import entity_selectors
from cport.model._fields import Cursor, skipped_unsupported
from cport.model._selector import Op, Requirement, Selector, cidr_requirement
from cport.model._types import Mode, PeerRule, Policy, PolicyKey, PortRange, Rule

API_VERSION = "cilium.io/v2"
_RULE = frozenset(
    {
        "endpointSelector",
        "ingress",
        "ingressDeny",
        "egress",
        "egressDeny",
        "labels",
        "description",
        "enableDefaultDeny",
    }
)
_RULE_UNSUPPORTED = {"nodeSelector": "nodeSelector (host policies)", "log": "policy logging"}
# fromRequires/toRequires restrict every allow rule of the endpoint, so they can never be
# dropped: dropping them would widen access.
_NOT_DROPPABLE = frozenset({"fromRequires", "toRequires"})
_UNSUPPORTED = {
    "fromRequires": "fromRequires (deprecated in Cilium)",
    "toRequires": "toRequires (deprecated in Cilium)",
    "fromGroups": "fromGroups (cloud provider groups)",
    "toGroups": "toGroups (cloud provider groups)",
    "fromNodes": "fromNodes",
    "toNodes": "toNodes",
    "toServices": "toServices",
    "toFQDNs": "toFQDNs (DNS-based policy)",
    "icmps": "icmps (ICMP rules)",
}
_PORT_RULE_UNSUPPORTED = {
    "rules": "L7 rules (HTTP, Kafka, DNS)",
    "terminatingTLS": "terminatingTLS",
    "originatingTLS": "originatingTLS",
    "serverNames": "serverNames (TLS SNI)",
    "listener": "listener (Envoy)",
}
_CIDR_RULE_UNSUPPORTED = {
    "cidrGroupRef": "cidrGroupRef (CiliumCIDRGroup)",
    "cidrGroupSelector": "cidrGroupSelector (CiliumCIDRGroup)",
}


def _endpoint_selector(cur: Cursor, namespace: str) -> Selector:
    sel = parse_label_selector(cur, "any")
    if sel.has_source("reserved"):
        return sel
    if sel.has_key(NAMESPACE_KEY):
        return sel
    if not namespace:
        return sel.with_requirement(Requirement("k8s", NAMESPACE_KEY, Op.EXISTS))
    if sel.has_key_prefix(NAMESPACE_LABELS_PREFIX):
        return sel
    return in_namespace(sel, namespace)


def _l3(cur: Cursor, prefix: str, namespace: str) -> tuple[bool, tuple[Selector, ...] | None]:
    """The peers an ingress/egress rule names: (has any L3 field, selectors or None=all)."""
    sels: list[Selector] = []
    present = False
    wildcard = False
    if (c := cur.get(f"{prefix}Endpoints")) is not None:
        present = True
        sels.extend(_endpoint_selector(i, namespace) for i in c.sequence().items())
    if (c := cur.get(f"{prefix}CIDR")) is not None:
        present = True
        sels.extend(Selector.of(cidr_requirement(parse_cidr(i))) for i in c.sequence().items())
    if (c := cur.get(f"{prefix}CIDRSet")) is not None:
        present = True
        sels.extend(
            Selector.of(parse_cidr_rule(i, unsupported=_CIDR_RULE_UNSUPPORTED))
            for i in c.sequence().items()
        )
    if (c := cur.get(f"{prefix}Entities")) is not None:
        present = True
        for item in c.sequence().items():
            found = entity_selectors(item.choice(tuple(sorted(ENTITIES))))
            if found is None:
                wildcard = True
            else:
                sels.extend(found)
    if wildcard:
        return present, None
    return present, tuple(dict.fromkeys(sels))


def _to_ports(cur: Cursor | None, *, deny: bool) -> tuple[PortRange, ...] | None:
    # Cilium: a missing, null or empty toPorts makes the rule L3-only (every port).
    if cur is None or cur.value is None or cur.value == []:
        return None
    out: list[PortRange] = []
    for rule in cur.sequence().items():
        rule.mapping({"ports"}, None if deny else _PORT_RULE_UNSUPPORTED)
        ports = rule.get("ports")
        items = list(ports.sequence().items()) if ports else []
        if len(items) > 40:
            ports.fail(f"{len(items)} ports in one toPorts entry; Cilium allows at most 40")  # type: ignore[union-attr]
        if not items:
            out.append(PortRange("ANY", 0, 0))
        for item in items:
            out.append(parse_port(item, port_key="port", default_protocol="ANY"))
    return tuple(out)


def _rules(
    cur: Cursor | None, prefix: str, namespace: str, *, deny: bool, ingress: bool
) -> tuple[PeerRule, ...]:
    out = []
    for item in cur.sequence().items() if cur else []:
        try:
            out.append(_peer_rule(item, prefix, namespace, deny=deny, ingress=ingress))
        except UnsupportedFieldError as exc:
            dropped = skipped_unsupported()
            if deny or dropped is None or not exc.droppable:
                raise
            dropped.append(f"{exc.location}: dropped this allow rule: {exc.message}")
    return tuple(out)


def _peer_rule(item: Cursor, prefix: str, namespace: str, *, deny: bool, ingress: bool) -> PeerRule:
    l3_keys = {f"{prefix}Endpoints", f"{prefix}CIDR", f"{prefix}CIDRSet", f"{prefix}Entities"}
    known = {*l3_keys, "toPorts"}
    if not deny:
        known.add("authentication")
    unsupported = {
        k: v
        for k, v in _UNSUPPORTED.items()
        if k.startswith(prefix) or k == "icmps" or (k == "toServices" and not ingress)
    }
    if isinstance(item.value, dict):
        for key in sorted(_NOT_DROPPABLE & item.value.keys()):
            item.require(key).unsupported(_UNSUPPORTED[key], droppable=False)
    item.mapping(known, unsupported)
    # Cilium's sanitize() rejects more than one non-empty kind of L3 peer in one rule
    # (pkg/policy/api/rule_validation.go); an empty list does not count.
    kinds = [k for k in sorted(l3_keys) if isinstance(item.value.get(k), list) and item.value[k]]
    if len(kinds) > 1:
        item.fail(
            f"combining {' and '.join(kinds)} in one rule is not allowed (Cilium rejects it)",
            hint="write one rule per kind of peer",
        )
    present, peers = _l3(item, prefix, namespace)
    ports = _to_ports(item.get("toPorts"), deny=deny)
    if not present:
        # Cilium: a rule with toPorts and no L3 field allows those ports from every peer;
        # a rule with neither (`{}`) allows nothing but still selects the endpoint.
        peers = None if ports is not None else ()
    auth = False
    if (a := item.get("authentication")) is not None:
        a.mapping({"mode"})
        auth = a.require("mode").choice(("required", "disabled")) == "required"
    return PeerRule(peers=peers, ports=ports, location=item.location, auth=auth)


def _nonempty(cur: Cursor, key: str) -> bool:
    value = cur.value.get(key)
    return isinstance(value, list) and len(value) > 0


def _rule(cur: Cursor, namespace: str) -> Rule:
    cur.mapping(_RULE, _RULE_UNSUPPORTED, allow_null=False, droppable=False)
    sel_cur = cur.require("endpointSelector", "endpointSelector: {} selects every endpoint")
    subject = parse_label_selector(sel_cur, "any")
    if namespace:
        subject = in_namespace(subject, namespace)
    dd_in = dd_out = True
    if (dd := cur.get("enableDefaultDeny")) is not None:
        dd.mapping({"ingress", "egress"})
        if (c := dd.get("ingress")) is not None:
            dd_in = c.boolean()
        if (c := dd.get("egress")) is not None:
            dd_out = c.boolean()
    ingress = _rules(cur.get("ingress"), "from", namespace, deny=False, ingress=True)
    ingress_deny = _rules(cur.get("ingressDeny"), "from", namespace, deny=True, ingress=True)
    egress = _rules(cur.get("egress"), "to", namespace, deny=False, ingress=False)
    egress_deny = _rules(cur.get("egressDeny"), "to", namespace, deny=True, ingress=False)
    desc = cur.get("description")
    return Rule(
        subject=subject,
        location=cur.location,
        ingress=ingress,
        ingress_deny=ingress_deny,
        egress=egress,
        egress_deny=egress_deny,
        # From the documents, not the parsed lists: a dropped unsupported rule must not
        # lift default-deny (that would open the workload).
        selects_ingress=_nonempty(cur, "ingress") or _nonempty(cur, "ingressDeny"),
        selects_egress=_nonempty(cur, "egress") or _nonempty(cur, "egressDeny"),
        default_deny_ingress=dd_in,
        default_deny_egress=dd_out,
        description=desc.string(nonempty=False) if desc else "",
    )


def parse_cilium_policy(doc: Cursor, kind: str) -> Policy:
    doc.mapping({"apiVersion", "kind", "metadata", "spec", "specs", "status"})
    clusterwide = kind == "CiliumClusterwideNetworkPolicy"
    namespace, name = metadata(doc, namespaced=not clusterwide)
    rules: list[Rule] = []
    if (spec := doc.get("spec")) is not None:
        rules.append(_rule(spec, namespace))
    if (specs := doc.get("specs")) is not None:
        rules.extend(_rule(item, namespace) for item in specs.sequence().items())
    if not rules:
        doc.fail("a Cilium policy needs spec or specs")
    return Policy(PolicyKey(kind, namespace, name), Mode.ENFORCE, tuple(rules), doc.location)
