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
from cport.identity._jwt import claim_text as _scalar
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
MEMO_SIZE = 4096  # label sets memoised per issuer (see `oidc_labels`)
MEMO_MAX_VALUES = 64  # longer list claims are mapped afresh each time


# Label(source, key, value) without the named tuple's Python-level __new__: one frame less per
# label, and a token maps to several.
_new_tuple = tuple.__new__


def _claim_labels(claims: dict[str, Any], issuer: IssuerConfig, source: str) -> list[Label]:
    out: list[Label] = []
    for mapping in issuer.claim_labels:
        value = claim_at(claims, mapping.path)
        if value is None:
            continue
        key = mapping.label
        for item in value[:MAX_LABEL_VALUES] if isinstance(value, list) else (value,):
            text = item if type(item) is str else _scalar(item)
            if text is not None:
                out.append(_new_tuple(Label, (source, key, text)))
    return out


def subject_of(claims: dict[str, Any]) -> str:
    for name in ("sub", "client_id", "azp"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    raise CredentialError("the token names no subject", code="missing-claim")


def _plain_values(claims: dict[str, Any], issuer: IssuerConfig) -> tuple[Any, ...] | None:
    """The value of each of the issuer's mapped claims, when each is absent, a string or a
    short list of strings (as a tuple); else None. As keys ``1``, ``1.0`` and ``true`` are
    equal but as labels they are not, so other values are never memoised."""
    out: list[str | tuple[str, ...] | None] = []
    for mapping in issuer.claim_labels:
        value = claim_at(claims, mapping.path)
        cls = type(value)
        if value is None or cls is str:
            out.append(value)
        elif cls is list and len(value) <= MEMO_MAX_VALUES:
            for item in value:
                if type(item) is not str:
                    return None
            out.append(tuple(value))
        else:
            return None
    return tuple(out)


def _memo_labels(issuer: IssuerConfig, subject: str, values: tuple[Any, ...]) -> Labels:
    """The labels of a holder from `_plain_values`: built in canonical order when the label
    names are distinct (all ``oidc:``, so sorted names then sorted values are the set's
    order), else through ``Labels`` like every other label set."""
    layout = issuer.label_layout
    items: list[Label] = []
    if layout is None:
        items.append(_new_tuple(Label, ("oidc", "iss", issuer.name)))
        items.append(_new_tuple(Label, ("oidc", "sub", subject)))
        for mapping, value in zip(issuer.claim_labels, values, strict=True):
            if type(value) is str:
                items.append(_new_tuple(Label, ("oidc", mapping.label, value)))
            elif value is not None:
                for text in value:
                    items.append(_new_tuple(Label, ("oidc", mapping.label, text)))
        return Labels(items)
    for name, index in layout:
        value = values[index] if index >= 0 else issuer.name if index == -1 else subject
        if type(value) is str:
            items.append(_new_tuple(Label, ("oidc", name, value)))
        elif value is not None:
            for text in sorted(set(value)) if len(value) > 1 else value:
                items.append(_new_tuple(Label, ("oidc", name, text)))
    return Labels.presorted(tuple(items))


def oidc_labels(
    claims: dict[str, Any],
    issuer: IssuerConfig,
    memo: dict[tuple[Any, ...], Labels] | None = None,
    *,
    subject: str | None = None,
) -> tuple[Labels, str | None]:
    """Labels of an OIDC token's holder, and the acting agent's subject if delegated.

    `memo` (optional; the caller's, bounded to :data:`MEMO_SIZE`) maps what the labels of a
    token that is not delegated are a function of — the issuer's name and claim mapping, the
    subject, the value of each mapped claim — to the label set already built, so the tokens
    of one holder share one label set. One memo per issuer: the mapping is not in the key.
    `subject`: :func:`subject_of` `claims`, if the caller has it already."""
    if subject is None:
        subject = subject_of(claims)
    if memo is not None and "act" not in claims:
        values = _plain_values(claims, issuer)
        if values is not None:
            key = (issuer.name, subject, values)
            found = memo.get(key)
            if found is not None:
                return found, None
            out = _memo_labels(issuer, subject, values)
            if len(memo) >= MEMO_SIZE:
                memo.pop(next(iter(memo)), None)  # oldest first (None: raced)
            memo[key] = out
            return out, None
    labels = _claim_labels(claims, issuer, "oidc")
    labels.append(_new_tuple(Label, ("oidc", "iss", issuer.name)))
    labels.append(_new_tuple(Label, ("oidc", "sub", subject)))
    actor: str | None = None
    act = claims.get("act")
    if act is not None:
        if not isinstance(act, dict) or not isinstance(act.get("sub") or act.get("client_id"), str):
            raise CredentialError("the act claim names no actor", code="malformed")
        actor = str(act.get("sub") or act.get("client_id"))
        labels += [Label("agent", "actor", actor), Label("agent", "iss", issuer.name)]
        for k, value in act.items():
            text = _scalar(value)
            # `actor` and `iss` are ours: an act claim must not name a second actor.
            if k not in ("sub", "act", "iss", "actor") and text is not None:
                labels.append(Label("agent", k, text))
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
