"""Workloads: what owns ports. Read from native ``Workload`` documents and Kubernetes ``Pod``
manifests (single, multi-document, or a ``kubectl get pods -A -o yaml`` ``List``), plus
``Namespace`` documents for namespace labels.

Each workload gets the labels Cilium derives for a pod: its own labels (source ``k8s``), its
namespace, service account and cluster name, and its namespace's labels under
``io.cilium.k8s.namespace.labels.`` (Kubernetes sets ``kubernetes.io/metadata.name`` on every
namespace, so that one is always present).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cport.errors import FlowError, InventoryError, Location
from cport.identity import Label, Labels, reserved_labels
from cport.identity._labels import (
    CLUSTER_KEY,
    NAMESPACE_KEY,
    NAMESPACE_LABELS_PREFIX,
    NAMESPACE_NAME_LABEL,
    SERVICEACCOUNT_KEY,
)
from cport.model._common import META_KEYS, PORT_NAME_RE
from cport.model._fields import Cursor


@dataclass(frozen=True, slots=True)
class ContainerPort:
    """A port a workload listens on; `name` makes it usable as a named port in policies."""

    port: int
    protocol: str = "TCP"
    name: str = ""


@dataclass(frozen=True, slots=True)
class Workload:
    """A workload (pod or native Workload) as the inventory knows it."""

    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...]
    service_account: str
    addresses: tuple[str, ...]
    ports: tuple[ContainerPort, ...]
    location: Location
    kind: str = "Workload"
    owner: str = ""
    host_network: bool = False

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def named_port(self, name: str) -> list[ContainerPort]:
        return [p for p in self.ports if p.name == name]


@dataclass
class Inventory:
    """Every workload and namespace the engine resolves selectors against."""

    workloads: list[Workload] = field(default_factory=list)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    cluster: str = "default"

    def __post_init__(self) -> None:
        self._by_ref: dict[tuple[str, str], Workload] = {}
        self._by_address: dict[str, Workload] = {}
        self._labels: dict[tuple[str, str], Labels] = {}
        for w in self.workloads:
            self._index(w)

    def _index(self, w: Workload) -> None:
        self._by_ref[(w.namespace, w.name)] = w
        for addr in w.addresses:
            self._by_address[addr] = w

    def add(self, w: Workload) -> None:
        key = (w.namespace, w.name)
        if key in self._by_ref:
            first = self._by_ref[key].location
            raise InventoryError(
                f"workload {w.ref} is defined twice (first at {first})",
                w.location,
                code="duplicate-workload",
            )
        for addr in w.addresses:
            other = self._by_address.get(addr)
            if other is not None and not w.host_network and not other.host_network:
                raise InventoryError(
                    f"address {addr} of {w.ref} is already used by {other.ref}",
                    w.location,
                    code="duplicate-address",
                )
        self.workloads.append(w)
        self._index(w)

    def __iter__(self) -> Iterator[Workload]:
        return iter(self.workloads)

    def __len__(self) -> int:
        return len(self.workloads)

    def identity_labels(self, w: Workload) -> Labels:
        """The label set of a workload's security identity, derived as Cilium derives it."""
        key = (w.namespace, w.name)
        cached = self._labels.get(key)
        if cached is not None:
            return cached
        if w.host_network:
            labels = reserved_labels("host")
        else:
            # Cilium drops pod labels in its own io.cilium.k8s namespace and overwrites the
            # ones it derives: a pod's own labels must never claim another namespace, service
            # account or cluster (that would be a way into policies meant for others).
            items = [
                Label("k8s", k, v)
                for k, v in w.labels
                if not k.startswith("io.cilium.k8s") and k != NAMESPACE_KEY
            ]
            items.append(Label("k8s", NAMESPACE_KEY, w.namespace))
            items.append(Label("k8s", SERVICEACCOUNT_KEY, w.service_account))
            items.append(Label("k8s", CLUSTER_KEY, self.cluster))
            # Kubernetes always sets kubernetes.io/metadata.name to the real name: it wins.
            ns_labels = {**self.namespaces.get(w.namespace, {}), NAMESPACE_NAME_LABEL: w.namespace}
            items.extend(Label("k8s", NAMESPACE_LABELS_PREFIX + k, v) for k, v in ns_labels.items())
            labels = Labels(items)
        self._labels[key] = labels
        return labels

    def find(self, namespace: str, name: str) -> Workload:
        """A workload by ``namespace/name``, or by its owner's name (a Deployment's pods)."""
        if not name or not namespace:
            raise FlowError(
                f"{namespace}/{name}: name the workload as NAMESPACE/NAME", code="invalid-flow"
            )
        found = self._by_ref.get((namespace, name))
        if found is not None:
            return found
        owned = [
            w for w in self.workloads if w.namespace == namespace and w.owner and w.owner == name
        ]
        if owned:
            return owned[0]
        known = sorted(w.name for w in self.workloads if w.namespace == namespace)
        hint = (
            f"workloads in {namespace}: {', '.join(known[:12])}"
            if known
            else (
                f"no workloads in namespace {namespace!r}; namespaces: "
                + ", ".join(sorted({w.namespace for w in self.workloads}))
            )
        )
        raise FlowError(
            f"no workload {namespace}/{name} in the inventory ({hint})", code="unknown-workload"
        )

    def by_address(self, address: str) -> Workload | None:
        return self._by_address.get(address)


# -- parsing -----------------------------------------------------------------------------------
def _metadata(doc: Cursor, *, namespaced: bool = True) -> tuple[str, str, dict[str, str]]:
    meta = doc.require("metadata", "every object needs metadata.name").mapping(META_KEYS)
    name = meta.require("name").string()
    ns_cur = meta.get("namespace")
    namespace = ns_cur.string() if ns_cur is not None and namespaced else "default"
    labels_cur = meta.get("labels")
    labels = labels_cur.string_map() if labels_cur is not None else {}
    return namespace, name, labels


def _port_number(cur: Cursor) -> int:
    value = cur.value
    if isinstance(value, str) and value.isascii() and value.isdecimal():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        cur.fail(f"invalid port {cur.value!r}", hint="a number from 1 to 65535")
    return value


def _protocol(cur: Cursor | None, default: str = "TCP") -> str:
    if cur is None:
        return default
    return cur.choice(("TCP", "UDP", "SCTP"))


def _address(cur: Cursor) -> str:
    text = cur.string()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        cur.fail(f"invalid IP address {text!r}")


def parse_workload(doc: Cursor) -> Workload:
    doc.mapping({"apiVersion", "kind", "metadata", "spec"})
    namespace, name, labels = _metadata(doc)
    spec = doc.require("spec").mapping(
        {"serviceAccount", "addresses", "ports", "hostNetwork", "owner"}
    )
    sa = spec.get("serviceAccount")
    ports: list[ContainerPort] = []
    port_list = spec.get("ports")
    for item in port_list.sequence().items() if port_list else []:
        item.mapping({"name", "port", "protocol"})
        pname = item.get("name")
        pname_text = pname.string() if pname else ""
        if pname is not None and not PORT_NAME_RE.match(pname_text):
            pname.fail(
                f"invalid port name {pname_text!r}",
                hint="lowercase letters, digits and '-', at most 15, with a letter",
            )
        ports.append(
            ContainerPort(
                _port_number(item.require("port")), _protocol(item.get("protocol")), pname_text
            )
        )
    addrs = spec.get("addresses")
    hn = spec.get("hostNetwork")
    owner = spec.get("owner")
    return Workload(
        namespace=namespace,
        name=name,
        labels=tuple(sorted(labels.items())),
        service_account=sa.string() if sa else "default",
        addresses=tuple(_address(a) for a in addrs.sequence().items()) if addrs else (),
        ports=tuple(ports),
        location=doc.location,
        kind="Workload",
        owner=owner.string() if owner else "",
        host_network=hn.boolean() if hn else False,
    )


def parse_pod(doc: Cursor) -> Workload:
    """A Kubernetes Pod. Unknown fields are fine here (pods carry many); the ones cport reads
    are validated."""
    if not isinstance(doc.value, dict):
        doc.fail("expected a mapping")
    namespace, name, labels = _metadata(doc)
    spec = doc.get("spec") or doc.fail("missing required field 'spec'")
    if not isinstance(spec.value, dict):
        spec.fail("expected a mapping")
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount")
    ports: list[ContainerPort] = []
    for key in ("initContainers", "containers"):
        conts = spec.get(key)
        for cont in conts.sequence().items() if conts else []:
            cports = cont.get("ports")
            for item in cports.sequence().items() if cports else []:
                pname = item.get("name")
                ports.append(
                    ContainerPort(
                        _port_number(item.require("containerPort")),
                        _protocol(item.get("protocol")),
                        pname.string() if pname else "",
                    )
                )
    addrs: list[str] = []
    status = doc.get("status")
    if status is not None and isinstance(status.value, dict):
        ips = status.get("podIPs")
        for item in ips.sequence().items() if ips else []:
            addrs.append(_address(item.require("ip")))
        ip = status.get("podIP")
        if ip is not None and ip.value:
            first = _address(ip)
            if first not in addrs:
                addrs.insert(0, first)
    owner = ""
    meta = doc.require("metadata")
    refs = meta.get("ownerReferences")
    for ref in refs.sequence().items() if refs else []:
        ref_name = ref.get("name")
        ref_kind = ref.get("kind")
        if ref_name is not None:
            owner = ref_name.string()
            if ref_kind is not None and ref_kind.value == "ReplicaSet":
                # Deployment pods: the ReplicaSet is <deployment>-<hash>.
                owner = owner.rsplit("-", 1)[0]
    hn = spec.get("hostNetwork")
    return Workload(
        namespace=namespace,
        name=name,
        labels=tuple(sorted(labels.items())),
        service_account=sa.string() if sa else "default",
        addresses=tuple(addrs),
        ports=tuple(ports),
        location=doc.location,
        kind="Pod",
        owner=owner,
        host_network=hn.boolean() if hn is not None and hn.value is not None else False,
    )


def parse_namespace(doc: Cursor) -> tuple[str, dict[str, str]]:
    _, name, labels = _metadata(doc, namespaced=False)
    return name, labels


def build_inventory(
    workloads: Iterable[Workload], namespaces: dict[str, dict[str, str]], cluster: str = "default"
) -> Inventory:
    inv = Inventory(namespaces=dict(namespaces), cluster=cluster)
    for w in workloads:
        inv.add(w)
    return inv
