"""The L3/L4 policy examples of Cilium's documentation, checked through cport's public API.

Each test cites the section of the Cilium documentation (repository cilium/cilium) whose
example it re-creates: ``Documentation/security/policy/language.rst`` (split in newer releases
into ``layer3.rst`` and ``layer4.rst``), ``intro.rst``, ``deny.rst`` and ``kubernetes.rst``,
with the YAML under ``examples/policies/``. The policies here are written afresh (equivalent,
not copied) and the flows checked are the ones each section says are allowed or denied.

Addresses: every address and CIDR in this file is from the documentation ranges
192.0.2.0/24, 198.51.100.0/24 and 203.0.113.0/24; where a Cilium example uses other
addresses the test says how they were translated.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from textwrap import dedent

import pytest
import yaml

from cport.engine import (
    Decision,
    Endpoint,
    Flow,
    Reason,
    Table,
    Verdict,
    compile_table,
    decide,
    explain,
    resolve_endpoint,
)
from cport.errors import InputErrors
from cport.model import Inventory, load_text

ALLOWED = Verdict.ALLOWED
DENIED = Verdict.DENIED
PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
_ALLOWING_REASONS = {Reason.ALLOWED, Reason.NOT_SELECTED, Reason.NO_DEFAULT_DENY}


# -- helpers -----------------------------------------------------------------------------------
def workload(
    ref: str, labels: dict[str, str] | None = None, *, addresses: Iterable[str] = ()
) -> str:
    """A cport Workload document for ``NAMESPACE/NAME``."""
    namespace, _, name = ref.partition("/")
    spec: dict[str, object] = {"serviceAccount": "default"}
    if addresses:
        spec["addresses"] = list(addresses)
    doc = {
        "apiVersion": "cport.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": spec,
    }
    return yaml.safe_dump(doc, sort_keys=False)


def namespace(name: str, labels: dict[str, str] | None = None) -> str:
    doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    if labels:
        doc["metadata"]["labels"] = dict(labels)  # type: ignore[index]
    return yaml.safe_dump(doc, sort_keys=False)


@dataclass
class Cluster:
    """A compiled table plus the inventory it was compiled against."""

    table: Table
    inventory: Inventory

    def endpoint(self, spec: str) -> Endpoint:
        return resolve_endpoint(self.table, self.inventory, spec)

    def flow(self, src: str, dst: str, port: str) -> Flow:
        proto, _, number = port.partition("/")
        return Flow(
            self.endpoint(src).identity,
            self.endpoint(dst).identity,
            PROTOCOLS[proto],
            int(number),
        )

    def decide(self, src: str, dst: str, port: str) -> Decision:
        return decide(self.table, self.flow(src, dst, port))

    def explain(self, src: str, dst: str, port: str) -> dict[str, object]:
        return explain(
            self.table, self.flow(src, dst, port), self.endpoint(src), self.endpoint(dst)
        ).to_json()


def cluster(policies: str | tuple[str, ...], *inventory: str) -> Cluster:
    """Load policy YAML (one text, or several joined as separate documents) and inventory
    documents, and compile them."""
    parts = (policies,) if isinstance(policies, str) else policies
    text = "\n---\n".join([*(dedent(p).strip() for p in parts), *inventory])
    bundle = load_text(text, "t.yaml")
    return Cluster(compile_table(bundle.policies, bundle.inventory), bundle.inventory)


Expect = Verdict | Reason
Case = tuple[str, str, str, Expect]


def check(c: Cluster, cases: Iterable[Case]) -> None:
    """Every (src, dst, "PROTO/PORT", expected) case must hold. An expected Reason also fixes
    the verdict it implies (allowed for allowed/not-selected/no-default-deny, else denied)."""
    wrong = []
    for src, dst, port, want in cases:
        d = c.decide(src, dst, port)
        if isinstance(want, Reason):
            verdict = ALLOWED if want in _ALLOWING_REASONS else DENIED
            ok = d.reason is want and d.verdict is verdict
        else:
            ok = d.verdict is want
        if not ok:
            wrong.append(
                f"{src} -> {dst} {port}: want {want.value}, "
                f"got {d.verdict.value} ({d.reason.value})"
            )
    assert not wrong, "\n".join(wrong)


def indented(text: str, width: int) -> str:
    """`text` with every line indented by `width` spaces (to splice rules into a policy)."""
    return "\n".join(" " * width + line for line in text.splitlines())


def rejected(policies: str) -> list[str]:
    """The error messages cport gives for a policy it must refuse (fails if it loads)."""
    with pytest.raises(InputErrors) as info:
        load_text(dedent(policies).strip(), "t.yaml")
    return [f"{e.code}: {e.location.path}: {e.message}" for e in info.value.errors]


# -- Layer 3: endpoints ------------------------------------------------------------------------
PODS = (
    workload("default/frontend", {"role": "frontend"}),
    workload("default/backend", {"role": "backend"}),
    workload("default/other", {"role": "other"}),
    workload("ns2/frontend", {"role": "frontend"}),
    workload("ns2/backend", {"role": "backend"}),
)


def test_simple_ingress_allow() -> None:
    """Cilium docs, Documentation/security/policy/language.rst (layer3.rst), "Simple Ingress
    Allow": role=backend accepts traffic from role=frontend (every port), nobody else."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: backend-from-frontend, namespace: default}
        spec:
          endpointSelector: {matchLabels: {role: backend}}
          ingress:
          - fromEndpoints:
            - matchLabels: {role: frontend}
        """,
        *PODS,
    )
    check(
        c,
        [
            ("default/frontend", "default/backend", "TCP/80", Reason.ALLOWED),
            ("default/frontend", "default/backend", "UDP/5353", Reason.ALLOWED),
            ("default/other", "default/backend", "TCP/80", Reason.DEFAULT_DENY),
            ("entity:world", "default/backend", "TCP/80", Reason.DEFAULT_DENY),
            ("entity:remote-node", "default/backend", "TCP/80", Reason.DEFAULT_DENY),
            # A namespaced policy's fromEndpoints only sees its own namespace.
            ("ns2/frontend", "default/backend", "TCP/80", Reason.DEFAULT_DENY),
            # The policy selects only role=backend in its namespace, and only ingress.
            ("default/other", "ns2/backend", "TCP/80", Reason.NOT_SELECTED),
            ("default/backend", "default/frontend", "TCP/80", Reason.NOT_SELECTED),
        ],
    )


def test_ingress_allow_all_endpoints() -> None:
    """Cilium docs, Documentation/security/policy/language.rst (layer3.rst), "Ingress Allow All
    Endpoints": ``fromEndpoints: [{}]`` in a CiliumNetworkPolicy admits every pod of the
    policy's namespace (kubernetes.rst, "Namespaces"), not pods elsewhere and not world."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: allow-all-to-victim, namespace: default}
        spec:
          endpointSelector: {matchLabels: {role: victim}}
          ingress:
          - fromEndpoints:
            - {}
        """,
        *PODS,
        workload("default/victim", {"role": "victim"}),
    )
    check(
        c,
        [
            ("default/frontend", "default/victim", "TCP/80", Reason.ALLOWED),
            ("default/other", "default/victim", "UDP/9999", Reason.ALLOWED),
            ("ns2/frontend", "default/victim", "TCP/80", Reason.DEFAULT_DENY),
            ("entity:world", "default/victim", "TCP/80", Reason.DEFAULT_DENY),
            ("entity:remote-node", "default/victim", "TCP/80", Reason.DEFAULT_DENY),
            ("entity:kube-apiserver", "default/victim", "TCP/80", Reason.DEFAULT_DENY),
            # allow-localhost (see "Access to/from local host").
            ("entity:host", "default/victim", "TCP/80", Reason.ALLOWED),
        ],
    )


def test_simple_egress_allow() -> None:
    """Cilium docs, Documentation/security/policy/language.rst (layer3.rst), "Simple Egress
    Allow": role=frontend may send to role=backend only."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: frontend-to-backend, namespace: default}
        spec:
          endpointSelector: {matchLabels: {role: frontend}}
          egress:
          - toEndpoints:
            - matchLabels: {role: backend}
        """,
        *PODS,
    )
    check(
        c,
        [
            ("default/frontend", "default/backend", "TCP/80", Reason.ALLOWED),
            ("default/frontend", "default/backend", "UDP/53", Reason.ALLOWED),
            ("default/frontend", "default/other", "TCP/80", Reason.DEFAULT_DENY),
            ("default/frontend", "ns2/backend", "TCP/80", Reason.DEFAULT_DENY),
            ("default/frontend", "entity:world", "TCP/443", Reason.DEFAULT_DENY),
            ("default/frontend", "entity:kube-apiserver", "TCP/443", Reason.DEFAULT_DENY),
            ("default/frontend", "entity:host", "TCP/10250", Reason.DEFAULT_DENY),
            # Unselected senders are unaffected.
            ("default/other", "entity:world", "TCP/443", Reason.NOT_SELECTED),
            ("ns2/frontend", "default/other", "TCP/80", Reason.NOT_SELECTED),
        ],
    )


def test_egress_allow_all_endpoints() -> None:
    """Cilium docs, Documentation/security/policy/language.rst (layer3.rst), "Egress Allow All
    Endpoints": ``toEndpoints: [{}]`` lets role=frontend reach every endpoint in the policy's
    namespace, and nothing outside it."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: allow-all-from-frontend, namespace: default}
        spec:
          endpointSelector: {matchLabels: {role: frontend}}
          egress:
          - toEndpoints:
            - {}
        """,
        *PODS,
    )
    check(
        c,
        [
            ("default/frontend", "default/backend", "TCP/80", Reason.ALLOWED),
            ("default/frontend", "default/other", "UDP/53", Reason.ALLOWED),
            ("default/frontend", "ns2/backend", "TCP/80", Reason.DEFAULT_DENY),
            ("default/frontend", "entity:world", "TCP/443", Reason.DEFAULT_DENY),
            ("default/frontend", "entity:host", "TCP/443", Reason.DEFAULT_DENY),
            ("default/frontend", "entity:remote-node", "TCP/443", Reason.DEFAULT_DENY),
        ],
    )


def test_egress_default_deny() -> None:
    """Cilium docs, Documentation/security/policy/language.rst (layer3.rst), "Ingress/Egress
    Default Deny": a rule selecting role=restricted with ``egress: [{}]`` puts its egress in
    default deny without allowing any peer; its ingress is untouched."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: deny-all-egress, namespace: default}
        spec:
          endpointSelector: {matchLabels: {role: restricted}}
          egress:
          - {}
        """,
        *PODS,
        workload("default/restricted", {"role": "restricted"}),
    )
    check(
        c,
        [
            ("default/restricted", "default/backend", "TCP/80", Reason.DEFAULT_DENY),
            ("default/restricted", "default/backend", "UDP/53", Reason.DEFAULT_DENY),
            ("default/restricted", "ns2/backend", "TCP/80", Reason.DEFAULT_DENY),
            ("default/restricted", "entity:world", "TCP/443", Reason.DEFAULT_DENY),
            ("default/restricted", "entity:host", "TCP/443", Reason.DEFAULT_DENY),
            ("default/restricted", "entity:kube-apiserver", "TCP/443", Reason.DEFAULT_DENY),
            ("default/frontend", "default/restricted", "TCP/80", Reason.NOT_SELECTED),
            ("entity:world", "default/restricted", "TCP/80", Reason.NOT_SELECTED),
            ("default/frontend", "entity:world", "TCP/443", Reason.NOT_SELECTED),
        ],
    )


def test_ingress_default_deny() -> None:
    """Cilium docs, Documentation/security/policy/language.rst (layer3.rst), "Ingress/Egress
    Default Deny", ingress side: ``ingress: [{}]`` denies every peer (the local host is still
    admitted by allow-localhost); egress is untouched."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: deny-all-ingress, namespace: default}
        spec:
          endpointSelector: {matchLabels: {role: restricted}}
          ingress:
          - {}
        """,
        *PODS,
        workload("default/restricted", {"role": "restricted"}),
    )
    check(
        c,
        [
            ("default/frontend", "default/restricted", "TCP/80", Reason.DEFAULT_DENY),
            ("entity:world", "default/restricted", "TCP/80", Reason.DEFAULT_DENY),
            ("entity:remote-node", "default/restricted", "TCP/80", Reason.DEFAULT_DENY),
            ("entity:host", "default/restricted", "TCP/80", Reason.ALLOWED),
            ("default/restricted", "default/frontend", "TCP/80", Reason.NOT_SELECTED),
            ("default/restricted", "entity:world", "TCP/443", Reason.NOT_SELECTED),
        ],
    )


# -- Layer 3: entities -------------------------------------------------------------------------
ENV_PODS = (
    workload("default/dev", {"env": "dev"}),
    workload("default/prod", {"env": "prod"}),
)


def test_access_to_kube_apiserver() -> None:
    """Cilium docs, Documentation/security/policy/language.rst (layer3.rst), "Access to/from
    kube-apiserver": env=dev may reach the kube-apiserver entity, and nothing else."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: dev-to-kube-apiserver, namespace: default}
        spec:
          endpointSelector: {matchLabels: {env: dev}}
          egress:
          - toEntities: [kube-apiserver]
        """,
        *ENV_PODS,
    )
    check(
        c,
        [
            ("default/dev", "entity:kube-apiserver", "TCP/443", Reason.ALLOWED),
            ("default/dev", "entity:kube-apiserver", "TCP/6443", Reason.ALLOWED),
            ("default/dev", "entity:host", "TCP/443", Reason.DEFAULT_DENY),
            ("default/dev", "entity:remote-node", "TCP/443", Reason.DEFAULT_DENY),
            ("default/dev", "entity:world", "TCP/443", Reason.DEFAULT_DENY),
            ("default/dev", "default/prod", "TCP/443", Reason.DEFAULT_DENY),
            ("default/prod", "entity:world", "TCP/443", Reason.NOT_SELECTED),
        ],
    )


def test_access_to_local_host() -> None:
    """Cilium docs, Documentation/security/policy/language.rst (layer3.rst), "Access to/from
    local host": env=dev may reach the host entity only. The section's note: Kubernetes
    always allows the local host to reach local endpoints (allow-localhost)."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: dev-to-host, namespace: default}
        spec:
          endpointSelector: {matchLabels: {env: dev}}
          egress:
          - toEntities: [host]
        """,
        *ENV_PODS,
    )
    check(
        c,
        [
            ("default/dev", "entity:host", "TCP/10250", Reason.ALLOWED),
            ("default/dev", "entity:host", "UDP/53", Reason.ALLOWED),
            ("default/dev", "entity:remote-node", "TCP/10250", Reason.DEFAULT_DENY),
            ("default/dev", "entity:world", "TCP/443", Reason.DEFAULT_DENY),
            ("default/dev", "default/prod", "TCP/80", Reason.DEFAULT_DENY),
            # This policy governs egress only: ingress from the host is not selected.
            ("entity:host", "default/dev", "TCP/8080", Reason.NOT_SELECTED),
        ],
    )


def test_access_from_all_nodes() -> None:
    """Cilium docs, Documentation/security/policy/language.rst (layer3.rst), "Access to/from
    all nodes in the cluster": env=dev accepts traffic from the host and remote-node entities
    only."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: to-dev-from-nodes-in-cluster, namespace: default}
        spec:
          endpointSelector: {matchLabels: {env: dev}}
          ingress:
          - fromEntities: [host, remote-node]
        """,
        *ENV_PODS,
    )
    check(
        c,
        [
            ("entity:host", "default/dev", "TCP/8080", Reason.ALLOWED),
            ("entity:remote-node", "default/dev", "TCP/8080", Reason.ALLOWED),
            ("entity:remote-node", "default/dev", "UDP/8472", Reason.ALLOWED),
            ("entity:world", "default/dev", "TCP/8080", Reason.DEFAULT_DENY),
            ("default/prod", "default/dev", "TCP/8080", Reason.DEFAULT_DENY),
            ("entity:remote-node", "default/prod", "TCP/8080", Reason.NOT_SELECTED),
        ],
    )


def test_access_from_outside_cluster() -> None:
    """Cilium docs, Documentation/security/policy/language.rst (layer3.rst), "Access to/from
    outside cluster": role=public accepts traffic from the world entity, which covers every
    external address, including ones a CIDR rule elsewhere gave their own identity
    (203.0.113.0/24 here, named by an unrelated egress policy)."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: from-world-to-role-public, namespace: default}
        spec:
          endpointSelector: {matchLabels: {role: public}}
          ingress:
          - fromEntities: [world]
        ---
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: names-a-cidr, namespace: default}
        spec:
          endpointSelector: {matchLabels: {role: other}}
          egress:
          - toCIDR: [203.0.113.0/24]
        """,
        *PODS,
        workload("default/public", {"role": "public"}),
    )
    assert c.endpoint("cidr:203.0.113.7").identity != c.endpoint("entity:world").identity
    check(
        c,
        [
            ("entity:world", "default/public", "TCP/443", Reason.ALLOWED),
            ("cidr:203.0.113.7", "default/public", "TCP/443", Reason.ALLOWED),
            ("cidr:198.51.100.7", "default/public", "UDP/443", Reason.ALLOWED),
            ("default/frontend", "default/public", "TCP/443", Reason.DEFAULT_DENY),
            ("entity:remote-node", "default/public", "TCP/443", Reason.DEFAULT_DENY),
        ],
    )


# -- Layer 3: CIDR -----------------------------------------------------------------------------
def test_allow_to_external_cidr_block() -> None:
    """Cilium docs, Documentation/security/policy/language.rst (layer3.rst), "Allow to external
    CIDR block": app=myService may reach one external address and a prefix minus an excepted
    sub-prefix. Translated to documentation ranges: the doc's single external /32 becomes
    203.0.113.1/32, and its private /8 with an excepted /12 becomes 198.51.100.0/24 except
    198.51.100.128/25; the doc's allowed, excepted and unlisted addresses map to
    198.51.100.7, 198.51.100.200 and 203.0.113.2."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: cidr-rule, namespace: default}
        spec:
          endpointSelector: {matchLabels: {app: myService}}
          egress:
          - toCIDR: [203.0.113.1/32]
          - toCIDRSet:
            - cidr: 198.51.100.0/24
              except: [198.51.100.128/25]
        """,
        workload("default/svc", {"app": "myService"}),
        workload("default/peer", {"app": "peer"}),
    )
    svc = "default/svc"
    check(
        c,
        [
            (svc, "cidr:203.0.113.1", "TCP/443", Reason.ALLOWED),
            (svc, "cidr:203.0.113.1", "UDP/53", Reason.ALLOWED),
            (svc, "cidr:203.0.113.2", "TCP/443", Reason.DEFAULT_DENY),
            (svc, "cidr:198.51.100.7", "TCP/443", Reason.ALLOWED),
            (svc, "cidr:198.51.100.127", "TCP/443", Reason.ALLOWED),
            (svc, "cidr:198.51.100.128", "TCP/443", Reason.DEFAULT_DENY),
            (svc, "cidr:198.51.100.200", "TCP/443", Reason.DEFAULT_DENY),
            (svc, "cidr:192.0.2.1", "TCP/443", Reason.DEFAULT_DENY),
            (svc, "entity:world", "TCP/443", Reason.DEFAULT_DENY),
            (svc, "default/peer", "TCP/443", Reason.DEFAULT_DENY),
        ],
    )


# -- Layer 4 -----------------------------------------------------------------------------------
def test_l4_example() -> None:
    """Cilium docs, Documentation/security/policy/language.rst (layer4.rst), "Example (L4)":
    app=myService may only send TCP to port 80, to any layer 3 destination."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: l4-rule, namespace: default}
        spec:
          endpointSelector: {matchLabels: {app: myService}}
          egress:
          - toPorts:
            - ports:
              - {port: "80", protocol: TCP}
        """,
        workload("default/svc", {"app": "myService"}),
        workload("ns2/web", {"app": "web"}),
    )
    svc = "default/svc"
    check(
        c,
        [
            (svc, "entity:world", "TCP/80", Reason.ALLOWED),
            (svc, "cidr:203.0.113.9", "TCP/80", Reason.ALLOWED),
            (svc, "ns2/web", "TCP/80", Reason.ALLOWED),
            (svc, "entity:host", "TCP/80", Reason.ALLOWED),
            (svc, "entity:world", "UDP/80", Reason.DEFAULT_DENY),
            (svc, "entity:world", "TCP/443", Reason.DEFAULT_DENY),
            (svc, "ns2/web", "TCP/8080", Reason.DEFAULT_DENY),
            (svc, "ns2/web", "SCTP/80", Reason.DEFAULT_DENY),
        ],
    )


def test_l4_port_ranges() -> None:
    """Cilium docs, Documentation/security/policy/language.rst (layer4.rst), "Example Port
    Ranges": ``port: 80, endPort: 444`` (TCP) allows exactly TCP 80 through 444."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: l4-port-range-rule, namespace: default}
        spec:
          endpointSelector: {matchLabels: {app: myService}}
          egress:
          - toPorts:
            - ports:
              - {port: "80", endPort: 444, protocol: TCP}
        """,
        workload("default/svc", {"app": "myService"}),
    )
    svc, world = "default/svc", "entity:world"
    check(
        c,
        [
            (svc, world, "TCP/80", Reason.ALLOWED),
            (svc, world, "TCP/81", Reason.ALLOWED),
            (svc, world, "TCP/443", Reason.ALLOWED),
            (svc, world, "TCP/444", Reason.ALLOWED),
            (svc, world, "TCP/79", Reason.DEFAULT_DENY),
            (svc, world, "TCP/445", Reason.DEFAULT_DENY),
            (svc, world, "UDP/100", Reason.DEFAULT_DENY),
        ],
    )


def test_labels_dependent_l4_rule() -> None:
    """Cilium docs, Documentation/security/policy/language.rst (layer4.rst), "Labels-dependent
    Layer 4 rule": role=backend accepts role=frontend on TCP/80 only; other endpoints not at
    all."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: l4-rule, namespace: default}
        spec:
          endpointSelector: {matchLabels: {role: backend}}
          ingress:
          - fromEndpoints:
            - matchLabels: {role: frontend}
            toPorts:
            - ports:
              - {port: "80", protocol: TCP}
        """,
        *PODS,
    )
    check(
        c,
        [
            ("default/frontend", "default/backend", "TCP/80", Reason.ALLOWED),
            ("default/frontend", "default/backend", "TCP/8080", Reason.DEFAULT_DENY),
            ("default/frontend", "default/backend", "UDP/80", Reason.DEFAULT_DENY),
            ("default/other", "default/backend", "TCP/80", Reason.DEFAULT_DENY),
            ("entity:world", "default/backend", "TCP/80", Reason.DEFAULT_DENY),
        ],
    )


def test_cidr_dependent_l4_rule() -> None:
    """Cilium docs, Documentation/security/policy/language.rst (layer4.rst), "CIDR-dependent
    Layer 4 Rule": role=crawler may reach 192.0.2.0/24 (already a documentation range, used
    as in the doc) on TCP/80 only; endpoints without the label get nothing from this policy."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: cidr-l4-rule, namespace: default}
        spec:
          endpointSelector: {matchLabels: {role: crawler}}
          egress:
          - toCIDR: [192.0.2.0/24]
            toPorts:
            - ports:
              - {port: "80", protocol: TCP}
        """,
        workload("default/crawler", {"role": "crawler"}),
        workload("default/indexer", {"role": "indexer"}),
    )
    crawler = "default/crawler"
    check(
        c,
        [
            (crawler, "cidr:192.0.2.10", "TCP/80", Reason.ALLOWED),
            (crawler, "cidr:192.0.2.254", "TCP/80", Reason.ALLOWED),
            (crawler, "cidr:192.0.2.10", "TCP/443", Reason.DEFAULT_DENY),
            (crawler, "cidr:192.0.2.10", "UDP/80", Reason.DEFAULT_DENY),
            (crawler, "cidr:198.51.100.10", "TCP/80", Reason.DEFAULT_DENY),
            (crawler, "entity:world", "TCP/80", Reason.DEFAULT_DENY),
            (crawler, "default/indexer", "TCP/80", Reason.DEFAULT_DENY),
            ("default/indexer", "cidr:192.0.2.10", "TCP/443", Reason.NOT_SELECTED),
        ],
    )


# -- Deny policies -----------------------------------------------------------------------------
def test_deny_policy_external_lockdown() -> None:
    """Cilium docs, Documentation/security/policy/deny.rst, the external-lockdown example: a
    CiliumClusterwideNetworkPolicy denying ingress from world and allowing ingress from all.
    World (including addresses with their own CIDR identity) is denied on every pod; every
    other peer is still allowed."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumClusterwideNetworkPolicy
        metadata: {name: external-lockdown}
        spec:
          endpointSelector: {}
          ingressDeny:
          - fromEntities: [world]
          ingress:
          - fromEntities: [all]
        ---
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: names-a-cidr, namespace: ops}
        spec:
          endpointSelector: {matchLabels: {app: probe}}
          egress:
          - toCIDR: [203.0.113.0/24]
        """,
        *PODS,
        workload("ops/probe", {"app": "probe"}),
    )
    check(
        c,
        [
            ("entity:world", "default/backend", "TCP/80", Reason.DENIED_BY_POLICY),
            ("entity:world", "ns2/frontend", "UDP/53", Reason.DENIED_BY_POLICY),
            ("cidr:203.0.113.7", "default/backend", "TCP/80", Reason.DENIED_BY_POLICY),
            ("cidr:198.51.100.7", "ops/probe", "TCP/80", Reason.DENIED_BY_POLICY),
            ("default/frontend", "default/backend", "TCP/80", Reason.ALLOWED),
            ("ns2/frontend", "default/backend", "UDP/5353", Reason.ALLOWED),
            ("ns2/frontend", "ops/probe", "TCP/8080", Reason.ALLOWED),
            ("entity:remote-node", "default/backend", "TCP/80", Reason.ALLOWED),
            ("entity:host", "default/backend", "TCP/80", Reason.ALLOWED),
            # Ingress only: egress to world is not governed.
            ("default/backend", "entity:world", "TCP/443", Reason.NOT_SELECTED),
        ],
    )
    denied = c.explain("entity:world", "default/backend", "TCP/80")
    assert denied["verdict"] == "denied"
    ingress = denied["ingress"]
    assert isinstance(ingress, dict)
    assert [(r["name"], r["rule"]) for r in ingress["deniedBy"]] == [
        ("external-lockdown", "ingressDeny[0]")
    ]


_DENY_TABLE_POLICIES = {
    "allow-l3": """
        spec:
          endpointSelector: {matchLabels: {app: server}}
          ingress:
          - fromEndpoints:
            - matchLabels: {app: client}
    """,
    "allow-l4": """
        spec:
          endpointSelector: {matchLabels: {app: server}}
          ingress:
          - toPorts:
            - ports:
              - {port: "80", protocol: TCP}
              - {port: "81", protocol: TCP}
    """,
    "deny-l4": """
        spec:
          endpointSelector: {matchLabels: {app: server}}
          ingressDeny:
          - toPorts:
            - ports:
              - {port: "80", protocol: TCP}
    """,
    "deny-l3": """
        spec:
          endpointSelector: {matchLabels: {app: server}}
          ingressDeny:
          - fromEndpoints:
            - matchLabels: {app: client}
    """,
}


@pytest.mark.parametrize(
    ("policies", "port81", "port80", "other"),
    [
        pytest.param(("allow-l3", "allow-l4"), ALLOWED, ALLOWED, ALLOWED, id="col1-allow-only"),
        pytest.param(
            ("allow-l3", "allow-l4", "deny-l4"), ALLOWED, DENIED, ALLOWED, id="col2-deny-l4"
        ),
        pytest.param(
            ("allow-l3", "allow-l4", "deny-l3"), DENIED, DENIED, DENIED, id="col3-deny-l3"
        ),
        pytest.param(
            ("allow-l3", "allow-l4", "deny-l4", "deny-l3"),
            DENIED,
            DENIED,
            DENIED,
            id="col4-deny-both",
        ),
        pytest.param(("deny-l4",), DENIED, DENIED, DENIED, id="col5-deny-only"),
    ],
)
def test_deny_precedence_table(
    policies: tuple[str, ...], port81: Verdict, port80: Verdict, other: Verdict
) -> None:
    """Cilium docs, Documentation/security/policy/deny.rst, the table of allow and deny
    policies on one server pod (L7 rows left out: cport is L3/L4). Deny beats allow, and a
    deny-only policy still puts the pod in default deny. The table's "ping" row (an L3-only
    allow) is checked with TCP/8080, since cport models TCP/UDP/SCTP, not ICMP."""
    docs = [
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n"
        f"metadata: {{name: {name}, namespace: default}}\n" + dedent(_DENY_TABLE_POLICIES[name])
        for name in policies
    ]
    c = cluster(
        "\n---\n".join(docs),
        workload("default/client", {"app": "client"}),
        workload("default/server", {"app": "server"}),
    )
    check(
        c,
        [
            ("default/client", "default/server", "TCP/81", port81),
            ("default/client", "default/server", "TCP/80", port80),
            ("default/client", "default/server", "TCP/8080", other),
        ],
    )


# -- Endpoint default policy (enableDefaultDeny) -----------------------------------------------
_INTERCEPT_DNS = """
    apiVersion: cilium.io/v2
    kind: CiliumClusterwideNetworkPolicy
    metadata: {name: intercept-all-dns}
    spec:
      endpointSelector:
        matchExpressions:
        - {key: io.kubernetes.pod.namespace, operator: NotIn, values: [kube-system]}
        - {key: k8s-app, operator: NotIn, values: [kube-dns]}
      enableDefaultDeny: {egress: false, ingress: false}
      egress:
      - toEndpoints:
        - matchLabels: {io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}
        toPorts:
        - ports:
          - {port: "53", protocol: TCP}
          - {port: "53", protocol: UDP}
"""
_DNS_PODS = (
    workload("default/app", {"app": "web"}),
    workload("default/peer", {"app": "peer"}),
    workload("kube-system/kube-dns", {"k8s-app": "kube-dns"}),
)


def test_endpoint_default_policy_without_default_deny() -> None:
    """Cilium docs, Documentation/security/policy/intro.rst (language.rst in older releases),
    "Endpoint default policy": a cluster-wide DNS allow with ``enableDefaultDeny`` false for
    ingress and egress blocks nothing, even as the first policy selecting an endpoint. (The
    doc's example adds an L7 ``dns`` rule; cport is L3/L4, so the rule here is the same
    without it.)"""
    c = cluster(_INTERCEPT_DNS, *_DNS_PODS)
    check(
        c,
        [
            ("default/app", "kube-system/kube-dns", "UDP/53", Reason.ALLOWED),
            ("default/app", "kube-system/kube-dns", "TCP/53", Reason.ALLOWED),
            ("default/app", "kube-system/kube-dns", "TCP/9153", Reason.NO_DEFAULT_DENY),
            ("default/app", "entity:world", "TCP/443", Reason.NO_DEFAULT_DENY),
            ("default/app", "default/peer", "TCP/80", Reason.NO_DEFAULT_DENY),
            ("entity:world", "default/app", "TCP/80", Reason.NOT_SELECTED),
            # peer is selected too (egress), still without default deny; ingress is not.
            ("default/peer", "default/app", "TCP/80", Reason.NO_DEFAULT_DENY),
            ("default/peer", "entity:world", "UDP/123", Reason.NO_DEFAULT_DENY),
            # kube-system and kube-dns pods are outside the selector.
            ("kube-system/kube-dns", "entity:world", "UDP/53", Reason.NOT_SELECTED),
        ],
    )


def test_endpoint_default_policy_other_rule_still_enables_default_deny() -> None:
    """Cilium docs, Documentation/security/policy/intro.rst, "Endpoint default policy": rules
    with ``enableDefaultDeny`` disabled are ignored when deciding the default mode, so another
    rule with an egress section still puts the endpoint's egress in default deny (and the DNS
    allow keeps working)."""
    c = cluster(
        (
            _INTERCEPT_DNS,
            """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: web-to-peer, namespace: default}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          egress:
          - toEndpoints:
            - matchLabels: {app: peer}
            """,
        ),
        *_DNS_PODS,
    )
    check(
        c,
        [
            ("default/app", "default/peer", "TCP/80", Reason.ALLOWED),
            ("default/app", "kube-system/kube-dns", "UDP/53", Reason.ALLOWED),
            ("default/app", "kube-system/kube-dns", "TCP/9153", Reason.DEFAULT_DENY),
            ("default/app", "entity:world", "TCP/443", Reason.DEFAULT_DENY),
            # peer is selected only by the non-default-deny rule.
            ("default/peer", "entity:world", "TCP/443", Reason.NO_DEFAULT_DENY),
        ],
    )


# -- Kubernetes (kubernetes.rst) ---------------------------------------------------------------
def test_k8s_expose_pods_across_namespaces() -> None:
    """Cilium docs, Documentation/security/policy/kubernetes.rst, "Example: Expose pods across
    namespaces": name=leia in ns1 accepts name=luke from ns2 only."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: k8s-expose-across-namespace, namespace: ns1}
        spec:
          endpointSelector: {matchLabels: {name: leia}}
          ingress:
          - fromEndpoints:
            - matchLabels:
                k8s:io.kubernetes.pod.namespace: ns2
                name: luke
        """,
        workload("ns1/leia", {"name": "leia"}),
        workload("ns1/luke", {"name": "luke"}),
        workload("ns2/luke", {"name": "luke"}),
        workload("ns2/vader", {"name": "vader"}),
        workload("ns2/leia", {"name": "leia"}),
    )
    check(
        c,
        [
            ("ns2/luke", "ns1/leia", "TCP/80", Reason.ALLOWED),
            ("ns1/luke", "ns1/leia", "TCP/80", Reason.DEFAULT_DENY),
            ("ns2/vader", "ns1/leia", "TCP/80", Reason.DEFAULT_DENY),
            ("entity:world", "ns1/leia", "TCP/80", Reason.DEFAULT_DENY),
            # The subject is limited to the policy's namespace.
            ("ns2/vader", "ns2/leia", "TCP/80", Reason.NOT_SELECTED),
        ],
    )


def test_k8s_allow_egress_to_kube_dns() -> None:
    """Cilium docs, Documentation/security/policy/kubernetes.rst, "Example: Allow egress to
    kube-dns in kube-system namespace": every pod of namespace ``public`` may reach
    k8s-app=kube-dns in kube-system on 53/UDP and nothing else; other namespaces are not
    affected."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: allow-to-kubedns, namespace: public}
        spec:
          endpointSelector: {}
          egress:
          - toEndpoints:
            - matchLabels:
                k8s:io.kubernetes.pod.namespace: kube-system
                k8s-app: kube-dns
            toPorts:
            - ports:
              - {port: "53", protocol: UDP}
        """,
        workload("public/app", {"app": "web"}),
        workload("public/db", {"app": "db"}),
        workload("kube-system/kube-dns", {"k8s-app": "kube-dns"}),
        workload("kube-system/metrics", {"k8s-app": "metrics-server"}),
        workload("default/fake-dns", {"k8s-app": "kube-dns"}),
    )
    dns = "kube-system/kube-dns"
    check(
        c,
        [
            ("public/app", dns, "UDP/53", Reason.ALLOWED),
            ("public/db", dns, "UDP/53", Reason.ALLOWED),
            ("public/app", dns, "TCP/53", Reason.DEFAULT_DENY),
            ("public/app", dns, "UDP/5353", Reason.DEFAULT_DENY),
            ("public/app", "kube-system/metrics", "UDP/53", Reason.DEFAULT_DENY),
            ("public/app", "default/fake-dns", "UDP/53", Reason.DEFAULT_DENY),
            ("public/app", "public/db", "TCP/5432", Reason.DEFAULT_DENY),
            ("public/app", "entity:world", "UDP/53", Reason.DEFAULT_DENY),
            ("default/fake-dns", dns, "TCP/53", Reason.NOT_SELECTED),
        ],
    )


def test_k8s_enforce_namespace_boundaries() -> None:
    """Cilium docs, Documentation/security/policy/kubernetes.rst, "Example: Enforce namespace
    boundaries": one policy per namespace (ns1, ns2) selecting every pod and admitting every
    pod of the same namespace. Ingress across the boundary is denied; egress stays open (the
    section's note)."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: isolate-ns, namespace: ns1}
        spec:
          endpointSelector: {matchLabels: {}}
          ingress:
          - fromEndpoints:
            - matchLabels: {}
        ---
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: isolate-ns, namespace: ns2}
        spec:
          endpointSelector: {matchLabels: {}}
          ingress:
          - fromEndpoints:
            - matchLabels: {}
        """,
        workload("ns1/a", {"app": "a"}),
        workload("ns1/b", {"app": "b"}),
        workload("ns2/c", {"app": "c"}),
        workload("ns2/d", {"app": "d"}),
        workload("default/x", {"app": "x"}),
    )
    check(
        c,
        [
            ("ns1/a", "ns1/b", "TCP/80", Reason.ALLOWED),
            ("ns2/d", "ns2/c", "UDP/53", Reason.ALLOWED),
            ("ns2/c", "ns1/b", "TCP/80", Reason.DEFAULT_DENY),
            ("ns1/a", "ns2/c", "TCP/80", Reason.DEFAULT_DENY),
            ("default/x", "ns1/a", "TCP/80", Reason.DEFAULT_DENY),
            ("entity:world", "ns2/c", "TCP/80", Reason.DEFAULT_DENY),
            ("ns1/a", "default/x", "TCP/80", Reason.NOT_SELECTED),
            ("ns1/a", "entity:world", "TCP/443", Reason.NOT_SELECTED),
        ],
    )


def test_k8s_clusterwide_policy() -> None:
    """Cilium docs, Documentation/security/policy/kubernetes.rst, "Clusterwide Policies": a
    CiliumClusterwideNetworkPolicy lets name=luke from any namespace reach name=leia in any
    namespace."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumClusterwideNetworkPolicy
        metadata: {name: clusterwide-policy-example}
        spec:
          endpointSelector: {matchLabels: {name: leia}}
          ingress:
          - fromEndpoints:
            - matchLabels: {name: luke}
        """,
        workload("ns1/leia", {"name": "leia"}),
        workload("ns2/leia", {"name": "leia"}),
        workload("ns1/luke", {"name": "luke"}),
        workload("ns2/luke", {"name": "luke"}),
        workload("ns2/vader", {"name": "vader"}),
    )
    check(
        c,
        [
            ("ns1/luke", "ns1/leia", "TCP/80", Reason.ALLOWED),
            ("ns2/luke", "ns1/leia", "TCP/80", Reason.ALLOWED),
            ("ns1/luke", "ns2/leia", "TCP/80", Reason.ALLOWED),
            ("ns2/vader", "ns1/leia", "TCP/80", Reason.DEFAULT_DENY),
            ("entity:world", "ns2/leia", "TCP/80", Reason.DEFAULT_DENY),
        ],
    )


def test_k8s_clusterwide_wildcard_from_endpoints() -> None:
    """Cilium docs, Documentation/security/policy/kubernetes.rst, "Example: Allow all ingress
    to kube-dns": in a cluster-wide policy ``fromEndpoints: [{}]`` means every Cilium-managed
    pod of every namespace (not reserved peers such as world or remote-node), here on
    53/UDP."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumClusterwideNetworkPolicy
        metadata: {name: wildcard-from-endpoints}
        spec:
          endpointSelector:
            matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}
          ingress:
          - fromEndpoints:
            - {}
            toPorts:
            - ports:
              - {port: "53", protocol: UDP}
        """,
        workload("kube-system/kube-dns", {"k8s-app": "kube-dns"}),
        workload("kube-system/metrics", {"k8s-app": "metrics-server"}),
        workload("ns1/a", {"app": "a"}),
        workload("default/x", {"app": "x"}),
    )
    dns = "kube-system/kube-dns"
    check(
        c,
        [
            ("ns1/a", dns, "UDP/53", Reason.ALLOWED),
            ("default/x", dns, "UDP/53", Reason.ALLOWED),
            ("kube-system/metrics", dns, "UDP/53", Reason.ALLOWED),
            ("ns1/a", dns, "TCP/53", Reason.DEFAULT_DENY),
            ("entity:world", dns, "UDP/53", Reason.DEFAULT_DENY),
            ("entity:remote-node", dns, "UDP/53", Reason.DEFAULT_DENY),
            ("entity:kube-apiserver", dns, "UDP/53", Reason.DEFAULT_DENY),
        ],
    )


def test_k8s_network_policy_selectors_and_ip_block() -> None:
    """Cilium docs, Documentation/security/policy/kubernetes.rst and layer3.rst ("Selecting
    nodes with CIDR / ipBlock": CIDR selectors do not match pods): a Kubernetes NetworkPolicy
    whose peer combines namespaceSelector and podSelector (both must match), plus an ipBlock
    with an except; ports default to TCP."""
    c = cluster(
        """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: db-access, namespace: prod}
        spec:
          podSelector: {matchLabels: {app: db}}
          policyTypes: [Ingress]
          ingress:
          - from:
            - namespaceSelector: {matchLabels: {team: a}}
              podSelector: {matchLabels: {role: client}}
            ports:
            - port: 5432
          - from:
            - ipBlock:
                cidr: 203.0.113.0/24
                except: [203.0.113.128/25]
            ports:
            - {protocol: TCP, port: 5432}
        """,
        namespace("team-a", {"team": "a"}),
        namespace("team-b", {"team": "b"}),
        namespace("prod"),
        workload("prod/db", {"app": "db"}),
        workload("prod/client", {"role": "client"}),
        workload("team-a/client", {"role": "client"}),
        workload("team-a/batch", {"role": "batch"}),
        workload("team-b/client", {"role": "client"}, addresses=["203.0.113.9"]),
    )
    db = "prod/db"
    check(
        c,
        [
            ("team-a/client", db, "TCP/5432", Reason.ALLOWED),
            ("team-a/client", db, "TCP/5433", Reason.DEFAULT_DENY),
            ("team-a/client", db, "UDP/5432", Reason.DEFAULT_DENY),
            ("team-a/batch", db, "TCP/5432", Reason.DEFAULT_DENY),
            ("team-b/client", db, "TCP/5432", Reason.DEFAULT_DENY),
            ("prod/client", db, "TCP/5432", Reason.DEFAULT_DENY),
            ("cidr:203.0.113.7", db, "TCP/5432", Reason.ALLOWED),
            ("cidr:203.0.113.127", db, "TCP/5432", Reason.ALLOWED),
            ("cidr:203.0.113.7", db, "TCP/22", Reason.DEFAULT_DENY),
            ("cidr:203.0.113.200", db, "TCP/5432", Reason.DEFAULT_DENY),
            ("cidr:198.51.100.7", db, "TCP/5432", Reason.DEFAULT_DENY),
            ("entity:world", db, "TCP/5432", Reason.DEFAULT_DENY),
            # A pod's own address inside the ipBlock is still that pod, not a CIDR peer.
            ("cidr:203.0.113.9", db, "TCP/5432", Reason.DEFAULT_DENY),
        ],
    )
    assert c.endpoint("cidr:203.0.113.9").workload is not None


def test_k8s_network_policy_allow_all_ingress() -> None:
    """Cilium docs, Documentation/security/policy/kubernetes.rst (NetworkPolicy as Cilium
    imports it): ``ingress: [{}]`` allows every peer on every port, world included, while a
    policy with ``policyTypes: [Ingress]`` and no rules denies all ingress."""
    c = cluster(
        """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: allow-all, namespace: web}
        spec:
          podSelector: {}
          policyTypes: [Ingress]
          ingress:
          - {}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny-all, namespace: locked}
        spec:
          podSelector: {}
          policyTypes: [Ingress]
        """,
        workload("web/site", {"app": "site"}),
        workload("locked/vault", {"app": "vault"}),
        workload("default/x", {"app": "x"}),
    )
    check(
        c,
        [
            ("default/x", "web/site", "TCP/80", Reason.ALLOWED),
            ("default/x", "web/site", "UDP/9999", Reason.ALLOWED),
            ("entity:world", "web/site", "TCP/443", Reason.ALLOWED),
            ("cidr:203.0.113.7", "web/site", "TCP/443", Reason.ALLOWED),
            ("entity:remote-node", "web/site", "TCP/443", Reason.ALLOWED),
            ("default/x", "locked/vault", "TCP/8200", Reason.DEFAULT_DENY),
            ("web/site", "locked/vault", "TCP/8200", Reason.DEFAULT_DENY),
            ("entity:world", "locked/vault", "TCP/8200", Reason.DEFAULT_DENY),
            ("web/site", "default/x", "TCP/80", Reason.NOT_SELECTED),
        ],
    )


# -- Rule shapes -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rule",
    [
        pytest.param("- fromEndpoints: []", id="fromEndpoints"),
        pytest.param("- fromEntities: []", id="fromEntities"),
        pytest.param("- fromCIDR: []", id="fromCIDR"),
        pytest.param(
            '- fromCIDR: []\n  toPorts: [{ports: [{port: "80", protocol: TCP}]}]',
            id="fromCIDR-with-toPorts",
        ),
    ],
)
def test_explicit_empty_peer_list_allows_nothing(rule: str) -> None:
    """Cilium semantics of an explicit empty peer list (cilium/cilium PR #29608, "Do not
    select any identity with empty slices"; language.rst "Ingress/Egress Default Deny" for the
    default-deny it leaves): it selects no peer, so the rule allows nothing, even with
    toPorts, and the endpoint is in default deny."""
    c = cluster(
        f"""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {{name: empty-peers, namespace: default}}
        spec:
          endpointSelector: {{matchLabels: {{role: backend}}}}
          ingress:
{indented(rule, 10)}
        """,
        *PODS,
    )
    check(
        c,
        [
            ("default/frontend", "default/backend", "TCP/80", Reason.DEFAULT_DENY),
            ("entity:world", "default/backend", "TCP/80", Reason.DEFAULT_DENY),
            ("cidr:203.0.113.7", "default/backend", "TCP/80", Reason.DEFAULT_DENY),
            ("entity:host", "default/backend", "TCP/80", Reason.ALLOWED),
        ],
    )


def test_to_ports_without_l3_allows_every_peer() -> None:
    """Cilium docs, Documentation/security/policy/language.rst (layer4.rst), "Limit
    ingress/egress ports" ("Layer 4 policy can be specified ... independently"): a rule with
    toPorts and no L3 field allows those ports from every peer, world and other namespaces
    included; other ports stay denied."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: l4-only, namespace: default}
        spec:
          endpointSelector: {matchLabels: {role: backend}}
          ingress:
          - toPorts:
            - ports:
              - {port: "8080", protocol: TCP}
        """,
        *PODS,
    )
    backend = "default/backend"
    check(
        c,
        [
            ("entity:world", backend, "TCP/8080", Reason.ALLOWED),
            ("cidr:203.0.113.7", backend, "TCP/8080", Reason.ALLOWED),
            ("entity:remote-node", backend, "TCP/8080", Reason.ALLOWED),
            ("ns2/frontend", backend, "TCP/8080", Reason.ALLOWED),
            ("default/other", backend, "TCP/8080", Reason.ALLOWED),
            ("entity:world", backend, "TCP/8081", Reason.DEFAULT_DENY),
            ("default/other", backend, "UDP/8080", Reason.DEFAULT_DENY),
        ],
    )


def test_host_reaches_local_pods_unless_denied() -> None:
    """Cilium docs, Documentation/security/policy/language.rst (layer3.rst), "Access to/from
    local host" note: in Kubernetes the local host may always reach local endpoints
    (allow-localhost=auto), even when their ingress policy does not name it; remote nodes get
    no such pass. Deny policies take precedence over allows (deny.rst), so an ingressDeny
    naming the host does block it."""
    allow = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: backend-from-frontend, namespace: default}
        spec:
          endpointSelector: {matchLabels: {role: backend}}
          ingress:
          - fromEndpoints:
            - matchLabels: {role: frontend}
    """
    c = cluster(allow, *PODS)
    check(
        c,
        [
            ("entity:host", "default/backend", "TCP/8080", Reason.ALLOWED),
            ("entity:host", "default/backend", "UDP/53", Reason.ALLOWED),
            ("entity:remote-node", "default/backend", "TCP/8080", Reason.DEFAULT_DENY),
        ],
    )
    ingress = c.explain("entity:host", "default/backend", "TCP/8080")["ingress"]
    assert isinstance(ingress, dict)
    assert [r["name"] for r in ingress["allowedBy"]] == ["allow-localhost"]

    denied = cluster(
        (
            allow,
            """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: no-host, namespace: default}
        spec:
          endpointSelector: {matchLabels: {role: backend}}
          ingressDeny:
          - fromEntities: [host]
            """,
        ),
        *PODS,
    )
    check(
        denied,
        [
            ("entity:host", "default/backend", "TCP/8080", Reason.DENIED_BY_POLICY),
            ("default/frontend", "default/backend", "TCP/80", Reason.ALLOWED),
            # Pods the deny does not select still admit the host.
            ("entity:host", "default/frontend", "TCP/8080", Reason.NOT_SELECTED),
        ],
    )


@pytest.mark.parametrize(
    ("section", "rule", "kinds"),
    [
        pytest.param(
            "ingress",
            "- fromEndpoints: [{matchLabels: {role: frontend}}]\n  fromCIDR: [203.0.113.0/24]",
            ("fromEndpoints", "fromCIDR"),
            id="fromEndpoints+fromCIDR",
        ),
        pytest.param(
            "ingress",
            "- fromEntities: [world]\n  fromCIDRSet: [{cidr: 198.51.100.0/24}]",
            ("fromEntities", "fromCIDR"),
            id="fromEntities+fromCIDRSet",
        ),
        pytest.param(
            "egress",
            "- toEndpoints: [{}]\n  toEntities: [kube-apiserver]",
            ("toEndpoints", "toEntities"),
            id="toEndpoints+toEntities",
        ),
        pytest.param(
            "ingressDeny",
            "- fromEndpoints: [{}]\n  fromEntities: [world]",
            ("fromEndpoints", "fromEntities"),
            id="deny-fromEndpoints+fromEntities",
        ),
    ],
)
def test_combining_l3_kinds_in_one_rule_is_rejected(
    section: str, rule: str, kinds: tuple[str, str]
) -> None:
    """Cilium rejects a rule that combines two kinds of L3 peer ("Combining FromEndpoints and
    FromCIDR is not supported yet", pkg/policy/api/rule_validation.go); the documentation's
    examples accordingly write one rule per kind (e.g. language.rst "Allow to external CIDR
    block" uses separate toCIDR and toCIDRSet rules)."""
    errors = rejected(
        f"""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {{name: mixed, namespace: default}}
        spec:
          endpointSelector: {{matchLabels: {{role: backend}}}}
          {section}:
{indented(rule, 10)}
        """
    )
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"invalid-policy: spec.{section}[0]:"), errors
    assert "combining" in errors[0]
    for kind in kinds:
        assert kind in errors[0]


@pytest.mark.parametrize(
    ("section", "rule"),
    [
        pytest.param(
            "egress",
            "- toCIDR: [203.0.113.1/32]\n  toCIDRSet: [{cidr: 198.51.100.0/24}]",
            id="toCIDR+toCIDRSet",
        ),
        pytest.param(
            "ingress",
            "- fromCIDR: [203.0.113.1/32]\n  fromCIDRSet: [{cidr: 198.51.100.0/24}]",
            id="fromCIDR+fromCIDRSet",
        ),
    ],
)
def test_combining_cidr_and_cidr_set_in_one_rule_is_rejected(section: str, rule: str) -> None:
    """Cilium's rule validation (pkg/policy/api/rule_validation.go, IngressRule/EgressRule
    sanitize) lists ToCIDR and ToCIDRSet as separate L3 members and rejects any rule where two
    members are non-empty; the doc's "Allow to external CIDR block" example therefore writes
    them as two rules."""
    errors = rejected(
        f"""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {{name: cidr-and-set, namespace: default}}
        spec:
          endpointSelector: {{matchLabels: {{app: myService}}}}
          {section}:
{indented(rule, 10)}
        """
    )
    assert any("combining" in e for e in errors), errors


def test_empty_peer_list_does_not_count_as_a_combination() -> None:
    """Cilium's combination check (pkg/policy/api/rule_validation.go) compares list lengths,
    so ``fromEndpoints: []`` next to ``fromCIDR`` is accepted; since cilium/cilium PR #33439
    the CIDR peers still apply (the empty list selects nothing, PR #29608)."""
    c = cluster(
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: empty-and-cidr, namespace: default}
        spec:
          endpointSelector: {matchLabels: {role: backend}}
          ingress:
          - fromEndpoints: []
            fromCIDR: [203.0.113.0/24]
        """,
        *PODS,
    )
    check(
        c,
        [
            ("cidr:203.0.113.7", "default/backend", "TCP/80", Reason.ALLOWED),
            ("default/frontend", "default/backend", "TCP/80", Reason.DEFAULT_DENY),
            ("entity:world", "default/backend", "TCP/80", Reason.DEFAULT_DENY),
        ],
    )
