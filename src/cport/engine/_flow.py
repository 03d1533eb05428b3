"""Naming the two ends of a flow: ``NAMESPACE/WORKLOAD``, ``entity:NAME``, ``cidr:IP`` (or a
bare IP) and ``labels:k=v,…``, resolved to security identities through the table."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cport.engine._table import Table
from cport.errors import FlowError
from cport.identity import RESERVED_IDS, WORLD_ID, Labels
from cport.model import Inventory, Workload


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One end of a flow: its identity, labels, and the workload behind it if any."""

    identity: int
    labels: Labels
    display: str
    workload: Workload | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.display,
            "identity": self.identity,
            "labels": self.labels.strings(),
        }
        if self.workload is not None:
            out["workload"] = self.workload.ref
            out["serviceAccount"] = self.workload.service_account
        return out


def labels_spec(spec: str) -> Labels | None:
    """The label set of a ``labels:…`` spec (used to pre-allocate its identity)."""
    if not spec.startswith("labels:"):
        return None
    try:
        labels = Labels.parse(spec[len("labels:") :], default_source="k8s")
    except Exception as exc:
        raise FlowError(f"bad labels in {spec!r}: {exc}", code="invalid-flow") from exc
    if not len(labels):
        raise FlowError(f"{spec!r} names no labels", code="invalid-flow")
    for value in labels.values("cidr", "prefix"):
        try:
            ipaddress.ip_network(value)
        except ValueError:
            raise FlowError(
                f"{spec!r}: cidr:prefix={value} is not an address prefix", code="invalid-flow"
            ) from None
    return labels


def _by_ip(table: Table, inventory: Inventory, text: str, spec: str) -> Endpoint:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise FlowError(f"{spec!r}: {text!r} is not an IP address", code="invalid-flow") from None
    w = inventory.by_address(str(ip))
    if w is not None:
        num = table.addresses[str(ip)]
        return Endpoint(num, table.identities[num], f"{w.ref} ({ip})", w)
    # Longest prefix match over the CIDR identities policies created (Cilium's ipcache).
    for bucket in sorted(table.ipcache, reverse=True):
        if bucket // 1000 != ip.version:
            continue
        net = ipaddress.ip_network((ip, bucket % 1000), strict=False)
        cidr_id = table.ipcache[bucket].get(net)
        if cidr_id is not None:
            return Endpoint(cidr_id, table.identities[cidr_id], f"{ip} (cidr {net})")
    return Endpoint(WORLD_ID, table.identities[WORLD_ID], f"{ip} (world)")


def resolve_endpoint(table: Table, inventory: Inventory, spec: str) -> Endpoint:
    """Resolve a flow endpoint spec against the table (identities) and inventory (names)."""
    kind, sep, rest = spec.partition(":")
    if sep and kind == "entity":
        num = RESERVED_IDS.get(rest)
        if num is None:
            raise FlowError(
                f"unknown entity {rest!r} in {spec!r}; one of: {', '.join(RESERVED_IDS)}"
                + (
                    " (cluster and all are sets of peers, not one peer)"
                    if rest in ("cluster", "all")
                    else ""
                ),
                code="invalid-flow",
            )
        return Endpoint(num, table.identities[num], f"entity:{rest}")
    if sep and kind in ("cidr", "ip"):
        return _by_ip(table, inventory, rest.split("/")[0], spec)
    if sep and kind == "labels":
        labels = labels_spec(spec)
        assert labels is not None
        for num, known in table.identities.items():
            if known == labels:
                ws = table.endpoints.get(num)
                return Endpoint(num, labels, spec, ws[0] if ws else None)
        raise FlowError(
            f"{spec!r} has no identity in this table; compile with it as an extra identity",
            code="invalid-flow",
        )
    if "/" in spec and not sep:
        ns, _, name = spec.partition("/")
        w = inventory.find(ns, name)
        num = table.workload_ids[(w.namespace, w.name)]
        return Endpoint(num, table.identities[num], w.ref, w)
    try:
        ipaddress.ip_address(spec)
    except ValueError:
        raise FlowError(
            f"cannot read {spec!r}: use NAMESPACE/WORKLOAD, entity:NAME, cidr:IP or labels:k=v,...",
            code="invalid-flow",
        ) from None
    return _by_ip(table, inventory, spec, spec)
