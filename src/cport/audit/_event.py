"""The audit event, schema v1: one decision or one connection close.

An event is a flat record (for indexes and queries) whose canonical encoding — JSON with
sorted keys and no spaces — is what the hash chain covers. Never a credential: a token is
represented by its ``jti`` or SHA-256 (`token_id`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from itertools import repeat
from json.encoder import encode_basestring
from operator import itemgetter
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class PolicyRef:
    kind: str
    namespace: str
    name: str
    revision: int


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit record. Times are UTC nanoseconds since the epoch."""

    time_ns: int
    kind: str  # decision | close
    node: str
    enforcer: str  # proxy | ebpf | cli
    verdict: str  # allowed | denied | audit | auth-required
    reason: str
    protocol: str = "TCP"
    src_ip: str = ""
    src_port: int = 0
    dst_ip: str = ""
    dst_port: int = 0
    direction: str = "ingress"
    peer_identity: int = 0
    peer_labels: tuple[str, ...] = ()
    subject: str = ""
    issuer: str = ""
    credential_kind: str = ""
    token_id: str = ""  # jti or sha256 of the credential — never the credential
    workload: str = ""  # namespace/name of the governed workload
    port: int = 0
    policies: tuple[PolicyRef, ...] = ()
    table_revision: int = 0
    bytes_in: int = 0  # close events
    bytes_out: int = 0
    duration_ns: int = 0
    termination: str = ""  # close events: client-closed, revoked, policy-changed, expired, …
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self) -> bytes:
        """The canonical encoding the hash chain covers: JSON, keys sorted at every level,
        no spaces, UTF-8 (see `encode`)."""
        return encode(self)[0]

    @classmethod
    def from_body(cls, body: bytes | str) -> AuditEvent:
        doc = json.loads(body)
        if type(doc) is dict and doc.keys() == _BODY_KEYS and cls is AuditEvent:
            # Every field, nothing else (what this version writes): fill the slots directly;
            # the dataclass __init__ would set them one by one through object.__setattr__.
            if doc["v"] != SCHEMA_VERSION:
                raise ValueError("unknown audit schema version")
            doc["peer_labels"] = tuple(doc["peer_labels"])
            doc["policies"] = tuple(map(_policy_ref, doc["policies"]))
            event = object.__new__(AuditEvent)
            any(map(_SET_FIELD, repeat(event), _FIELD_ORDER, _GET_FIELDS(doc)))
            return event
        if doc.pop("v", None) != SCHEMA_VERSION:
            raise ValueError("unknown audit schema version")
        doc["peer_labels"] = tuple(doc.get("peer_labels", ()))
        doc["policies"] = tuple(PolicyRef(**p) for p in doc.get("policies", ()))
        if not doc.keys() <= _FIELD_NAMES:  # written by a newer version: keep what we know
            doc = {k: v for k, v in doc.items() if k in _FIELD_NAMES}
        return cls(**doc)

    def policies_column(self) -> str:
        """The indexed form of `policies`: a JSON list of ``kind/namespace/name`` (the
        text `policies_json` gives, built without the json encoder)."""
        if not self.policies:
            return "[]"
        enc = encode_basestring
        return (
            "[" + ", ".join([enc(f"{p.kind}/{p.namespace}/{p.name}") for p in self.policies]) + "]"
        )

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["policies"] = [asdict(p) for p in self.policies]
        doc["peer_labels"] = list(self.peer_labels)
        return doc


_FIELD_NAMES = frozenset(f.name for f in fields(AuditEvent))
_FIELD_ORDER = tuple(f.name for f in fields(AuditEvent))
_BODY_KEYS = frozenset([*_FIELD_NAMES, "v"])
_GET_FIELDS = itemgetter(*_FIELD_ORDER)
_SET_FIELD = object.__setattr__  # returns None: `any(map(...))` runs it for every field
_POLICY_KEYS = frozenset(f.name for f in fields(PolicyRef))
# (kind, namespace, name, revision) → its PolicyRef (immutable, so shared): decoding a
# record's policies is a lookup. Only for str names and an int revision: True == 1, yet
# they differ.
_POLICY_REFS: dict[tuple[Any, ...], PolicyRef] = {}


def _policy_ref(doc: Any) -> PolicyRef:
    if type(doc) is dict and doc.keys() == _POLICY_KEYS:
        key = (doc["kind"], doc["namespace"], doc["name"], doc["revision"])
        if not (
            type(key[0]) is str
            and type(key[1]) is str
            and type(key[2]) is str
            and type(key[3]) is int
        ):  # equal keys must mean equal values: 1 == 1.0 == True
            return PolicyRef(*key)
        ref = _POLICY_REFS.get(key)
        if ref is None:
            if len(_POLICY_REFS) >= 4096:
                _POLICY_REFS.clear()
            ref = _POLICY_REFS[key] = PolicyRef(*key)
        return ref
    return PolicyRef(**doc)  # a TypeError for anything but the four fields


_SORTED_KEYS = tuple(sorted([*(f.name for f in fields(AuditEvent)), "v"]))
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_ENCODER_SPACED = json.JSONEncoder(ensure_ascii=False)  # json.dumps' default separators


# -- the canonical encoding ------------------------------------------------------------------
def body_json(ev: AuditEvent) -> bytes:
    """The canonical body by the book: the event as a JSON object (policies as objects),
    ``json`` with sorted keys, no spaces, UTF-8. `encode` gives the same bytes faster; this
    is its reference, and its fallback for values of unexpected types."""
    doc: dict[str, Any] = {
        name: SCHEMA_VERSION if name == "v" else getattr(ev, name) for name in _SORTED_KEYS
    }
    doc["policies"] = [
        {"kind": p.kind, "name": p.name, "namespace": p.namespace, "revision": p.revision}
        for p in ev.policies
    ]
    if ev.extra:  # arbitrary nesting: let json sort every level
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    # Keys are already in sorted order: no sorting pass needed.
    return _ENCODER.encode(doc).encode()


def policies_json(ev: AuditEvent) -> str:
    """The policies column by the book (`encode`'s reference)."""
    if not ev.policies:
        return "[]"
    return _ENCODER_SPACED.encode([f"{p.kind}/{p.namespace}/{p.name}" for p in ev.policies])


# The fast path fills one %-template, in sorted key order, each str already a JSON string
# literal. It applies only when every value has the type its field declares (exact int; str;
# a tuple or list of str; PolicyRef-like policies with an int revision) and `extra` is empty:
# then its bytes are json's to the byte (tests/audit/test_event.py compares them, and so does
# `_self_check` at import); anything else goes to `body_json`. Written out field by field:
# ~4 µs an event where `body_json` takes ~13.
_INT_FIELDS = frozenset(f.name for f in fields(AuditEvent) if f.type in ("int", int))
_TEMPLATE = (
    "{"
    + ",".join(
        f'"{k}":'
        + {"v": str(SCHEMA_VERSION), "extra": "{}"}.get(k, "%d" if k in _INT_FIELDS else "%s")
        for k in _SORTED_KEYS
    )
    + "}"
)
_POLICY = '{"kind":%s,"name":%s,"namespace":%s,"revision":%d}'
# (kind, namespace, name, revision) → (its JSON object, its policies-column element): a few
# hundred policies cover a whole estate. Keys are str values (checked by `enc` before they
# are stored) and an exact-int revision, so an equal key always encodes the same.
_POLICY_CACHE: dict[tuple[Any, ...], tuple[str, str]] = {}


def encode(ev: AuditEvent) -> tuple[bytes, str, bool]:
    """``(body, policies column, fast)``: the canonical body (`body_json`'s bytes) and the
    policies column (`policies_json`'s text) in one pass, by the template (``fast``) or, for
    a value of an unexpected type, by `json` itself. ``fast`` also promises that every int
    field holds an exact int and every str field a str (the stores rely on it)."""
    extra = ev.extra
    if (
        type(ev.time_ns) is int
        and type(ev.src_port) is int
        and type(ev.dst_port) is int
        and type(ev.peer_identity) is int
        and type(ev.port) is int
        and type(ev.table_revision) is int
        and type(ev.bytes_in) is int
        and type(ev.bytes_out) is int
        and type(ev.duration_ns) is int
        and not extra
        and type(extra) is dict
        and isinstance(ev.peer_labels, tuple | list)
    ):
        enc = encode_basestring  # a str's JSON literal; TypeError for anything else
        try:
            if ev.policies:
                pols = []
                names = []
                for p in ev.policies:
                    kind, namespace, name, revision = p.kind, p.namespace, p.name, p.revision
                    if type(revision) is not int:  # True == 1, yet json writes true
                        raise TypeError("revision")
                    key = (kind, namespace, name, revision)
                    known = _POLICY_CACHE.get(key)
                    if known is None:
                        if len(_POLICY_CACHE) >= 4096:
                            _POLICY_CACHE.clear()
                        known = _POLICY_CACHE[key] = (
                            _POLICY % (enc(kind), enc(name), enc(namespace), revision),
                            enc(f"{kind}/{namespace}/{name}"),
                        )
                    pols.append(known[0])
                    names.append(known[1])
                policies = "[" + ",".join(pols) + "]"
                column = "[" + ", ".join(names) + "]"
            else:
                policies = column = "[]"
            body = _TEMPLATE % (  # the order of _SORTED_KEYS
                ev.bytes_in,
                ev.bytes_out,
                enc(ev.credential_kind),
                enc(ev.direction),
                enc(ev.dst_ip),
                ev.dst_port,
                ev.duration_ns,
                enc(ev.enforcer),
                enc(ev.issuer),
                enc(ev.kind),
                enc(ev.node),
                ev.peer_identity,
                "[" + ",".join(map(enc, ev.peer_labels)) + "]",
                policies,
                ev.port,
                enc(ev.protocol),
                enc(ev.reason),
                enc(ev.src_ip),
                ev.src_port,
                enc(ev.subject),
                ev.table_revision,
                enc(ev.termination),
                ev.time_ns,
                enc(ev.token_id),
                enc(ev.verdict),
                enc(ev.workload),
            )
            return body.encode(), column, True
        except (TypeError, AttributeError):
            pass
    return body_json(ev), policies_json(ev), False


def _self_check() -> None:
    """The template and `encode`'s argument list follow the fields: a field added to
    `AuditEvent` without them fails here, at import, not in a chain."""
    ints = iter(range(1, 1000))
    values: dict[str, Any] = {
        f.name: next(ints) if f.name in _INT_FIELDS else f'{f.name}\t"é'
        for f in fields(AuditEvent)
        if f.name not in ("peer_labels", "policies", "extra")
    }
    sample = AuditEvent(
        **values,
        peer_labels=("a", "b"),
        policies=(PolicyRef("k", "ns", "n", 1), PolicyRef("k2", "", "n2", 2)),
    )
    body, column, fast = encode(sample)
    if not fast or body != body_json(sample) or column != policies_json(sample):
        raise AssertionError("cport.audit._event.encode disagrees with body_json")


_self_check()
