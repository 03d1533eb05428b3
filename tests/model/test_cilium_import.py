"""CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy import: scoping as Cilium scopes,
unsupported fields reported by path, and --skip-unsupported dropping only allow rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from cport.errors import InputErrors, UnsupportedFieldError
from cport.model import Policy, PortRange, Rule, load, load_text

from ._helpers import one_error, pos

CNP = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: c, namespace: shop}
"""
CCNP = """\
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: cc}
"""
NS = "k8s:io.kubernetes.pod.namespace"

SPEC = (
    CNP
    + """\
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - fromEndpoints:
        - matchLabels: {app: api}
        - matchLabels: {k8s:app: api, k8s:io.kubernetes.pod.namespace: other}
        - matchLabels: {reserved:host: ""}
        - matchLabels: {k8s:io.cilium.k8s.namespace.labels.team: sre}
        - {}
      toPorts:
        - ports: [{port: "5432", protocol: TCP}, {port: "6000", endPort: 6010}]
    - fromCIDRSet:
        - {cidr: 198.51.100.0/24, except: [198.51.100.0/26]}
      toPorts:
        - ports: [{port: "53", protocol: UDP}]
    - fromEntities: [world, cluster]
    - toPorts:
        - ports: [{port: "80"}]
    - {}
  egress:
    - toEndpoints: [{}]
    - toCIDR: [192.0.2.0/24]
"""
)


def _only(text: str, file: str = "c.yaml") -> Policy:
    [policy] = load_text(text, file).policies
    return policy


def _rule(text: str) -> Rule:
    [rule] = _only(text).rules
    return rule


def _peer_strs(rule: Rule, section: str = "ingress", i: int = 0) -> list[str] | None:
    peers = getattr(rule, section)[i].peers
    return None if peers is None else [str(s) for s in peers]


# -- spec ---------------------------------------------------------------------------------------
def test_cnp_spec_is_one_namespaced_rule() -> None:
    policy = _only(SPEC)
    assert str(policy.key) == "CiliumNetworkPolicy/shop/c"
    assert policy.namespace == "shop"
    rule = policy.rules[0]
    # endpointSelector labels without a source match any source; the namespace is added.
    assert str(rule.subject) == f"app=db, {NS}=shop"
    assert rule.selects_ingress and rule.selects_egress
    assert rule.default_deny_ingress and rule.default_deny_egress
    assert rule.location.path == "spec"


def test_cnp_from_endpoints_are_scoped_like_cilium() -> None:
    peers = _peer_strs(_rule(SPEC))
    assert peers == [
        # no namespace named: the policy's namespace
        f"app=api, {NS}=shop",
        # a namespace named: kept as written, not narrowed to the policy's
        f"k8s:app=api, {NS}=other",
        # reserved labels: never namespaced
        "reserved:host",
        # namespace-label selectors: any namespace with those labels
        "k8s:io.cilium.k8s.namespace.labels.team=sre",
        # {}: every endpoint of the policy's namespace
        f"{NS}=shop",
    ]
    assert f"{NS}=shop" not in peers[2]


def test_cnp_ports_default_to_any_protocol() -> None:
    rule = _rule(SPEC)
    assert rule.ingress[0].ports == (PortRange("TCP", 5432, 5432), PortRange("ANY", 6000, 6010))
    assert rule.ingress[1].ports == (PortRange("UDP", 53, 53),)
    assert _peer_strs(rule, "ingress", 1) == ["cidr:198.51.100.0/24 except 198.51.100.0/26"]


def test_cnp_entities_cluster_and_world() -> None:
    peers = _peer_strs(_rule(SPEC), "ingress", 2)
    assert peers is not None
    assert peers[0] == "reserved:world"
    assert "reserved:host" in peers
    assert "reserved:remote-node" in peers
    assert "k8s:io.cilium.k8s.policy.cluster" in peers  # every pod of the cluster
    assert "reserved:world" not in peers[1:]


def test_cnp_ports_without_l3_allow_every_peer_and_empty_rule_allows_nobody() -> None:
    rule = _rule(SPEC)
    assert rule.ingress[3].peers is None
    assert rule.ingress[3].ports == (PortRange("ANY", 80, 80),)
    assert rule.ingress[4].peers == ()
    assert rule.ingress[4].ports is None
    assert rule.ingress[4].location.line == pos(SPEC, "{}\n  egress")[0]


def test_cnp_egress_peers() -> None:
    rule = _rule(SPEC)
    assert _peer_strs(rule, "egress", 0) == [f"{NS}=shop"]
    assert _peer_strs(rule, "egress", 1) == ["cidr:192.0.2.0/24"]


def test_cnp_specs_give_one_rule_each_with_enable_default_deny() -> None:
    text = (
        CNP
        + """\
specs:
  - endpointSelector: {}
    ingress: [{fromEntities: [all]}]
    enableDefaultDeny: {ingress: false}
  - endpointSelector: {matchLabels: {app: x}}
    description: second
    egress: [{toCIDR: [192.0.2.1/32]}]
    enableDefaultDeny: {egress: false}
"""
    )
    first, second = _only(text).rules
    assert str(first.subject) == f"{NS}=shop"
    assert (first.selects_ingress, first.selects_egress) == (True, False)
    assert (first.default_deny_ingress, first.default_deny_egress) == (False, True)
    assert first.ingress[0].peers is None  # fromEntities: [all]
    assert first.location.path == "specs[0]"
    assert str(second.subject) == f"app=x, {NS}=shop"
    assert (second.selects_ingress, second.selects_egress) == (False, True)
    assert (second.default_deny_ingress, second.default_deny_egress) == (True, False)
    assert second.description == "second"
    assert second.location.path == "specs[1]"


def test_cnp_with_spec_and_specs_keeps_both() -> None:
    text = (
        CNP
        + "spec:\n  endpointSelector: {}\n  ingress: [{}]\n"
        + "specs:\n  - endpointSelector: {}\n    egress: [{}]\n"
    )
    assert len(_only(text).rules) == 2


def test_empty_ingress_list_does_not_select() -> None:
    rule = _rule(CNP + "spec:\n  endpointSelector: {}\n  ingress: []\n  egress: [{}]\n")
    assert (rule.selects_ingress, rule.selects_egress) == (False, True)


def test_cnp_authentication_mode() -> None:
    text = (
        CNP
        + """\
spec:
  endpointSelector: {}
  ingress:
    - fromEndpoints: [{}]
      authentication: {mode: required}
    - fromEndpoints: [{}]
      authentication: {mode: disabled}
"""
    )
    rule = _rule(text)
    assert [e.auth for e in rule.ingress] == [True, False]


# -- clusterwide ----------------------------------------------------------------------------------
def test_ccnp_subject_is_not_namespaced_and_peers_must_be_pods() -> None:
    text = (
        CCNP
        + """\
spec:
  endpointSelector: {matchLabels: {k8s:io.cilium.k8s.namespace.labels.tier: restricted}}
  ingress:
    - fromEndpoints:
        - matchLabels: {app: api}
        - matchLabels: {reserved:host: ""}
        - matchLabels: {k8s:io.kubernetes.pod.namespace: ops}
        - {}
"""
    )
    policy = _only(text)
    assert str(policy.key) == "CiliumClusterwideNetworkPolicy/cc"
    assert policy.namespace == ""
    rule = policy.rules[0]
    assert str(rule.subject) == "k8s:io.cilium.k8s.namespace.labels.tier=restricted"
    assert NS not in str(rule.subject)
    assert _peer_strs(rule) == [
        f"app=api, {NS}",  # Exists: any namespace, but a pod
        "reserved:host",
        f"{NS}=ops",
        NS,
    ]


def test_ccnp_ingress_deny_cidr_set_with_except() -> None:
    text = (
        CCNP
        + """\
spec:
  endpointSelector: {}
  ingressDeny:
    - fromCIDRSet:
        - cidr: 203.0.113.0/24
          except: [203.0.113.128/25]
"""
    )
    rule = _rule(text)
    assert rule.selects_ingress and not rule.selects_egress
    assert _peer_strs(rule, "ingress_deny") == ["cidr:203.0.113.0/24 except 203.0.113.128/25"]


# -- invalid ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        pytest.param(
            "  ingress:\n    - fromEndpoints: [{}]\n      fromCIDR: [192.0.2.0/24]\n",
            "spec.ingress[0]",
            "in one rule is not allowed",
            id="mixed-l3",
        ),
        pytest.param(
            "  ingress:\n    - fromEntities: [wrld]\n",
            "spec.ingress[0].fromEntities[0]",
            "invalid value 'wrld'",
            id="bad-entity",
        ),
        pytest.param(
            "  egress:\n    - fromEndpoints: [{}]\n",
            "spec.egress[0].fromEndpoints",
            "unknown field 'fromEndpoints'",
            id="from-in-egress",
        ),
        pytest.param(
            "  ingress:\n    - toPorts: [{ports: [{port: '70000'}]}]\n",
            "spec.ingress[0].toPorts[0].ports[0].port",
            "invalid port 70000",
            id="bad-port",
        ),
        pytest.param(
            "  ingressDeny:\n    - fromEndpoints: [{}]\n      authentication: {mode: required}\n",
            "spec.ingressDeny[0].authentication",
            "unknown field 'authentication'",
            id="auth-on-deny",
        ),
    ],
)
def test_cnp_errors_are_located(body: str, field: str, message: str) -> None:
    err = one_error(CNP + "spec:\n  endpointSelector: {}\n" + body)
    assert err.location.path == field
    assert message in err.message


def test_mixed_l3_error_names_both_kinds() -> None:
    text = (
        CNP
        + "spec:\n  endpointSelector: {}\n  egress:\n"
        + "    - toEntities: [world]\n      toCIDR: [192.0.2.0/24]\n"
    )
    err = one_error(text)
    assert "toEntities" in err.message
    assert "toCIDR" in err.message
    assert err.hint


def test_cilium_policy_without_spec_or_specs() -> None:
    err = one_error(CNP)
    assert "needs spec or specs" in err.message


def test_too_many_ports_in_one_to_ports_entry() -> None:
    ports = ", ".join(f"{{port: '{p}'}}" for p in range(1, 42))
    body = f"  ingress: [{{toPorts: [{{ports: [{ports}]}}]}}]\n"
    err = one_error(CNP + "spec:\n  endpointSelector: {}\n" + body)
    assert "at most 40" in err.message


# -- unsupported fields -------------------------------------------------------------------------
UNSUPPORTED = [
    pytest.param(
        "  egress:\n    - toEndpoints: [{}]\n    - toFQDNs: [{matchName: example.com}]\n",
        "spec.egress[1].toFQDNs",
        "toFQDNs:",
        id="toFQDNs",
    ),
    pytest.param(
        "  ingress:\n    - toPorts:\n        - ports: [{port: '80'}]\n"
        "          rules: {http: [{method: GET}]}\n",
        "spec.ingress[0].toPorts[0].rules",
        "rules:",
        id="l7-rules",
    ),
    pytest.param(
        "  ingress:\n    - icmps: [{fields: [{type: 8}]}]\n",
        "spec.ingress[0].icmps",
        "icmps:",
        id="icmps",
    ),
    pytest.param(
        "  egress:\n    - toServices: [{k8sService: {serviceName: x, namespace: y}}]\n",
        "spec.egress[0].toServices",
        "toServices:",
        id="toServices",
    ),
    pytest.param(
        "  ingress:\n    - fromRequires: [{matchLabels: {env: prod}}]\n",
        "spec.ingress[0].fromRequires",
        "fromRequires:",
        id="fromRequires",
    ),
    pytest.param(
        "  ingress:\n    - fromCIDRSet:\n        - cidrGroupRef: office\n",
        "spec.ingress[0].fromCIDRSet[0].cidrGroupRef",
        "cidrGroupRef:",
        id="cidrGroupRef",
    ),
    pytest.param(
        "  nodeSelector: {matchLabels: {role: edge}}\n",
        "spec.nodeSelector",
        "nodeSelector:",
        id="nodeSelector",
    ),
    pytest.param(
        "  ingress:\n    - toPorts:\n        - ports: [{port: '443'}]\n"
        "          terminatingTLS: {secret: {name: x}}\n",
        "spec.ingress[0].toPorts[0].terminatingTLS",
        "terminatingTLS:",
        id="terminatingTLS",
    ),
]


@pytest.mark.parametrize(("body", "field", "needle"), UNSUPPORTED)
def test_unsupported_fields_are_reported_with_their_path(
    body: str, field: str, needle: str
) -> None:
    text = CNP + "spec:\n  endpointSelector: {}\n" + body
    err = one_error(text, "u.yaml")
    assert isinstance(err, UnsupportedFieldError)
    assert err.code == "unsupported-field"
    assert err.location.path == field
    assert err.location.file == "u.yaml"
    assert (err.location.line, err.location.column) == pos(text, needle)
    assert "not supported" in err.message


SKIPPABLE = (
    CNP
    + """\
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: a}}]
    - fromEndpoints: [{matchLabels: {app: b}}]
      toPorts:
        - ports: [{port: "80"}]
          rules: {http: [{method: GET}]}
  egress:
    - toFQDNs: [{matchName: example.com}]
      toPorts: [{ports: [{port: "443"}]}]
"""
)


def test_skip_unsupported_drops_only_the_allow_rule_holding_it(tmp_path: Path) -> None:
    path = tmp_path / "skip.yaml"
    path.write_text(SKIPPABLE)
    bundle = load([path], skip_unsupported=True)
    [policy] = bundle.policies
    [rule] = policy.rules
    # The ingress rule without L7 stays; the one with `rules` is gone.
    assert [[str(s) for s in e.peers or ()] for e in rule.ingress] == [
        ["app=a, k8s:io.kubernetes.pod.namespace=shop"]
    ]
    # The only egress rule is dropped, yet egress stays selected (default-deny), so dropping
    # narrows access rather than opening it.
    assert rule.egress == ()
    assert rule.selects_egress is True
    assert rule.selects_ingress is True
    assert rule.default_deny_egress is True
    # One warning per dropped rule, naming file, line and field.
    assert len(bundle.warnings) == 2
    l7 = next(w for w in bundle.warnings if "rules" in w)
    fqdn = next(w for w in bundle.warnings if "toFQDNs" in w)
    assert l7.startswith(f"{path}:{pos(SKIPPABLE, 'rules:')[0]}:")
    assert "spec.ingress[1].toPorts[0].rules" in l7
    assert "dropped" in l7
    assert fqdn.startswith(f"{path}:{pos(SKIPPABLE, 'toFQDNs:')[0]}:")
    assert "spec.egress[0].toFQDNs" in fqdn


def test_without_skip_unsupported_the_same_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "skip.yaml"
    path.write_text(SKIPPABLE)
    with pytest.raises(InputErrors) as info:
        load([path])
    [err] = info.value.errors
    assert err.code == "unsupported-field"
    assert "--skip-unsupported" in err.hint


def test_skip_unsupported_does_not_leak_into_later_loads(tmp_path: Path) -> None:
    path = tmp_path / "skip.yaml"
    path.write_text(SKIPPABLE)
    load([path], skip_unsupported=True)
    with pytest.raises(InputErrors):
        load([path])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(
            "  ingressDeny:\n    - icmps: [{fields: [{type: 8}]}]\n",
            "spec.ingressDeny[0].icmps",
            id="icmps-in-ingressDeny",
        ),
        pytest.param(
            "  egressDeny:\n    - toServices: [{k8sService: {serviceName: x}}]\n",
            "spec.egressDeny[0].toServices",
            id="toServices-in-egressDeny",
        ),
        pytest.param(
            "  ingressDeny:\n    - fromCIDRSet: [{cidrGroupRef: office}]\n",
            "spec.ingressDeny[0].fromCIDRSet[0].cidrGroupRef",
            id="cidrGroupRef-in-ingressDeny",
        ),
    ],
)
def test_skip_unsupported_never_drops_a_deny_rule(tmp_path: Path, body: str, field: str) -> None:
    path = tmp_path / "deny.yaml"
    path.write_text(CNP + "spec:\n  endpointSelector: {}\n" + body)
    with pytest.raises(InputErrors) as info:
        load([path], skip_unsupported=True)
    [err] = info.value.errors
    assert err.code == "unsupported-field"
    assert err.location.path == field


def test_node_selector_hint_matches_what_skip_unsupported_does(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    path.write_text(
        CCNP + "specs:\n  - nodeSelector: {}\n    ingress: [{fromEntities: [cluster]}]\n"
    )
    try:
        load([path], skip_unsupported=True)
    except InputErrors as exc:
        [err] = exc.errors
        assert err.code == "unsupported-field"
        assert "skip-unsupported" not in err.hint
