"""Verified claims → labels: how a token's holder becomes a label set (and so an identity).

* ``oidc`` issuers: ``oidc:iss=<issuer name>``, ``oidc:sub=<sub|client_id|azp>``, and one
  ``oidc:<label>=<value>`` per value of each mapped claim (lists give one label per value).
* delegation (RFC 8693 ``act``): the person's labels as above, plus ``agent:actor=<act.sub>``,
  ``agent:iss=<issuer name>`` and ``agent:<claim>=<value>`` for the actor's other string
  claims — so ``users:`` peers (no ``agent:actor``) never match an agent, and ``agents:``
  peers must match both the actor and the person.
* ``kubernetes`` issuers (projected service-account tokens): the labels Cilium gives a pod's
  service account — ``k8s:io.kubernetes.pod.namespace``, ``k8s:io.cilium.k8s.policy.
  serviceaccount`` and the cluster label — so a token resolves to the same identity as its pod
  (the pod's own labels are added when the token names a pod the inventory knows).
* ``spiffe-jwt`` issuers: ``spiffe:id=<sub>`` and ``spiffe:trust-domain=<td>``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cport.errors import CredentialError
from cport.identity._issuer import IssuerConfig
from cport.identity._jwt import claim_at
from cport.identity._labels import (
    CLUSTER_KEY,
    NAMESPACE_KEY,
    NAMESPACE_LABELS_PREFIX,
    NAMESPACE_NAME_LABEL,
    SERVICEACCOUNT_KEY,
    Label,
    Labels,
)

#: (namespace, pod name) → the pod's identity labels, when the inventory knows it.
PodResolver = Callable[[str, str], Labels | None]
MAX_LABEL_VALUES = 256


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


def _claim_labels(claims: dict[str, Any], issuer: IssuerConfig, source: str) -> list[Label]:
    out: list[Label] = []
    for mapping in issuer.claim_labels:
        value = claim_at(claims, mapping.path)
        values = value if isinstance(value, list) else [value]
        texts = [t for t in (_scalar(v) for v in values[:MAX_LABEL_VALUES]) if t is not None]
        out.extend(Label(source, mapping.label, t) for t in texts)
    return out


def subject_of(claims: dict[str, Any]) -> str:
    for name in ("sub", "client_id", "azp"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    raise CredentialError("the token names no subject", code="missing-claim")


def oidc_labels(claims: dict[str, Any], issuer: IssuerConfig) -> tuple[Labels, str | None]:
    """Labels of an OIDC token's holder, and the acting agent's subject if delegated."""
    labels = [Label("oidc", "iss", issuer.name), Label("oidc", "sub", subject_of(claims))]
    labels.extend(_claim_labels(claims, issuer, "oidc"))
    actor: str | None = None
    act = claims.get("act")
    if act is not None:
        if not isinstance(act, dict) or not isinstance(act.get("sub") or act.get("client_id"), str):
            raise CredentialError("the act claim names no actor", code="malformed")
        actor = str(act.get("sub") or act.get("client_id"))
        labels += [Label("agent", "actor", actor), Label("agent", "iss", issuer.name)]
        for key, value in act.items():
            text = _scalar(value)
            if key not in ("sub", "act", "iss") and text is not None:
                labels.append(Label("agent", key, text))
    return Labels(labels), actor


def kubernetes_labels(
    claims: dict[str, Any], cluster: str, resolve_pod: PodResolver | None = None
) -> Labels:
    """Labels of a projected service-account token, matching Cilium's pod labels."""
    k8s = claims.get("kubernetes.io")
    ns = sa = None
    pod: str | None = None
    if isinstance(k8s, dict):
        ns = k8s.get("namespace")
        sa_obj = k8s.get("serviceaccount")
        sa = sa_obj.get("name") if isinstance(sa_obj, dict) else None
        pod_obj = k8s.get("pod")
        pod = pod_obj.get("name") if isinstance(pod_obj, dict) else None
    if not (isinstance(ns, str) and isinstance(sa, str)):
        sub = claims.get("sub")
        parts = sub.split(":") if isinstance(sub, str) else []
        if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
            ns, sa = parts[2], parts[3]
    if not (isinstance(ns, str) and ns and isinstance(sa, str) and sa):
        raise CredentialError("not a Kubernetes service-account token", code="missing-claim")
    if isinstance(pod, str) and resolve_pod is not None:
        found = resolve_pod(ns, pod)
        if found is not None:
            return found
    # The labels a pod with no labels of its own has (cport.model.Inventory.identity_labels).
    return Labels(
        [
            Label("k8s", NAMESPACE_KEY, ns),
            Label("k8s", SERVICEACCOUNT_KEY, sa),
            Label("k8s", CLUSTER_KEY, cluster),
            Label("k8s", NAMESPACE_LABELS_PREFIX + NAMESPACE_NAME_LABEL, ns),
        ]
    )
