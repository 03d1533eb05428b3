"""The inventory: Workload, Pod (also inside List) and Namespace documents → workloads with the
labels Cilium derives for them; lookups; duplicates; directory loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cport.errors import FlowError, InputErrors, InventoryError
from cport.identity import Labels, reserved_labels
from cport.model import ContainerPort, Inventory, load, load_text

from ._helpers import one_error, pos

WORKLOAD = """\
apiVersion: cport.dev/v1alpha1
kind: Workload
metadata:
  name: ledger-db
  namespace: payments
  labels: {app: ledger, tier: data, io.cilium.k8s.policy.serviceaccount: spoofed}
spec:
  serviceAccount: ledger
  addresses: [198.51.100.20, "2001:db8::20"]
  ports:
    - {name: postgres, port: 5432}
    - {name: dns, port: 53, protocol: UDP}
    - {port: 9187}
"""

NAMESPACE = """\
apiVersion: v1
kind: Namespace
metadata:
  name: payments
  labels: {team: payments, tier: restricted, kubernetes.io/metadata.name: payments}
"""

# As `kubectl get pods -A -o yaml` prints it (trimmed, but with the usual extra fields).
POD_LIST = """\
apiVersion: v1
kind: List
metadata:
  resourceVersion: ""
items:
  - apiVersion: v1
    kind: Pod
    metadata:
      name: api-6f7c9d8b5-x2k4p
      generateName: api-6f7c9d8b5-
      namespace: shop
      uid: 0b7e
      resourceVersion: "1234"
      creationTimestamp: "2024-01-01T00:00:00Z"
      annotations: {kubectl.kubernetes.io/restartedAt: "2024-01-01"}
      labels: {app: api, pod-template-hash: 6f7c9d8b5, io.cilium.k8s.policy.cluster: evil}
      ownerReferences:
        - {apiVersion: apps/v1, kind: ReplicaSet, name: api-6f7c9d8b5, uid: 1b2c,
           controller: true, blockOwnerDeletion: true}
    spec:
      serviceAccountName: api-sa
      nodeName: node-1
      initContainers:
        - name: init
          image: busybox
          ports: [{containerPort: 9000, name: init-port}]
      containers:
        - name: app
          image: registry.example/api:1.0
          ports:
            - {name: http, containerPort: 8080, protocol: TCP}
            - {name: dns, containerPort: 53, protocol: UDP}
            - {containerPort: 9090}
          resources: {limits: {cpu: "1"}}
    status:
      phase: Running
      hostIP: 198.51.100.77
      podIP: 198.51.100.5
      podIPs: [{ip: 198.51.100.5}, {ip: "fd00::5"}]
  - apiVersion: v1
    kind: Pod
    metadata:
      name: db-0
      namespace: shop
      labels: {app: db}
      ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: db, uid: 9}]
    spec:
      containers: [{name: db, image: postgres}]
    status:
      podIPs: [{ip: 198.51.100.6}]
  - apiVersion: v1
    kind: Pod
    metadata: {name: node-exporter-a, namespace: monitoring, labels: {app: node-exporter}}
    spec:
      hostNetwork: true
      containers: [{name: c, ports: [{containerPort: 9100}]}]
    status: {podIP: 198.51.100.77}
  - apiVersion: v1
    kind: Pod
    metadata: {name: node-exporter-b, namespace: monitoring, labels: {app: node-exporter}}
    spec:
      hostNetwork: true
      containers: [{name: c, ports: [{containerPort: 9100}]}]
    status: {podIP: 198.51.100.77}
"""


def _inventory(text: str, **kw: str) -> Inventory:
    return load_text(text, "inv.yaml", **kw).inventory


# -- native Workload ----------------------------------------------------------------------------
def test_native_workload_fields() -> None:
    inv = _inventory(WORKLOAD)
    [w] = list(inv)
    assert (w.namespace, w.name, w.ref, w.kind) == (
        "payments",
        "ledger-db",
        "payments/ledger-db",
        "Workload",
    )
    assert w.service_account == "ledger"
    assert w.addresses == ("198.51.100.20", "2001:db8::20")
    assert w.ports == (
        ContainerPort(5432, "TCP", "postgres"),
        ContainerPort(53, "UDP", "dns"),
        ContainerPort(9187, "TCP", ""),
    )
    assert w.named_port("postgres") == [ContainerPort(5432, "TCP", "postgres")]
    assert w.named_port("nope") == []
    assert w.owner == ""
    assert w.host_network is False
    assert (w.location.file, w.location.line) == ("inv.yaml", 1)
    assert len(inv) == 1


def test_workload_defaults() -> None:
    inv = _inventory(
        "apiVersion: cport.dev/v1alpha1\nkind: Workload\nmetadata: {name: w}\nspec: {}\n"
    )
    [w] = list(inv)
    assert (w.namespace, w.service_account, w.addresses, w.ports) == ("default", "default", (), ())


def test_workload_identity_labels_as_cilium_derives_them() -> None:
    inv = _inventory(WORKLOAD + "---\n" + NAMESPACE)
    [w] = list(inv)
    labels = inv.identity_labels(w)
    assert labels.strings() == [
        "k8s:app=ledger",
        "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=payments",
        "k8s:io.cilium.k8s.namespace.labels.team=payments",
        "k8s:io.cilium.k8s.namespace.labels.tier=restricted",
        "k8s:io.cilium.k8s.policy.cluster=default",
        "k8s:io.cilium.k8s.policy.serviceaccount=ledger",
        "k8s:io.kubernetes.pod.namespace=payments",
        "k8s:tier=data",
    ]
    # The workload's own io.cilium.k8s.* label is dropped: it cannot spoof its service account.
    assert labels.values("k8s", "io.cilium.k8s.policy.serviceaccount") == ["ledger"]
    assert inv.identity_labels(w) is labels  # cached


def test_namespace_without_namespace_document_still_has_metadata_name() -> None:
    inv = _inventory(WORKLOAD)
    [w] = list(inv)
    ns_labels = [
        s for s in inv.identity_labels(w).strings() if "io.cilium.k8s.namespace.labels." in s
    ]
    assert ns_labels == ["k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=payments"]


def test_namespace_document_labels() -> None:
    bundle = load_text(NAMESPACE + "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: e}\n")
    assert bundle.inventory.namespaces == {
        "payments": {
            "team": "payments",
            "tier": "restricted",
            "kubernetes.io/metadata.name": "payments",
        },
        "e": {},
    }
    assert len(bundle.inventory) == 0


def test_cluster_name_default_and_configurable() -> None:
    [w] = list(_inventory(WORKLOAD))
    inv = _inventory(WORKLOAD)
    assert inv.cluster == "default"
    assert inv.identity_labels(w).values("k8s", "io.cilium.k8s.policy.cluster") == ["default"]
    prod = _inventory(WORKLOAD, cluster="prod")
    assert prod.cluster == "prod"
    [pw] = list(prod)
    assert prod.identity_labels(pw).values("k8s", "io.cilium.k8s.policy.cluster") == ["prod"]


def test_cluster_name_through_load(tmp_path: Path) -> None:
    (tmp_path / "w.yaml").write_text(WORKLOAD)
    inv = load([tmp_path], cluster="prod").inventory
    [w] = list(inv)
    assert "k8s:io.cilium.k8s.policy.cluster=prod" in inv.identity_labels(w).strings()


# -- Pods -------------------------------------------------------------------------------------
def test_pod_list_as_kubectl_prints_it() -> None:
    inv = _inventory(POD_LIST)
    assert [w.ref for w in inv] == [
        "shop/api-6f7c9d8b5-x2k4p",
        "shop/db-0",
        "monitoring/node-exporter-a",
        "monitoring/node-exporter-b",
    ]
    api = inv.find("shop", "api-6f7c9d8b5-x2k4p")
    assert api.kind == "Pod"
    assert api.service_account == "api-sa"
    assert api.addresses == ("198.51.100.5", "fd00::5")
    assert api.ports == (
        ContainerPort(9000, "TCP", "init-port"),
        ContainerPort(8080, "TCP", "http"),
        ContainerPort(53, "UDP", "dns"),
        ContainerPort(9090, "TCP", ""),
    )
    # A Deployment's pod: the ReplicaSet name without its hash.
    assert api.owner == "api"
    assert api.location.path == "items[0]"
    assert api.location.line == pos(POD_LIST, "- apiVersion: v1")[0]
    db = inv.find("shop", "db-0")
    assert (db.owner, db.service_account, db.addresses) == ("db", "default", ("198.51.100.6",))


def test_pod_identity_labels_drop_cilium_labels() -> None:
    inv = _inventory(POD_LIST)
    labels = inv.identity_labels(inv.find("shop", "api"))
    assert labels.values("k8s", "io.cilium.k8s.policy.cluster") == ["default"]
    assert labels.values("k8s", "io.cilium.k8s.policy.serviceaccount") == ["api-sa"]
    assert labels.get("k8s", "pod-template-hash") == "6f7c9d8b5"
    assert "k8s:io.kubernetes.pod.namespace=shop" in labels.strings()


def test_host_network_pods_get_the_host_identity_and_may_share_an_address() -> None:
    inv = _inventory(POD_LIST)
    a = inv.find("monitoring", "node-exporter-a")
    b = inv.find("monitoring", "node-exporter-b")
    assert a.host_network and b.host_network
    assert inv.identity_labels(a) == reserved_labels("host")
    assert inv.identity_labels(b) == Labels.parse("reserved:host")
    assert a.addresses == b.addresses == ("198.51.100.77",)


def test_pod_without_namespace_is_in_default() -> None:
    inv = _inventory("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n")
    [w] = list(inv)
    assert (w.namespace, w.service_account, w.owner) == ("default", "default", "")


def test_pod_list_and_pod_kinds_and_nested_errors_are_each_reported() -> None:
    text = (
        "apiVersion: v1\nkind: PodList\nitems:\n"
        "  - {apiVersion: v1, kind: Pod, metadata: {name: a}, spec: {}}\n"
        "  - {apiVersion: v1, kind: Pod, metadata: {name: b}, spec: {}, status: {podIP: bad}}\n"
        "  - {apiVersion: v1, kind: Pod, metadata: {name: c}}\n"
    )
    with pytest.raises(InputErrors) as info:
        load_text(text, "l.yaml")
    errs = info.value.errors
    assert [(e.location.path, e.location.line) for e in errs] == [
        ("items[1].status.podIP", 5),
        ("items[2]", 6),
    ]
    assert all(isinstance(e, InventoryError) for e in errs)
    assert "invalid IP address 'bad'" in errs[0].message


def test_pod_invalid_container_port() -> None:
    text = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
        "spec:\n  containers:\n    - name: c\n      ports: [{containerPort: 0}]\n"
    )
    err = one_error(text)
    assert err.code == "invalid-inventory"
    assert err.location.path == "spec.containers[0].ports[0].containerPort"
    assert (err.location.line, err.location.column) == pos(text, "containerPort: 0")


def test_pod_host_network_string_is_not_true() -> None:
    text = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
        "spec: {hostNetwork: 'false', containers: []}\n"
    )
    try:
        inv = _inventory(text)
    except InputErrors as exc:
        assert exc.errors[0].location.path == "spec.hostNetwork"
    else:
        [w] = list(inv)
        assert w.host_network is False


def test_non_mapping_labels_are_a_located_error() -> None:
    err = one_error(
        "apiVersion: cport.dev/v1alpha1\nkind: Workload\nmetadata: {name: w, labels: 5}\nspec: {}\n"
    )
    assert err.location.path == "metadata.labels"


# -- errors: duplicates, kinds ------------------------------------------------------------------
def test_duplicate_workload() -> None:
    text = (
        WORKLOAD
        + "---\n"
        + WORKLOAD.replace("198.51.100.20", "198.51.100.99").replace(
            '"2001:db8::20"', '"2001:db8::99"'
        )
    )
    err = one_error(text, "dup.yaml")
    assert err.code == "duplicate-workload"
    assert isinstance(err, InventoryError)
    assert err.location.line == pos(text, "apiVersion", 1)[0]
    assert "payments/ledger-db is defined twice" in err.message
    assert "dup.yaml:1:1" in err.message


def test_duplicate_address_including_other_spellings() -> None:
    text = (
        "apiVersion: cport.dev/v1alpha1\nkind: Workload\nmetadata: {name: a, namespace: x}\n"
        'spec: {addresses: ["2001:db8::1"]}\n---\n'
        "apiVersion: cport.dev/v1alpha1\nkind: Workload\nmetadata: {name: b, namespace: y}\n"
        'spec: {addresses: ["2001:0db8:0::0001"]}\n'
    )
    err = one_error(text)
    assert err.code == "duplicate-address"
    assert "2001:db8::1" in err.message
    assert "y/b" in err.message and "x/a" in err.message
    assert err.location.line == 6


def test_invalid_workload_fields() -> None:
    text = (
        "apiVersion: cport.dev/v1alpha1\nkind: Workload\nmetadata: {name: w}\n"
        "spec:\n  adresses: [198.51.100.1]\n"
    )
    err = one_error(text)
    assert err.code == "unknown-field"
    assert err.location.path == "spec.adresses"
    assert "did you mean 'addresses'?" in err.hint
    bad_name = (
        "apiVersion: cport.dev/v1alpha1\nkind: Workload\nmetadata: {name: w}\n"
        "spec:\n  ports: [{name: Not_A_Name, port: 80}]\n"
    )
    err = one_error(bad_name)
    assert err.location.path == "spec.ports[0].name"
    assert "invalid port name" in err.message


@pytest.mark.parametrize(
    ("head", "field", "hint"),
    [
        ("apiVersion: apps/v1\nkind: Deployment\n", "kind", "Pod (v1)"),
        ("apiVersion: v1\nkind: Service\n", "kind", "Workload (cport.dev/v1alpha1)"),
        ("apiVersion: cport.dev/v1\nkind: Workload\n", "apiVersion", "cport.dev/v1alpha1"),
        ("apiVersion: apps/v1\nkind: Pod\n", "apiVersion", "Pod (v1)"),
    ],
)
def test_unsupported_kind_has_a_hint(head: str, field: str, hint: str) -> None:
    err = one_error(head + "metadata: {name: x}\n", "k.yaml")
    assert err.code == "unknown-kind"
    assert err.location.path == field
    assert err.location.line == (1 if field == "apiVersion" else 2)
    assert hint in err.hint


def test_document_that_is_not_an_object() -> None:
    err = one_error("- just\n- a list\n")
    assert "apiVersion and kind" in err.message
    err = one_error("kind: Pod\n")
    assert "missing required field 'apiVersion'" in err.message


# -- lookups -----------------------------------------------------------------------------------
def test_find_by_name_by_owner_and_unknown() -> None:
    inv = _inventory(POD_LIST + "---\n" + WORKLOAD)
    assert inv.find("payments", "ledger-db").kind == "Workload"
    assert inv.find("shop", "api").name == "api-6f7c9d8b5-x2k4p"  # by Deployment name
    assert inv.find("shop", "db").name == "db-0"  # by StatefulSet name
    assert inv.by_address("fd00::5") is inv.find("shop", "api")
    assert inv.by_address("203.0.113.1") is None
    with pytest.raises(FlowError) as info:
        inv.find("shop", "nope")
    assert info.value.code == "unknown-workload"
    assert "shop/nope" in info.value.message
    assert "api-6f7c9d8b5-x2k4p" in info.value.message  # what does exist there
    with pytest.raises(FlowError) as info:
        inv.find("ghost", "x")
    assert info.value.code == "unknown-workload"
    assert "no workloads in namespace 'ghost'" in info.value.message
    assert "payments" in info.value.message and "shop" in info.value.message


# -- files and directories -------------------------------------------------------------------------
def test_directories_are_loaded_recursively(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "top.yaml").write_text(NAMESPACE)
    (tmp_path / "a" / "w.yml").write_text(WORKLOAD)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "j", "namespace": "payments", "labels": {"app": "json"}},
        "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "name": "web"}]}]},
        "status": {"podIP": "198.51.100.99"},
    }
    (tmp_path / "a" / "b" / "pod.json").write_text(json.dumps(pod, indent=2))
    (tmp_path / "a" / "b" / "notes.txt").write_text("this: is not loaded: at all: [")
    (tmp_path / "a" / "README.md").write_text("# not yaml\n")
    bundle = load([tmp_path])
    assert bundle.documents == 3
    assert sorted(w.ref for w in bundle.inventory) == ["payments/j", "payments/ledger-db"]
    assert bundle.inventory.namespaces["payments"]["team"] == "payments"
    j = bundle.inventory.find("payments", "j")
    assert j.location.file == str(tmp_path / "a" / "b" / "pod.json")
    assert j.ports == (ContainerPort(80, "TCP", "web"),)


def test_files_and_directories_mix(tmp_path: Path) -> None:
    (tmp_path / "inv").mkdir()
    (tmp_path / "inv" / "w.yaml").write_text(WORKLOAD)
    (tmp_path / "ns.yaml").write_text(NAMESPACE)
    bundle = load([tmp_path / "inv", str(tmp_path / "ns.yaml")])
    assert [w.ref for w in bundle.inventory] == ["payments/ledger-db"]
    assert "payments" in bundle.inventory.namespaces


def test_missing_path_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(InputErrors) as info:
        load([tmp_path / "nope.yaml"])
    [err] = info.value.errors
    assert err.code == "file-not-found"
    assert err.location.file == str(tmp_path / "nope.yaml")


def test_overlapping_paths_read_each_file_once(tmp_path: Path) -> None:
    (tmp_path / "w.yaml").write_text(WORKLOAD)
    bundle = load([tmp_path, tmp_path / "w.yaml"])
    assert [w.ref for w in bundle.inventory] == ["payments/ledger-db"]
