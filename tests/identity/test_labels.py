"""Labels and label sets: parsing, canonical order, hashing, lookups by source."""

from __future__ import annotations

import pytest

from cport.errors import CportError
from cport.identity import ENTITIES, RESERVED_IDS, Label, Labels, reserved_labels
from cport.identity._labels import SOURCES


@pytest.mark.parametrize(
    ("text", "source", "key", "value"),
    [
        ("k8s:app=web", "k8s", "app", "web"),
        ("reserved:host", "reserved", "host", ""),
        ("cidr:prefix=203.0.113.0/24", "cidr", "prefix", "203.0.113.0/24"),
        ("oidc:groups=dba", "oidc", "groups", "dba"),
        ("aws:arn=arn:aws:iam::1:role/x", "aws", "arn", "arn:aws:iam::1:role/x"),
        ("spiffe:id=spiffe://corp/ns/a", "spiffe", "id", "spiffe://corp/ns/a"),
        ("agent:actor=bot", "agent", "actor", "bot"),
        ("any:app=x", "any", "app", "x"),
        # no source: the default
        ("app=web", "any", "app", "web"),
        # keys may contain colons: only a known source is split off
        ("k8s:a:b=c", "k8s", "a:b", "c"),
        ("foo:bar=baz", "any", "foo:bar", "baz"),
        ("example.com/team:x=y", "any", "example.com/team:x", "y"),
        # empty values, and values holding '='
        ("oidc:groups=", "oidc", "groups", ""),
        ("oidc:groups", "oidc", "groups", ""),
        ("k8s:a=b=c", "k8s", "a", "b=c"),
    ],
)
def test_label_parse(text: str, source: str, key: str, value: str) -> None:
    label = Label.parse(text)
    assert (label.source, label.key, label.value) == (source, key, value)


def test_label_parse_default_source_and_str() -> None:
    assert Label.parse("app=web", default_source="k8s") == Label("k8s", "app", "web")
    assert str(Label("k8s", "app", "web")) == "k8s:app=web"
    assert str(Label("reserved", "world")) == "reserved:world"
    assert str(Label("oidc", "groups", "")) == "oidc:groups"
    assert str(Label("k8s", "a:b", "c")) == "k8s:a:b=c"


@pytest.mark.parametrize("text", ["=v", "k8s:=v", "k8s:", ""])
def test_label_without_key_is_rejected(text: str) -> None:
    with pytest.raises(CportError) as info:
        Label.parse(text)
    assert info.value.code == "invalid-label"


def test_sources() -> None:
    assert {"k8s", "reserved", "cidr", "oidc", "aws", "spiffe", "agent", "any"} <= SOURCES


def test_labels_are_canonically_ordered_and_deduplicated() -> None:
    labels = Labels.parse("tier=db, reserved:host ,k8s:app=x,,oidc:sub=a,k8s:app=x")
    assert labels.strings() == ["k8s:app=x", "k8s:tier=db", "oidc:sub=a", "reserved:host"]
    assert str(labels) == "k8s:app=x,k8s:tier=db,oidc:sub=a,reserved:host"
    assert len(labels) == 4
    assert next(iter(labels)) == Label("k8s", "app", "x")
    assert Label("reserved", "host") in labels
    assert Label("k8s", "host") not in labels
    assert repr(labels) == "Labels(k8s:app=x,k8s:tier=db,oidc:sub=a,reserved:host)"


def test_labels_equality_and_hash_ignore_order() -> None:
    a = Labels.parse("a=1,b=2,oidc:sub=x")
    b = Labels([Label("oidc", "sub", "x"), Label("k8s", "b", "2"), Label("k8s", "a", "1")])
    assert a == b
    assert hash(a) == hash(b)
    assert {a: 1}[b] == 1
    assert a != Labels.parse("a=1,b=2")
    assert a != Labels.parse("a=1,b=2,k8s:sub=x")  # same key, other source
    assert a != "k8s:a=1,k8s:b=2,oidc:sub=x"
    assert Labels() == Labels.parse("") == Labels.parse(" , ")
    assert len(Labels()) == 0


def test_labels_parse_default_source_is_k8s() -> None:
    assert Labels.parse("app=x").strings() == ["k8s:app=x"]
    assert Labels.parse("app=x", default_source="oidc").strings() == ["oidc:app=x"]


def test_from_strings_round_trips() -> None:
    labels = Labels.parse("k8s:a:b=c,oidc:groups=,reserved:world,cidr:prefix=203.0.113.0/24,x=y=z")
    assert Labels.from_strings(labels.strings()) == labels
    assert Labels.from_strings(str(labels).split(",")) == labels


def test_values_by_source_and_any() -> None:
    labels = Labels.parse("k8s:app=x,k8s:app=z,oidc:app=y,oidc:groups=dba,k8s:empty=")
    assert labels.values("k8s", "app") == ["x", "z"]
    assert labels.values("oidc", "app") == ["y"]
    assert sorted(labels.values("any", "app")) == ["x", "y", "z"]
    assert labels.values("aws", "app") == []
    assert labels.values("any", "missing") == []
    assert labels.values("any", "groups") == ["dba"]
    # An empty value is still present.
    assert labels.values("k8s", "empty") == [""]
    assert labels.has("k8s", "empty")
    assert labels.has("any", "groups")
    assert not labels.has("k8s", "groups")
    assert labels.get("oidc", "groups") == "dba"
    assert labels.get("aws", "groups") is None


def test_union() -> None:
    base = Labels.parse("oidc:sub=a")
    more = base.union([Label("agent", "actor", "bot"), Label("oidc", "sub", "a")])
    assert more.strings() == ["agent:actor=bot", "oidc:sub=a"]
    assert base.strings() == ["oidc:sub=a"]  # immutable


def test_reserved_labels_and_entities() -> None:
    assert reserved_labels("world") == Labels.parse("reserved:world")
    assert reserved_labels("host").strings() == ["reserved:host"]
    assert set(RESERVED_IDS) <= ENTITIES
    assert {"cluster", "all"} <= ENTITIES
