"""Kubernetes NetworkPolicy import: policyTypes defaults, peers, ipBlock, namespace selectors
and ports, as Kubernetes (and Cilium's importer) read them."""

from __future__ import annotations

from cport.identity import Labels
from cport.model import PortRange, Rule, load_text

from ._helpers import one_error, pos

NP = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: n, namespace: shop}
"""
NS = "k8s:io.kubernetes.pod.namespace"


def _rule(spec: str) -> Rule:
    [policy] = load_text(NP + spec, "np.yaml").policies
    assert policy.kind == "NetworkPolicy"
    [rule] = policy.rules
    return rule


def _peers(rule: Rule, section: str = "ingress", i: int = 0) -> list[str] | None:
    peers = getattr(rule, section)[i].peers
    return None if peers is None else [str(s) for s in peers]


# -- policyTypes ----------------------------------------------------------------------------
def test_without_policy_types_ingress_only() -> None:
    rule = _rule("spec:\n  podSelector: {matchLabels: {app: db}}\n")
    assert (rule.selects_ingress, rule.selects_egress) == (True, False)
    assert rule.ingress == ()
    assert str(rule.subject) == f"k8s:app=db, {NS}=shop"
    assert rule.default_deny_ingress and rule.default_deny_egress


def test_without_policy_types_egress_rules_add_egress() -> None:
    rule = _rule("spec:\n  podSelector: {}\n  egress:\n    - to: [{podSelector: {}}]\n")
    assert (rule.selects_ingress, rule.selects_egress) == (True, True)
    assert _peers(rule, "egress") == [f"{NS}=shop"]


def test_explicit_egress_only_ignores_ingress_rules() -> None:
    rule = _rule(
        "spec:\n  podSelector: {}\n  policyTypes: [Egress]\n"
        "  ingress:\n    - from: [{podSelector: {}}]\n"
    )
    assert (rule.selects_ingress, rule.selects_egress) == (False, True)
    assert rule.ingress == ()
    assert rule.egress == ()


def test_explicit_both_types_without_rules_deny_both() -> None:
    rule = _rule("spec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n")
    assert (rule.selects_ingress, rule.selects_egress) == (True, True)
    assert rule.ingress == () and rule.egress == ()


def test_empty_egress_list_without_policy_types_is_ingress_only() -> None:
    rule = _rule("spec:\n  podSelector: {}\n  egress: []\n")
    assert (rule.selects_ingress, rule.selects_egress) == (True, False)


def test_empty_policy_types_defaults_like_missing() -> None:
    rule = _rule("spec:\n  podSelector: {}\n  policyTypes: []\n")
    assert (rule.selects_ingress, rule.selects_egress) == (True, False)


def test_bad_policy_type_has_a_hint() -> None:
    text = NP + "spec:\n  podSelector: {}\n  policyTypes: [ingress]\n"
    err = one_error(text)
    assert err.location.path == "spec.policyTypes[0]"
    assert (err.location.line, err.location.column) == pos(text, "ingress]")
    assert "did you mean 'Ingress'?" in err.hint


# -- peers ----------------------------------------------------------------------------------
PEERS = """\
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
    - from:
        - podSelector: {matchLabels: {app: api}}
        - namespaceSelector: {matchLabels: {team: sre}}
        - namespaceSelector: {matchLabels: {team: sre}}
          podSelector: {matchLabels: {app: prom}}
        - namespaceSelector: {}
        - namespaceSelector:
            matchExpressions: [{key: env, operator: NotIn, values: [dev]}]
        - ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.0/26, 198.51.100.64/26]}
      ports:
        - port: 5432
        - {port: 53, protocol: UDP}
        - {port: http}
        - {port: 6000, endPort: 6010}
        - {protocol: SCTP}
    - from: []
    - {}
    - ports: [{port: 9090}]
"""


def test_peer_selectors() -> None:
    rule = _rule(PEERS)
    assert _peers(rule) == [
        f"k8s:app=api, {NS}=shop",
        f"k8s:io.cilium.k8s.namespace.labels.team=sre, {NS}",
        f"k8s:app=prom, k8s:io.cilium.k8s.namespace.labels.team=sre, {NS}",
        NS,
        f"k8s:io.cilium.k8s.namespace.labels.env notin (dev), {NS}",
        "cidr:198.51.100.0/24 except 198.51.100.0/26,198.51.100.64/26",
    ]


def test_namespace_selector_matches_namespace_labels_of_any_namespace() -> None:
    rule = _rule(PEERS)
    assert rule.ingress[0].peers is not None
    sre = rule.ingress[0].peers[1]
    ns_labels = "k8s:io.cilium.k8s.namespace.labels.team=sre"
    assert sre.matches(Labels.parse(f"{ns_labels},{NS}=monitoring,k8s:app=x"))
    assert not sre.matches(Labels.parse(f"{NS}=monitoring,k8s:app=x"))
    # Namespace labels alone (no pod namespace label) are not a pod.
    assert not sre.matches(Labels.parse(ns_labels))


def test_ports_default_to_tcp() -> None:
    rule = _rule(PEERS)
    assert rule.ingress[0].ports == (
        PortRange("TCP", 5432, 5432),
        PortRange("UDP", 53, 53),
        PortRange("TCP", 0, 0, "http"),
        PortRange("TCP", 6000, 6010),
        PortRange("SCTP", 0, 0),
    )


def test_empty_from_and_empty_rule_mean_every_peer() -> None:
    rule = _rule(PEERS)
    assert rule.ingress[1].peers is None
    assert rule.ingress[1].ports is None
    assert rule.ingress[2].peers is None
    assert rule.ingress[2].ports is None
    assert rule.ingress[3].peers is None
    assert rule.ingress[3].ports == (PortRange("TCP", 9090, 9090),)
    assert rule.ingress[3].location.path == "spec.ingress[3]"
    assert rule.ingress[3].location.line == pos(NP + PEERS, "- ports: [{port: 9090}]")[0]


def test_ip_block_cannot_be_combined() -> None:
    text = NP + (
        "spec:\n  podSelector: {}\n  ingress:\n"
        "    - from: [{ipBlock: {cidr: 198.51.100.0/24}, podSelector: {}}]\n"
    )
    err = one_error(text)
    assert err.location.path == "spec.ingress[0].from[0]"
    assert "ipBlock cannot be combined" in err.message


def test_ip_block_except_must_be_inside() -> None:
    text = NP + (
        "spec:\n  podSelector: {}\n  egress:\n"
        "    - to: [{ipBlock: {cidr: 198.51.100.0/24, except: [203.0.113.0/24]}}]\n"
    )
    err = one_error(text)
    assert err.location.path == "spec.egress[0].to[0].ipBlock.except[0]"
    assert "not inside" in err.message


def test_peer_without_selector_is_rejected() -> None:
    err = one_error(NP + "spec:\n  podSelector: {}\n  ingress:\n    - from: [{}]\n")
    assert err.location.path == "spec.ingress[0].from[0]"
    assert "podSelector, namespaceSelector or ipBlock" in err.message


def test_missing_pod_selector() -> None:
    err = one_error(NP + "spec:\n  ingress: []\n")
    assert err.location.path == "spec"
    assert "podSelector" in err.message


def test_namespace_defaults_to_default() -> None:
    text = NP.replace("{name: n, namespace: shop}", "{name: n}") + "spec: {podSelector: {}}\n"
    [policy] = load_text(text).policies
    assert str(policy.key) == "NetworkPolicy/default/n"
    assert str(policy.rules[0].subject) == f"{NS}=default"
