"""The canonical encoding and the stored-event view.

`encode` (what every store writes, and `AuditEvent.body`) builds the canonical body with a
template; `body_json` is the encoding by the book (json, sorted keys, no spaces, UTF-8). They
must agree to the byte for every event — or the hash chain of an existing store would no longer
verify — including values of unexpected types, which `encode` hands to json. `StoredEvent`, as
queries yield it, decodes its event only when asked.
"""

from __future__ import annotations

import enum
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cport.audit import GENESIS, AuditEvent, PolicyRef, StoredEvent, link
from cport.audit._event import _INT_FIELDS, body_json, encode, policies_json

INT_FIELDS = sorted(_INT_FIELDS)
STR_FIELDS = [
    "kind",
    "node",
    "enforcer",
    "verdict",
    "reason",
    "protocol",
    "src_ip",
    "dst_ip",
    "direction",
    "subject",
    "issuer",
    "credential_kind",
    "token_id",
    "workload",
    "termination",
]


class Verdict(enum.StrEnum):
    DENIED = "denied"


class Port(enum.IntEnum):
    POSTGRES = 5432


def base(**over: Any) -> AuditEvent:
    doc: dict[str, Any] = {
        "time_ns": 1_790_000_000_000_000_000,
        "kind": "decision",
        "node": "node-a",
        "enforcer": "proxy",
        "verdict": "allowed",
        "reason": "policy-allowed",
        "src_ip": "198.51.100.10",
        "src_port": 40000,
        "dst_ip": "198.51.100.20",
        "dst_port": 5432,
        "peer_identity": 257,
        "peer_labels": ("k8s:app=payments-api",),
        "workload": "payments/ledger-db",
        "port": 5432,
        "policies": (PolicyRef("PortPolicy", "payments", "ledger-db", 3),),
    }
    doc.update(over)
    return AuditEvent(**doc)


def assert_same_encoding(ev: AuditEvent) -> bool:
    """`encode` gives `body_json`'s bytes and `policies_json`'s text, or raises what they
    raise. Returns whether the template path was taken."""
    try:
        want = (body_json(ev), policies_json(ev))
    except Exception as exc:  # the same failure, whatever it is
        with pytest.raises(type(exc)):
            encode(ev)
        return False
    body, column, fast = encode(ev)
    assert (body, column) == want
    assert ev.body() == body and ev.policies_column() == column
    if fast:  # the stores rely on it: exact ints, strs
        assert all(type(getattr(ev, f)) is int for f in INT_FIELDS)
        assert all(isinstance(getattr(ev, f), str) for f in STR_FIELDS)
    return fast


# -- the template agrees with json ---------------------------------------------------------------
texts = st.text(max_size=12)  # every code point but surrogates: controls, quotes, NUL, emoji…
ints = st.integers(min_value=-(2**80), max_value=2**80)
odd_scalars = st.one_of(st.booleans(), st.floats(allow_nan=False), st.none(), texts, ints)
policies = st.builds(
    PolicyRef,
    kind=texts | st.sampled_from([1, 1.0, True, None]),
    namespace=texts,
    name=texts | st.lists(texts, max_size=2),
    revision=st.one_of(ints, st.booleans(), st.floats(allow_nan=False)),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), ints, texts),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)


@st.composite
def events(draw: st.DrawFn, odd: bool = False) -> AuditEvent:
    doc: dict[str, Any] = {f: draw(ints) for f in INT_FIELDS}
    doc |= {f: draw(texts) for f in STR_FIELDS}
    doc["peer_labels"] = draw(st.lists(texts, max_size=4).map(tuple) | st.lists(texts))
    doc["policies"] = tuple(draw(st.lists(policies, max_size=3)))
    doc["extra"] = draw(st.just({}) | st.dictionaries(texts, json_values, max_size=3))
    if odd:  # one value of another type than its field declares
        name = draw(st.sampled_from([*INT_FIELDS, *STR_FIELDS]))
        doc[name] = draw(odd_scalars)
    return AuditEvent(**doc)


@settings(max_examples=400, deadline=None)
@given(events())
def test_encode_is_json_to_the_byte(ev: AuditEvent) -> None:
    fast = assert_same_encoding(ev)
    # The template covers every event whose values have their declared types.
    assert fast == (
        not ev.extra
        and all(
            type(p.revision) is int and isinstance(p.kind, str) and isinstance(p.name, str)
            for p in ev.policies
        )
    )


@settings(max_examples=300, deadline=None)
@given(events(odd=True))
def test_values_of_other_types_encode_as_json_does(ev: AuditEvent) -> None:
    assert_same_encoding(ev)


@pytest.mark.parametrize(
    "over",
    [
        {"verdict": Verdict.DENIED},  # a str subclass: its value, as json writes it
        {"port": Port.POSTGRES},  # an int subclass
        {"src_port": True},  # json writes true, not 1
        {"bytes_in": 1.5},
        {"subject": None},
        {"peer_labels": ["a", "b"]},  # a list, as a tuple
        {"peer_labels": ("a", 1)},
        {"peer_labels": "ab"},
        {"policies": (PolicyRef("PortPolicy", "ns", "p", True),)},
        {"policies": (PolicyRef("PortPolicy", "ns", 7, 1),)},  # type: ignore[arg-type]
        {"extra": {"b": 1, "a": {"z": [1, 2], "y": None}}},  # sorted at every level
        {"extra": None},
        {"subject": 'nul\x00 tab\t quote" backslash\\ é ✓ \U0001f600 \u2028'},
        {"time_ns": -(2**70)},
    ],
)
def test_edge_values(over: dict[str, Any]) -> None:
    assert_same_encoding(base(**over))


def test_a_lone_surrogate_fails_as_json_does() -> None:
    ev = base(subject="\ud800")
    with pytest.raises(UnicodeEncodeError):
        body_json(ev)
    with pytest.raises(UnicodeEncodeError):
        encode(ev)


def test_the_body_is_the_documented_canonical_json() -> None:
    """Sorted keys, no spaces, UTF-8, policies as objects, schema version "v": 1."""
    ev = base(subject="café", extra={})
    doc = {f: getattr(ev, f) for f in (*INT_FIELDS, *STR_FIELDS)}
    doc |= {
        "v": 1,
        "extra": {},
        "peer_labels": list(ev.peer_labels),
        "policies": [
            {"kind": p.kind, "namespace": p.namespace, "name": p.name, "revision": p.revision}
            for p in ev.policies
        ],
    }
    want = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert ev.body() == want
    assert link(GENESIS, want) == hashlib.sha256(bytes(32) + want).digest()
    assert ev.policies_column() == '["PortPolicy/payments/ledger-db"]'
    assert base(policies=()).policies_column() == "[]"


def test_a_known_body_and_hash_never_change() -> None:
    """A record written by an earlier version must still verify: pin body hashes computed by
    the json-based encoder before the fast path existed (both the fast path, no `extra`,
    and the json fallback, with `extra`)."""
    fast = base(subject="alice@corp.example", token_id="tok-1")
    assert hashlib.sha256(fast.body()).hexdigest() == (
        "14c29dbb52249e318feae6908346f2981a84217be9193f25e0acfeb46f5fcb2f"
    )
    ev = base(subject="alice@corp.example", token_id="tok-1", extra={"n": 1})
    assert hashlib.sha256(ev.body()).hexdigest() == (
        "9aa3eebabedd559696f609fca7c08f23bb87a067a5340af1f134401bb0ef9b38"
    )
    assert ev.body().startswith(b'{"bytes_in":0,"bytes_out":0,"credential_kind":"",')
    assert ev.body().endswith(b'"v":1,"verdict":"allowed","workload":"payments/ledger-db"}')


# -- StoredEvent ---------------------------------------------------------------------------------
def test_stored_event_decodes_its_body_on_first_access() -> None:
    ev = base()
    h = link(GENESIS, ev.body())
    lazy = StoredEvent.from_row(7, ev.body(), h)
    eager = StoredEvent(7, ev, h)
    assert (lazy.seq, lazy.hash) == (7, h)
    assert lazy == eager and eager == lazy
    assert hash(lazy) == hash(eager)
    assert lazy.event == ev and lazy.event is lazy.event  # decoded once
    assert repr(lazy) == repr(eager)
    assert lazy != StoredEvent(8, ev, h)
    assert lazy != StoredEvent(7, base(port=1), h)
    assert lazy != (7, ev, h)


def test_stored_event_is_read_only() -> None:
    s = StoredEvent.from_row(1, base().body(), GENESIS)
    with pytest.raises(AttributeError):
        s.seq = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        s.event = base()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        s.other = 1  # type: ignore[attr-defined]


def test_an_unreadable_body_fails_when_the_event_is_read() -> None:
    s = StoredEvent.from_row(3, b'{"v":99}', GENESIS)
    assert s.seq == 3  # paging by seq needs no decoding
    with pytest.raises(ValueError, match="schema version"):
        _ = s.event


# -- decoding ------------------------------------------------------------------------------------
def _doc(ev: AuditEvent) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(ev.body())
    return doc


def from_body_by_the_book(body: bytes) -> AuditEvent:
    """`AuditEvent.from_body` as it was: records must decode to the same values."""
    doc = json.loads(body)
    if doc.pop("v", None) != 1:
        raise ValueError("unknown audit schema version")
    doc["peer_labels"] = tuple(doc.get("peer_labels", ()))
    doc["policies"] = tuple(PolicyRef(**p) for p in doc.get("policies", ()))
    return AuditEvent(**doc)


@settings(max_examples=300, deadline=None)
@given(events() | events(odd=True))
def test_from_body_reads_back_every_event(ev: AuditEvent) -> None:
    body = ev.body()
    got = AuditEvent.from_body(body)
    assert repr(got) == repr(from_body_by_the_book(body))  # repr: True, 1 and 1.0 differ
    assert got.body() == body
    assert isinstance(got.peer_labels, tuple) and isinstance(got.policies, tuple)
    assert all(type(p) is PolicyRef for p in got.policies)


def test_from_body_keeps_what_it_knows_of_a_newer_record() -> None:
    doc = _doc(base()) | {"added_later": 1}
    assert AuditEvent.from_body(json.dumps(doc)) == base()
    del doc["added_later"], doc["termination"]  # an older record: the default
    assert AuditEvent.from_body(json.dumps(doc)).termination == ""


def test_from_body_keeps_a_boolean_revision_as_written() -> None:
    ev = AuditEvent.from_body(base(policies=(PolicyRef("k", "ns", "p", 1),)).body())
    assert type(ev.policies[0].revision) is int
    odd = _doc(base())
    odd["policies"] = [{"kind": "k", "namespace": "ns", "name": "p", "revision": True}]
    assert AuditEvent.from_body(json.dumps(odd)).policies[0].revision is True


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"v": 2}, ValueError),
        ({"policies": [{"kind": "k", "namespace": "ns", "name": "p"}]}, TypeError),
        (
            {"policies": [{"kind": "k", "namespace": "", "name": "p", "revision": 1, "x": 1}]},
            TypeError,
        ),
        ({"policies": [["k", "ns", "p", 1]]}, TypeError),
        ({"policies": 5}, TypeError),
        ({"peer_labels": 5}, TypeError),
    ],
)
def test_from_body_rejects_what_it_cannot_read(change: dict[str, Any], error: type) -> None:
    """verify() names a record "altered" for a ValueError or TypeError while decoding."""
    with pytest.raises(error):
        AuditEvent.from_body(json.dumps(_doc(base()) | change))
    without_v = _doc(base())
    del without_v["v"]
    with pytest.raises(ValueError, match="schema version"):
        AuditEvent.from_body(json.dumps(without_v))
