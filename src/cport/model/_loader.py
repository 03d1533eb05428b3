"""Loading: files and directories of multi-document YAML → policies and inventory.

Every document is classified by ``apiVersion``/``kind``. Errors are collected across all
documents (one per document) so a user sees every problem in one run; nothing is returned
half-loaded: :func:`load` raises :class:`~cport.errors.InputErrors` if anything was wrong.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cport.errors import InputError, InputErrors, InventoryError, PolicyError
from cport.model._cilium import parse_cilium_policy
from cport.model._fields import _SKIPPED, Cursor
from cport.model._inventory import (
    Inventory,
    Workload,
    build_inventory,
    parse_namespace,
    parse_pod,
    parse_workload,
)
from cport.model._netpol import parse_network_policy
from cport.model._portpolicy import API_VERSION as CPORT_API
from cport.model._portpolicy import parse_port_policy
from cport.model._types import Policy, PolicyKey
from cport.model._yaml import Document, load_documents, parse_documents

POLICY_KINDS = {
    ("cport.dev/v1alpha1", "PortPolicy"),
    ("cilium.io/v2", "CiliumNetworkPolicy"),
    ("cilium.io/v2", "CiliumClusterwideNetworkPolicy"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
}
INVENTORY_KINDS = {(CPORT_API, "Workload"), ("v1", "Pod"), ("v1", "Namespace")}
LIST_KINDS = {("v1", "List"), ("v1", "PodList"), ("v1", "NamespaceList")}
_SUPPORTED = sorted(f"{k} ({v})" for v, k in POLICY_KINDS | INVENTORY_KINDS | LIST_KINDS)


@dataclass
class Bundle:
    """What a set of files holds: validated policies and the inventory built from them."""

    policies: list[Policy] = field(default_factory=list)
    inventory: Inventory = field(default_factory=Inventory)
    warnings: list[str] = field(default_factory=list)
    documents: int = 0


class _Collector:
    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        self.policies: dict[PolicyKey, Policy] = {}
        self.workloads: list[Workload] = []
        self.namespaces: dict[str, dict[str, str]] = {}
        self.errors: list[InputError] = []
        self.documents = 0

    def add_document(self, doc: Document) -> None:
        self.documents += 1
        try:
            self._dispatch(Cursor(doc, (), doc.value, InputError))
        except InputError as exc:
            self.errors.append(exc)

    def _dispatch(self, cur: Cursor) -> None:
        if not isinstance(cur.value, dict):
            cur.fail("expected a Kubernetes-style object with apiVersion and kind")
        version = cur.require("apiVersion").string()
        kind_cur = cur.require("kind")
        kind = kind_cur.string()
        key = (version, kind)
        if key in LIST_KINDS:
            items = cur.require("items")
            for item in items.sequence().items():
                try:
                    self._dispatch(item)
                except InputError as exc:
                    self.errors.append(exc)
            return
        if key in POLICY_KINDS:
            cur.error_cls = PolicyError
            parser: Callable[[Cursor], Policy]
            if kind == "PortPolicy":
                parser = parse_port_policy
            elif kind == "NetworkPolicy":
                parser = parse_network_policy
            else:

                def parser(c: Cursor) -> Policy:
                    return parse_cilium_policy(c, kind)

            policy = parser(cur)
            first = self.policies.get(policy.key)
            if first is not None:
                cur.fail(
                    f"{policy.key} is defined twice (first at {first.location})",
                    code="duplicate-policy",
                )
            self.policies[policy.key] = policy
            return
        if key in INVENTORY_KINDS:
            cur.error_cls = InventoryError
            if kind == "Namespace":
                name, labels = parse_namespace(cur)
                self.namespaces[name] = labels
            elif kind == "Pod":
                self.workloads.append(parse_pod(cur))
            else:
                self.workloads.append(parse_workload(cur))
            return
        same_kind = [f"{k} ({v})" for v, k in POLICY_KINDS | INVENTORY_KINDS if k == kind]
        if same_kind:
            cur.require("apiVersion").fail(
                f"unsupported apiVersion {version!r} for kind {kind}",
                hint=f"use {same_kind[0]}",
                code="unknown-kind",
            )
        kind_cur.fail(
            f"unsupported kind {kind!r} (apiVersion {version})",
            hint="cport reads: " + ", ".join(_SUPPORTED),
            code="unknown-kind",
        )

    def finish(self) -> Bundle:
        inventory = Inventory(namespaces=self.namespaces, cluster=self.cluster)
        for w in self.workloads:
            try:
                inventory.add(w)
            except InputError as exc:
                self.errors.append(exc)
        if self.errors:
            raise InputErrors(self.errors)
        return Bundle(list(self.policies.values()), inventory, documents=self.documents)


def load(
    paths: Iterable[str | os.PathLike[str]],
    *,
    cluster: str = "default",
    skip_unsupported: bool = False,
) -> Bundle:
    """Load every policy and inventory document under `paths` (files or directories).

    With `skip_unsupported`, an *allow* rule holding a field cport cannot enforce (L7 rules,
    toFQDNs, …) is dropped with a warning instead of failing the load; the workload stays
    selected, so dropping only ever narrows access. Deny rules are never dropped.
    """
    collector = _Collector(cluster)
    dropped: list[str] = []
    token = _SKIPPED.set(dropped if skip_unsupported else None)
    try:
        try:
            docs = load_documents(paths, collector.errors)
        except InputError as exc:  # a path that does not exist
            raise InputErrors([exc]) from exc
        for doc in docs:
            collector.add_document(doc)
        bundle = collector.finish()
    finally:
        _SKIPPED.reset(token)
    bundle.warnings.extend(dropped)
    return bundle


def load_text(text: str, file: str = "<string>", *, cluster: str = "default") -> Bundle:
    """Like :func:`load`, for YAML held in memory (tests, the API)."""
    collector = _Collector(cluster)
    try:
        docs = parse_documents(text, file)
    except InputError as exc:
        raise InputErrors([exc]) from exc
    for doc in docs:
        collector.add_document(doc)
    return collector.finish()


__all__ = ["Bundle", "build_inventory", "load", "load_text"]
