"""PortPolicy (cport.dev/v1alpha1): the full format into the model, and every kind of mistake
reported with file, line, column, field path, code and hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from cport.errors import InputErrors, PolicyError
from cport.identity import Labels
from cport.model import Mode, PeerRule, PortRange, Rule, load, load_text

from ._helpers import errors_of, loaded, one_error, pos

FULL = """\
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
metadata:
  name: full
  namespace: shop
spec:
  mode: audit
  description: every feature at once
  selector:
    matchLabels: {app: db}
    matchExpressions:
      - {key: tier, operator: In, values: [data, cache]}
      - {key: legacy, operator: DoesNotExist}
  enableDefaultDeny: {ingress: true, egress: false}
  ingress:
    - description: workloads and service accounts
      from:
        - workloads: {matchLabels: {app: api}}
        - workloads: {namespace: web, matchLabels: {app: front}}
        - workloads: {namespace: "*", matchLabels: {app: anywhere}}
        - workloads: {namespaceSelector: {matchLabels: {team: sre}}, matchLabels: {app: prom}}
        - serviceAccount: {namespace: monitoring, name: prometheus}
        - serviceAccount: {name: local-sa}
      ports:
        - port: 5432
        - port: postgres
        - {port: 6000, endPort: 6010, protocol: UDP}
        - {port: 7000, protocol: sctp}
        - {port: "9000"}
    - from:
        - users: {issuer: corp-okta, subject: alice, claims: {groups: [dba, ops], level: 3}}
        - aws: {arn: "arn:aws:iam::123456789012:role/ci-*"}
        - spiffe: {id: "spiffe://corp.example/ns/*/sa/deployer"}
        - agents:
            actor: {issuer: agents-idp, claims: {client_id: [copilot]}}
            onBehalfOf: {issuer: corp-okta, claims: {groups: [dba]}}
      ports: [{port: 5432}]
      authentication: required
    - from:
        - entities: [host, remote-node]
  ingressDeny:
    - from:
        - cidr: [203.0.113.0/24, "2001:db8::/32"]
        - cidrSet:
            - {cidr: 198.51.100.0/24, except: [198.51.100.128/25]}
      ports: [{port: 22}]
  egress:
    - to:
        - entities: [world]
      ports: [{port: 443, protocol: ANY}]
    - to:
        - entities: [all]
      ports: [{port: 53, protocol: UDP}]
  egressDeny:
    - to:
        - cidr: [198.51.100.0/24]
"""

HEAD = """\
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
metadata: {name: p, namespace: ns}
spec:
  selector: {matchLabels: {app: db}}
"""


@pytest.fixture(scope="module")
def full_rule() -> Rule:
    bundle = load_text(FULL, "full.yaml")
    [policy] = bundle.policies
    [rule] = policy.rules
    return rule


def _strs(peer_rule: PeerRule) -> list[str]:
    assert peer_rule.peers is not None
    return [str(s) for s in peer_rule.peers]


# -- the full policy ---------------------------------------------------------------------------
def test_full_policy_key_mode_and_location() -> None:
    [policy] = load_text(FULL, "full.yaml").policies
    assert str(policy.key) == "PortPolicy/shop/full"
    assert (policy.kind, policy.namespace, policy.name) == ("PortPolicy", "shop", "full")
    assert policy.mode is Mode.AUDIT
    assert policy.location.file == "full.yaml"
    assert policy.location.line == 1


def test_full_policy_subject_is_scoped_to_the_namespace(full_rule: Rule) -> None:
    assert {str(r) for r in full_rule.subject.requirements} == {
        "k8s:app=db",
        "k8s:io.kubernetes.pod.namespace=shop",
        "k8s:tier in (cache,data)",
        "!k8s:legacy",
    }
    assert str(full_rule.subject).startswith("k8s:app=db, k8s:io.kubernetes.pod.namespace=shop")
    assert full_rule.description == "every feature at once"
    assert (full_rule.location.line, full_rule.location.path) == (pos(FULL, "spec:")[0], "spec")


def test_full_policy_directions_and_default_deny(full_rule: Rule) -> None:
    assert full_rule.selects_ingress is True
    assert full_rule.selects_egress is True
    assert full_rule.default_deny_ingress is True
    assert full_rule.default_deny_egress is False
    assert len(full_rule.ingress) == 3
    assert len(full_rule.ingress_deny) == 1
    assert len(full_rule.egress) == 2
    assert len(full_rule.egress_deny) == 1


def test_full_policy_workload_and_service_account_peers(full_rule: Rule) -> None:
    first = full_rule.ingress[0]
    assert first.description == "workloads and service accounts"
    assert first.auth is False
    assert _strs(first) == [
        "k8s:app=api, k8s:io.kubernetes.pod.namespace=shop",
        "k8s:app=front, k8s:io.kubernetes.pod.namespace=web",
        "k8s:app=anywhere, k8s:io.kubernetes.pod.namespace",
        "k8s:app=prom, k8s:io.cilium.k8s.namespace.labels.team=sre, "
        "k8s:io.kubernetes.pod.namespace",
        "k8s:io.cilium.k8s.policy.serviceaccount=prometheus, "
        "k8s:io.kubernetes.pod.namespace=monitoring",
        "k8s:io.cilium.k8s.policy.serviceaccount=local-sa, k8s:io.kubernetes.pod.namespace=shop",
    ]
    assert first.location.path == "spec.ingress[0]"
    assert first.location.line == pos(FULL, "description: workloads")[0]


def test_full_policy_ports(full_rule: Rule) -> None:
    assert full_rule.ingress[0].ports == (
        PortRange("TCP", 5432, 5432),
        PortRange("TCP", 0, 0, "postgres"),
        PortRange("UDP", 6000, 6010),
        PortRange("SCTP", 7000, 7000),
        PortRange("TCP", 9000, 9000),
    )
    assert [str(p) for p in full_rule.ingress[0].ports or ()] == [
        "5432/TCP",
        "postgres/TCP",
        "6000-6010/UDP",
        "7000/SCTP",
        "9000/TCP",
    ]
    assert full_rule.ingress[2].ports is None  # omitted: every port
    assert full_rule.egress[0].ports == (PortRange("ANY", 443, 443),)
    assert full_rule.egress_deny[0].ports is None


def test_full_policy_identity_peers_and_authentication(full_rule: Rule) -> None:
    second = full_rule.ingress[1]
    assert second.auth is True
    users, aws, spiffe, agents = _strs(second)
    assert users == (
        "!agent:actor, oidc:groups in (dba,ops), oidc:iss=corp-okta, oidc:level=3, oidc:sub=alice"
    )
    assert aws == "aws:arn~(arn:aws:iam::123456789012:role/ci-*)"
    assert spiffe == "spiffe:id~(spiffe://corp.example/ns/*/sa/deployer)"
    assert agents == (
        "agent:actor, agent:client_id=copilot, agent:iss=agents-idp, oidc:groups=dba, "
        "oidc:iss=corp-okta"
    )
    assert full_rule.ingress[0].auth is False
    assert full_rule.ingress[2].auth is False


def test_full_policy_entities(full_rule: Rule) -> None:
    assert _strs(full_rule.ingress[2]) == ["reserved:host", "reserved:remote-node"]
    assert _strs(full_rule.egress[0]) == ["reserved:world"]
    assert full_rule.egress[1].peers is None  # entities: [all] is every peer


def test_full_policy_cidr_peers(full_rule: Rule) -> None:
    assert _strs(full_rule.ingress_deny[0]) == [
        "cidr:203.0.113.0/24",
        "cidr:2001:db8::/32",
        "cidr:198.51.100.0/24 except 198.51.100.128/25",
    ]
    assert full_rule.ingress_deny[0].ports == (PortRange("TCP", 22, 22),)
    assert _strs(full_rule.egress_deny[0]) == ["cidr:198.51.100.0/24"]


def test_users_selector_matches_people_but_never_agents(full_rule: Rule) -> None:
    assert full_rule.ingress[1].peers is not None
    users, aws, spiffe, agents = full_rule.ingress[1].peers
    alice = Labels.parse("oidc:iss=corp-okta,oidc:sub=alice,oidc:groups=dba,oidc:level=3")
    assert users.matches(alice)
    assert not users.matches(alice.union(Labels.parse("agent:actor=bot")))
    assert not users.matches(Labels.parse("oidc:iss=corp-okta,oidc:sub=bob,oidc:groups=dba"))
    assert not users.matches(Labels.parse("oidc:iss=corp-okta,oidc:sub=alice,oidc:level=3"))
    # Globs: `*` in ARNs and SPIFFE IDs.
    assert aws.matches(Labels.parse("aws:arn=arn:aws:iam::123456789012:role/ci-deploy"))
    assert not aws.matches(Labels.parse("aws:arn=arn:aws:iam::123456789012:role/admin"))
    assert spiffe.matches(Labels.parse("spiffe:id=spiffe://corp.example/ns/pay/sa/deployer"))
    assert not spiffe.matches(Labels.parse("spiffe:id=spiffe://corp.example/ns/pay/sa/other"))
    # Agents: the actor's claims and the person's claims must both hold.
    bot = Labels.parse(
        "agent:actor=bot-1,agent:iss=agents-idp,agent:client_id=copilot,"
        "oidc:iss=corp-okta,oidc:groups=dba"
    )
    assert agents.matches(bot)
    assert not agents.matches(Labels.parse("oidc:iss=corp-okta,oidc:groups=dba"))
    assert not agents.matches(
        Labels.parse(
            "agent:actor=bot-1,agent:iss=agents-idp,agent:client_id=copilot,"
            "oidc:iss=corp-okta,oidc:groups=ops"
        )
    )


def test_metadata_namespace_defaults_to_default() -> None:
    text = HEAD.replace("{name: p, namespace: ns}", "{name: p}") + "  ingress: []\n"
    [policy] = loaded(text).policies
    assert policy.namespace == "default"
    assert "k8s:io.kubernetes.pod.namespace=default" in str(policy.rules[0].subject)


def test_empty_ingress_list_still_selects_ingress() -> None:
    [policy] = loaded(HEAD + "  ingress: []\n").policies
    rule = policy.rules[0]
    assert (rule.selects_ingress, rule.selects_egress) == (True, False)
    assert rule.ingress == ()
    assert policy.mode is Mode.ENFORCE


def test_egress_deny_alone_selects_egress_only() -> None:
    [policy] = loaded(HEAD + "  egressDeny:\n    - to: [{entities: [world]}]\n").policies
    rule = policy.rules[0]
    assert (rule.selects_ingress, rule.selects_egress) == (False, True)
    assert rule.default_deny_ingress and rule.default_deny_egress


def test_rule_without_from_or_ports_means_every_peer_on_every_port() -> None:
    [policy] = loaded(HEAD + "  ingress:\n    - description: open\n").policies
    [entry] = policy.rules[0].ingress
    assert entry.peers is None
    assert entry.ports is None
    assert entry.description == "open"


def test_port_range_edge_values() -> None:
    text = HEAD + "  ingress:\n    - ports: [{port: 1}, {port: 65535}, {port: 1, endPort: 65535}]\n"
    [policy] = loaded(text).policies
    assert policy.rules[0].ingress[0].ports == (
        PortRange("TCP", 1, 1),
        PortRange("TCP", 65535, 65535),
        PortRange("TCP", 1, 65535),
    )


# -- errors: one per case, with location ------------------------------------------------------
def _case(body: str) -> str:
    return HEAD + body


ERROR_CASES = [
    # id, body, code, field path, needle locating the error, message part, hint part
    (
        "typo-ingres",
        "  ingres:\n    - {}\n",
        "unknown-field",
        "spec.ingres",
        "ingres:",
        "unknown field 'ingres'",
        "did you mean 'ingress'?",
    ),
    (
        "typo-in-peer",
        "  ingress:\n    - from: [{workloads: {matchLabel: {app: x}}}]\n",
        "unknown-field",
        "spec.ingress[0].from[0].workloads.matchLabel",
        "matchLabel:",
        "unknown field 'matchLabel'",
        "did you mean 'matchLabels'?",
    ),
    (
        "port-too-large",
        "  ingress:\n    - ports:\n        - port: 80\n        - port: 70000\n",
        "invalid-policy",
        "spec.ingress[0].ports[1].port",
        "port: 70000",
        "invalid port 70000",
        "1 to 65535",
    ),
    (
        "port-negative",
        "  ingress:\n    - ports: [{port: -1}]\n",
        "invalid-policy",
        "spec.ingress[0].ports[0].port",
        "port: -1",
        "invalid port -1",
        "1 to 65535",
    ),
    (
        "port-float",
        "  ingress:\n    - ports: [{port: 80.5}]\n",
        "invalid-policy",
        "spec.ingress[0].ports[0].port",
        "port: 80.5",
        "invalid port 80.5",
        "",
    ),
    (
        "port-boolean",
        "  ingress:\n    - ports: [{port: true}]\n",
        "invalid-policy",
        "spec.ingress[0].ports[0].port",
        "port: true",
        "invalid port",
        "",
    ),
    (
        "port-bad-name",
        "  ingress:\n    - ports: [{port: Http_Port}]\n",
        "invalid-policy",
        "spec.ingress[0].ports[0].port",
        "port: Http_Port",
        "invalid port 'Http_Port'",
        "port name",
    ),
    (
        "end-port-below-port",
        "  ingress:\n    - ports: [{port: 100, endPort: 90}]\n",
        "invalid-policy",
        "spec.ingress[0].ports[0].endPort",
        "endPort: 90",
        "endPort 90 is below port 100",
        "",
    ),
    (
        "end-port-too-large",
        "  ingress:\n    - ports: [{port: 100, endPort: 65536}]\n",
        "invalid-policy",
        "spec.ingress[0].ports[0].endPort",
        "endPort: 65536",
        "invalid endPort 65536",
        "",
    ),
    (
        "end-port-with-named-port",
        "  ingress:\n    - ports: [{port: http, endPort: 90}]\n",
        "invalid-policy",
        "spec.ingress[0].ports[0].endPort",
        "endPort: 90",
        "endPort needs a numeric port",
        "",
    ),
    (
        "bad-protocol",
        "  ingress:\n    - ports: [{port: 80, protocol: ICMP}]\n",
        "invalid-policy",
        "spec.ingress[0].ports[0].protocol",
        "protocol: ICMP",
        "invalid value 'ICMP'",
        "",
    ),
    (
        "empty-from",
        "  ingress:\n    - from: []\n",
        "invalid-policy",
        "spec.ingress[0].from",
        "from: []",
        "an empty list matches no peer",
        "omit the field",
    ),
    (
        "empty-ports",
        "  ingress:\n    - ports: []\n",
        "invalid-policy",
        "spec.ingress[0].ports",
        "ports: []",
        "matches nothing",
        "",
    ),
    (
        "peer-with-two-kinds",
        "  ingress:\n    - from:\n        - {cidr: [198.51.100.0/24], entities: [world]}\n",
        "invalid-policy",
        "spec.ingress[0].from[0]",
        "{cidr:",
        "a peer needs exactly one of",
        "two list items",
    ),
    (
        "peer-with-no-kind",
        "  ingress:\n    - from:\n        - {}\n",
        "invalid-policy",
        "spec.ingress[0].from[0]",
        "{}\n",
        "a peer needs exactly one of",
        "",
    ),
    (
        "unknown-entity",
        "  ingress:\n    - from:\n        - entities: [world, wrld]\n",
        "invalid-policy",
        "spec.ingress[0].from[0].entities[1]",
        "wrld",
        "invalid value 'wrld'",
        "did you mean 'world'?",
    ),
    (
        "bad-cidr",
        "  ingress:\n    - from:\n        - cidr: [198.51.100.300/24]\n",
        "invalid-policy",
        "spec.ingress[0].from[0].cidr[0]",
        "198.51.100.300/24",
        "invalid CIDR '198.51.100.300/24'",
        "203.0.113.0/24",
    ),
    (
        "except-outside-cidr",
        "  ingress:\n    - from:\n        - cidrSet:\n            - cidr: 198.51.100.0/24\n"
        "              except: [198.51.100.0/26, 203.0.113.0/26]\n",
        "invalid-policy",
        "spec.ingress[0].from[0].cidrSet[0].except[1]",
        "203.0.113.0/26",
        "except 203.0.113.0/26 is not inside 198.51.100.0/24",
        "",
    ),
    (
        "except-other-family",
        "  ingress:\n    - from:\n        - cidrSet:\n            - cidr: 198.51.100.0/24\n"
        "              except: ['2001:db8::/64']\n",
        "invalid-policy",
        "spec.ingress[0].from[0].cidrSet[0].except[0]",
        "'2001:db8::/64'",
        "is not inside 198.51.100.0/24",
        "",
    ),
    (
        "authentication-on-egress",
        "  egress:\n    - to: [{entities: [world]}]\n      authentication: required\n",
        "invalid-policy",
        "spec.egress[0].authentication",
        "authentication:",
        "authentication applies only to ingress allow rules",
        "",
    ),
    (
        "authentication-on-ingress-deny",
        "  ingressDeny:\n    - from: [{entities: [world]}]\n      authentication: required\n",
        "invalid-policy",
        "spec.ingressDeny[0].authentication",
        "authentication:",
        "authentication applies only to ingress allow rules",
        "",
    ),
    (
        "authentication-bad-value",
        "  ingress:\n    - authentication: requird\n",
        "invalid-policy",
        "spec.ingress[0].authentication",
        "authentication:",
        "invalid value 'requird'",
        "did you mean 'required'?",
    ),
    (
        "bad-mode",
        "  mode: audt\n  ingress: []\n",
        "invalid-policy",
        "spec.mode",
        "mode:",
        "invalid value 'audt'",
        "did you mean 'audit'?",
    ),
    (
        "users-unconstrained",
        "  ingress:\n    - from: [{users: {}}]\n",
        "invalid-policy",
        "spec.ingress[0].from[0].users",
        "users:",
        "users needs an issuer, a subject or claims",
        "",
    ),
    (
        "spiffe-not-a-spiffe-id",
        "  ingress:\n    - from: [{spiffe: {id: corp/x}}]\n",
        "invalid-policy",
        "spec.ingress[0].from[0].spiffe.id",
        "id: corp/x",
        "invalid SPIFFE ID 'corp/x'",
        "spiffe://",
    ),
    (
        "agents-without-actor",
        "  ingress:\n    - from: [{agents: {onBehalfOf: {issuer: x}}}]\n",
        "invalid-policy",
        "spec.ingress[0].from[0].agents",
        "agents:",
        "missing required field 'actor'",
        "",
    ),
    (
        "namespace-and-namespace-selector",
        "  ingress:\n    - from: [{workloads: {namespace: a, namespaceSelector: {}}}]\n",
        "invalid-policy",
        "spec.ingress[0].from[0].workloads.namespace",
        "namespace: a",
        "not both",
        "",
    ),
    (
        "bad-selector-operator",
        "  egress:\n    - to:\n        - workloads:\n            matchExpressions:\n"
        "              - {key: a, operator: in, values: [x]}\n",
        "invalid-policy",
        "spec.egress[0].to[0].workloads.matchExpressions[0].operator",
        "operator: in",
        "invalid value 'in'",
        "did you mean 'In'?",
    ),
    (
        "in-without-values",
        "  egress:\n    - to:\n        - workloads:\n            matchExpressions:\n"
        "              - {key: a, operator: In}\n",
        "invalid-policy",
        "spec.egress[0].to[0].workloads.matchExpressions[0]",
        "{key: a",
        "needs a non-empty 'values' list",
        "",
    ),
    (
        "ingress-not-a-list",
        "  ingress: {from: []}\n",
        "invalid-policy",
        "spec.ingress",
        "ingress:",
        "expected a list, got a mapping",
        "",
    ),
    (
        "default-deny-not-boolean",
        "  enableDefaultDeny: {ingress: 'no'}\n  ingress: []\n",
        "invalid-policy",
        "spec.enableDefaultDeny.ingress",
        "ingress: 'no'",
        "expected true or false",
        "",
    ),
]


@pytest.mark.parametrize(
    ("body", "code", "field", "needle", "message", "hint"),
    [pytest.param(*case[1:], id=case[0]) for case in ERROR_CASES],
)
def test_policy_error_is_located(
    body: str, code: str, field: str, needle: str, message: str, hint: str
) -> None:
    text = _case(body)
    err = one_error(text, "pol.yaml")
    assert err.code == code
    assert isinstance(err, PolicyError)
    assert err.location.file == "pol.yaml"
    assert err.location.path == field
    assert (err.location.line, err.location.column) == pos(text, needle)
    assert message in err.message
    assert hint in err.hint
    # The JSON form carries the same facts.
    as_json = err.to_json()
    assert as_json["file"] == "pol.yaml"
    assert as_json["field"] == field
    assert as_json["code"] == code
    assert (as_json["line"], as_json["column"]) == pos(text, needle)


def test_missing_selector() -> None:
    text = (
        "apiVersion: cport.dev/v1alpha1\nkind: PortPolicy\nmetadata: {name: p, namespace: ns}\n"
        "spec:\n  ingress: []\n"
    )
    err = one_error(text)
    assert err.code == "invalid-policy"
    assert err.location.path == "spec"
    assert err.location.line == 4
    assert "missing required field 'selector'" in err.message
    assert "matchLabels" in err.hint


def test_missing_spec_and_metadata_name() -> None:
    no_spec = "apiVersion: cport.dev/v1alpha1\nkind: PortPolicy\nmetadata: {name: p}\n"
    assert "missing required field 'spec'" in one_error(no_spec).message
    no_name = (
        "apiVersion: cport.dev/v1alpha1\nkind: PortPolicy\nmetadata: {namespace: x}\n"
        "spec: {selector: {}, ingress: []}\n"
    )
    err = one_error(no_name)
    assert err.location.path == "metadata"
    assert "missing required field 'name'" in err.message


@pytest.mark.parametrize("version", ["cport.dev/v1", "cport.dev/v1beta1", "v1"])
def test_wrong_api_version_has_a_hint(version: str) -> None:
    text = (
        f"apiVersion: {version}\nkind: PortPolicy\nmetadata: {{name: p}}\n"
        "spec: {selector: {}, ingress: []}\n"
    )
    err = one_error(text, "v.yaml")
    assert err.code == "unknown-kind"
    assert err.location.path == "apiVersion"
    assert (err.location.line, err.location.column) == (1, 1)
    assert version in err.message
    assert "cport.dev/v1alpha1" in err.hint


def test_policy_that_says_nothing_is_rejected() -> None:
    err = one_error(HEAD + "  description: nothing here\n")
    assert err.code == "empty-policy"
    assert err.location.path == "spec"
    assert err.location.line == pos(HEAD, "spec:")[0]


def test_duplicate_policy_across_two_files(tmp_path: Path) -> None:
    text = HEAD + "  ingress: []\n"
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text("# the same policy again\n" + text)
    with pytest.raises(InputErrors) as info:
        load([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    [err] = info.value.errors
    assert err.code == "duplicate-policy"
    assert err.location.file == str(tmp_path / "b.yaml")
    assert err.location.line == 2
    assert "PortPolicy/ns/p is defined twice" in err.message
    assert f"{tmp_path / 'a.yaml'}:1:1" in err.message


def test_same_name_in_other_namespace_or_kind_is_not_a_duplicate() -> None:
    other_ns = HEAD.replace("namespace: ns", "namespace: other") + "  ingress: []\n"
    netpol = (
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
        "metadata: {name: p, namespace: ns}\nspec: {podSelector: {}}\n"
    )
    bundle = loaded(HEAD + "  ingress: []\n---\n" + other_ns + "---\n" + netpol)
    assert sorted(str(p.key) for p in bundle.policies) == [
        "NetworkPolicy/ns/p",
        "PortPolicy/ns/p",
        "PortPolicy/other/p",
    ]


def test_every_error_in_every_document_and_file_is_reported_at_once(tmp_path: Path) -> None:
    first = (
        _case("  ingres: []\n")
        + "---\n"
        + _case("  ingress:\n    - ports: [{port: 99999}]\n").replace("name: p,", "name: q,")
    )
    second = _case("  egress:\n    - to: [{entities: [moon]}]\n").replace("name: p,", "name: r,")
    (tmp_path / "one.yaml").write_text(first)
    (tmp_path / "two.yaml").write_text(second)
    with pytest.raises(InputErrors) as info:
        load([tmp_path])
    errs = info.value.errors
    assert len(errs) == 3
    assert str(info.value).count("\n") == 2
    found = {(Path(e.location.file).name, e.location.path, e.location.line) for e in errs}
    assert found == {
        ("one.yaml", "spec.ingres", pos(first, "ingres:")[0]),
        ("one.yaml", "spec.ingress[0].ports[0].port", pos(first, "port: 99999")[0]),
        ("two.yaml", "spec.egress[0].to[0].entities[0]", pos(second, "moon")[0]),
    }


def test_one_error_per_document_even_with_several_mistakes() -> None:
    text = _case("  ingress:\n    - ports: [{port: 99999}]\n  egres: []\n")
    assert len(errors_of(text)) == 1


def test_yaml_syntax_error_does_not_hide_other_files_errors(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("a: [1,\n")
    (tmp_path / "b.yaml").write_text(_case("  ingres: []\n"))
    with pytest.raises(InputErrors) as info:
        load([tmp_path])
    assert sorted(e.code for e in info.value.errors) == ["invalid-yaml", "unknown-field"]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("  ingress:\n    - from: [{workloads: {matchLabels: 3}}]\n", id="labels-int"),
        pytest.param(
            "  ingress:\n    - from: [{users: {issuer: x, claims: 7}}]\n", id="claims-int"
        ),
        pytest.param(
            "  ingress:\n    - from: [{users: {issuer: x, claims: [{a: b}]}}]\n",
            id="claims-list",
        ),
    ],
)
def test_non_mapping_labels_or_claims_are_located_errors(body: str) -> None:
    err = one_error(_case(body))
    assert err.code == "invalid-policy"
    assert "expected a mapping" in err.message
