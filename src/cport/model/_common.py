"""Parsing pieces the importers share: label selectors, ports, CIDRs, metadata."""

from __future__ import annotations

import ipaddress
import re

from cport.identity._labels import NAMESPACE_KEY, SOURCES
from cport.model._fields import Cursor
from cport.model._selector import IPNet, Op, Requirement, Selector, cidr_requirement, eq
from cport.model._types import PROTOCOLS, PortRange

#: A Kubernetes port name (IANA_SVC_NAME): lowercase alphanumerics and '-', at most 15, a letter.
PORT_NAME_RE = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
META_KEYS = frozenset(
    {
        "name",
        "namespace",
        "labels",
        "annotations",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
        "finalizers",
        "ownerReferences",
        "generateName",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    }
)
DNS_LABEL_MAX = 253
_OPS = {"In": Op.IN, "NotIn": Op.NOT_IN, "Exists": Op.EXISTS, "DoesNotExist": Op.DOES_NOT_EXIST}


def split_key(key: str, default_source: str) -> tuple[str, str]:
    """``k8s:app`` → (k8s, app); ``app`` → (default_source, app)."""
    head, colon, rest = key.partition(":")
    if colon and head in SOURCES and rest:
        return head, rest
    return default_source, key


def parse_label_selector(cur: Cursor, default_source: str) -> Selector:
    """A Kubernetes LabelSelector (``matchLabels`` and ``matchExpressions``)."""
    cur.mapping({"matchLabels", "matchExpressions"})
    reqs: list[Requirement] = []
    ml = cur.get("matchLabels")
    if ml is not None:
        for key, value in ml.string_map().items():
            src, k = split_key(key, default_source)
            reqs.append(eq(src, k, value))
    me = cur.get("matchExpressions")
    for item in me.sequence().items() if me else []:
        item.mapping({"key", "operator", "values"})
        src, k = split_key(item.require("key").string(), default_source)
        op_cur = item.require("operator")
        op = _OPS[op_cur.choice(tuple(_OPS))]
        vals_cur = item.get("values")
        values = (
            tuple(sorted(v.scalar_string() for v in vals_cur.sequence().items()))
            if vals_cur
            else ()
        )
        if op in (Op.IN, Op.NOT_IN) and not values:
            item.fail(f"operator {op.value} needs a non-empty 'values' list")
        if op in (Op.EXISTS, Op.DOES_NOT_EXIST) and values:
            item.fail(f"operator {op.value} takes no 'values'")
        reqs.append(Requirement(src, k, op, values))
    return Selector.of(*reqs)


def in_namespace(sel: Selector, namespace: str) -> Selector:
    return sel.with_requirement(eq("k8s", NAMESPACE_KEY, namespace))


def parse_port(
    cur: Cursor,
    *,
    port_key: str,
    default_protocol: str,
    end_key: str | None = "endPort",
    protocol_key: str = "protocol",
    allow_names: bool = True,
    extra: frozenset[str] = frozenset(),
) -> PortRange:
    """One port entry: ``{port, endPort, protocol}``. `port` may be a number, a numeric string,
    a named port or absent/0 (every port)."""
    known = {port_key, protocol_key, *extra}
    if end_key:
        known.add(end_key)
    cur.mapping(known)
    proto_cur = cur.get(protocol_key)
    protocol = proto_cur.choice(PROTOCOLS, fold=True) if proto_cur else default_protocol
    port_cur = cur.get(port_key)
    value = port_cur.value if port_cur is not None else 0
    name: str | None = None
    if isinstance(value, str) and (value.isascii() and value.isdecimal()):
        value = int(value)
    if isinstance(value, str):
        assert port_cur is not None
        if not allow_names:
            port_cur.fail(f"named port {value!r} is not allowed here", hint="use a number")
        if not PORT_NAME_RE.match(value):
            port_cur.fail(
                f"invalid port {value!r}",
                hint="a number from 1 to 65535, or a port name (lowercase, ≤15 chars)",
            )
        name, value = value, 0
    elif isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        assert port_cur is not None
        port_cur.fail(
            f"invalid port {value!r}", hint="a number from 1 to 65535, or 0 for every port"
        )
    end = value
    end_cur = cur.get(end_key) if end_key else None
    if end_cur is not None and end_cur.value not in (None, 0):
        end_val = end_cur.value
        if isinstance(end_val, str) and (end_val.isascii() and end_val.isdecimal()):
            end_val = int(end_val)
        if isinstance(end_val, bool) or not isinstance(end_val, int) or not 1 <= end_val <= 65535:
            end_cur.fail(f"invalid endPort {end_cur.value!r}", hint="a number from 1 to 65535")
        if name is not None or value == 0:
            end_cur.fail("endPort needs a numeric port")
        if end_val < value:
            end_cur.fail(f"endPort {end_val} is below port {value}")
        end = end_val
    if value == 0:
        end = 0
    return PortRange(protocol=protocol, port=value, end_port=end, name=name)


def parse_cidr(cur: Cursor) -> IPNet:
    text = cur.string()
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        cur.fail(f"invalid CIDR {text!r}", hint="an address prefix such as 203.0.113.0/24")


def parse_cidr_rule(
    cur: Cursor,
    *,
    cidr_key: str = "cidr",
    except_key: str = "except",
    unsupported: dict[str, str] | None = None,
) -> Requirement:
    cur.mapping({cidr_key, except_key}, unsupported)
    prefix = parse_cidr(cur.require(cidr_key))
    excepts: list[IPNet] = []
    exc_cur = cur.get(except_key)
    for item in exc_cur.sequence().items() if exc_cur else []:
        net = parse_cidr(item)
        if net.version != prefix.version or not net.subnet_of(prefix):  # type: ignore[arg-type]
            item.fail(f"except {net} is not inside {prefix}")
        excepts.append(net)
    return cidr_requirement(prefix, tuple(excepts))


def metadata(doc: Cursor, *, namespaced: bool) -> tuple[str, str]:
    meta = doc.require("metadata", "every object needs metadata.name").mapping(META_KEYS)
    name_cur = meta.require("name")
    name = name_cur.string()
    if len(name) > DNS_LABEL_MAX:
        name_cur.fail("name is longer than 253 characters")
    ns_cur = meta.get("namespace")
    if not namespaced:
        return "", name
    return (ns_cur.string() if ns_cur is not None else "default"), name
