"""YAML reading: documents, positions, and the inputs a hostile or careless file can hold."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cport.errors import InputError, InputErrors
from cport.model import _yaml, load_text
from cport.model._yaml import fmt_path, parse_documents

from ._helpers import pos

NESTED = """\
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
spec:
  ingress:
    - from:
        - workloads: {matchLabels: {app: api}}
      ports:
        - port: 5432
        - {port: 8080, protocol: UDP}
"""


def _bomb(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs" document: `width ** levels` strings from a few hundred bytes."""
    rows = ['a0: &a0 ["lol"' + ', "lol"' * (width - 1) + "]"]
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * width)
        rows.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(rows) + "\n"


class _TooSlow(Exception):
    pass


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise _TooSlow in the block after `seconds` (SIGALRM; restores the previous handler)."""

    def _alarm(signum: int, frame: object) -> None:
        raise _TooSlow

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# -- documents -------------------------------------------------------------------------------
def test_multi_document_file_yields_each_document_in_order() -> None:
    text = "a: 1\n---\nb: 2\n---\nc: [3]\n"
    docs = parse_documents(text, "multi.yaml")
    assert [d.value for d in docs] == [{"a": 1}, {"b": 2}, {"c": [3]}]
    assert [d.index for d in docs] == [0, 1, 2]
    assert {d.file for d in docs} == {"multi.yaml"}
    # Positions are per file, not per document.
    assert docs[2].location(("c",)).line == 5


def test_empty_and_comment_only_documents_are_skipped() -> None:
    text = "---\n---\n# just a comment\n---\na: 1\n---\n~\n---\n"
    docs = parse_documents(text, "f.yaml")
    assert [d.value for d in docs] == [{"a": 1}]
    assert docs[0].location(("a",)).line == 5
    assert parse_documents("", "empty.yaml") == []
    assert parse_documents("# nothing here\n", "c.yaml") == []


def test_empty_documents_do_not_count_as_loaded_documents() -> None:
    text = "---\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: ns}\n---\n"
    bundle = load_text(text, "ns.yaml")
    assert bundle.documents == 1
    assert bundle.inventory.namespaces == {"ns": {}}


# -- positions -------------------------------------------------------------------------------
def test_nested_fields_carry_line_and_column() -> None:
    doc = parse_documents(NESTED, "p.yaml")[0]
    cases = {
        ("spec",): "spec:",
        ("spec", "ingress"): "ingress:",
        ("spec", "ingress", 0, "from"): "from:",
        ("spec", "ingress", 0, "from", 0, "workloads"): "workloads:",
        ("spec", "ingress", 0, "ports", 0, "port"): "port: 5432",
        ("spec", "ingress", 0, "ports", 1, "protocol"): "protocol: UDP",
    }
    for path, needle in cases.items():
        loc = doc.location(path)
        assert (loc.line, loc.column) == pos(NESTED, needle), (path, loc)
        assert loc.file == "p.yaml"
    # A list item is located where the item starts (after "- ").
    item = doc.location(("spec", "ingress", 0, "ports", 1))
    assert (item.line, item.column) == pos(NESTED, "{port: 8080")


def test_location_field_path_and_fallback_to_nearest_known_parent() -> None:
    doc = parse_documents(NESTED, "p.yaml")[0]
    loc = doc.location(("spec", "ingress", 0, "ports", 1, "port"))
    assert loc.path == "spec.ingress[0].ports[1].port"
    assert str(loc).startswith(f"p.yaml:{loc.line}:{loc.column}: spec.ingress[0]")
    missing = doc.location(("spec", "ingress", 0, "nope", 3))
    assert missing.path == "spec.ingress[0].nope[3]"
    assert (missing.line, missing.column) == pos(NESTED, "from:")


def test_fmt_path() -> None:
    assert fmt_path(()) == ""
    assert fmt_path(("spec", "ingress", 0, "from")) == "spec.ingress[0].from"
    assert fmt_path((0, "a", 1, 2)) == "[0].a[1][2]"


# -- duplicate keys, invalid YAML, merge keys --------------------------------------------------
def test_duplicate_top_level_key_is_rejected_at_the_second_key() -> None:
    text = "apiVersion: v1\nkind: Pod\napiVersion: v2\n"
    with pytest.raises(InputError) as info:
        parse_documents(text, "d.yaml")
    err = info.value
    assert err.code == "duplicate-key"
    assert (err.location.line, err.location.column) == (3, 1)
    assert err.location.path == "apiVersion"
    assert "first at line 1" in err.message


def test_duplicate_nested_key_is_rejected_at_the_second_key() -> None:
    text = "metadata:\n  name: a\n  labels:\n    app: x\n    tier: y\n    app: z\n"
    with pytest.raises(InputError) as info:
        parse_documents(text, "d.yaml")
    err = info.value
    assert err.code == "duplicate-key"
    assert (err.location.line, err.location.column) == (6, 5)
    assert err.location.path == "metadata.labels.app"
    assert "first at line 4" in err.message


def test_duplicate_key_through_load_text_is_an_input_errors() -> None:
    with pytest.raises(InputErrors) as info:
        load_text("a: 1\na: 2\n", "x.yaml")
    [err] = info.value.errors
    assert err.code == "duplicate-key"
    assert err.location.file == "x.yaml"
    assert err.location.line == 2


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: [1,\n", 2),
        ("a: b: c\n", 1),
        ("a: 1\nb:\n\t- x\n", 3),
        ("ok: 1\n---\nkind: Pod\n  bad: indent\n", 4),
    ],
)
def test_invalid_yaml_is_located(text: str, line: int) -> None:
    with pytest.raises(InputError) as info:
        parse_documents(text, "bad.yaml")
    err = info.value
    assert err.code == "invalid-yaml"
    assert err.location.file == "bad.yaml"
    assert err.location.line == line
    assert err.location.column >= 1
    assert err.message.startswith("invalid YAML")


def test_invalid_yaml_control_character_is_located() -> None:
    with pytest.raises(InputError) as info:
        parse_documents("a: 1\nb: \x1b[0m\n", "ctl.yaml")
    assert info.value.code == "invalid-yaml"
    assert info.value.location.line == 2


def test_merge_keys_are_rejected() -> None:
    text = "base: &b {app: x}\nlabels:\n  <<: *b\n  tier: y\n"
    with pytest.raises(InputError) as info:
        parse_documents(text, "m.yaml")
    err = info.value
    assert err.code == "invalid-yaml"
    assert "merge" in err.message
    assert err.location.path == "labels"
    assert err.location.line == 2


def test_plain_anchors_and_aliases_still_work() -> None:
    [doc] = parse_documents("a: &x [1, 2]\nb: *x\n", "alias.yaml")
    assert doc.value == {"a": [1, 2], "b": [1, 2]}


def test_non_string_mapping_keys_are_rejected() -> None:
    with pytest.raises(InputError) as info:
        parse_documents("? [1, 2]\n: x\n", "k.yaml")
    assert info.value.code == "invalid-yaml"


def test_python_tags_do_not_construct_objects() -> None:
    [doc] = parse_documents("k: !!python/object/apply:os.system [echo hi]\n", "t.yaml")
    assert doc.value == {"k": ["echo hi"]}


# -- resource limits ---------------------------------------------------------------------------
def test_alias_bomb_is_rejected_as_document_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    # A smaller budget exercises the same check in a fraction of the time.
    monkeypatch.setattr(_yaml, "MAX_NODES", 20_000)
    start = time.perf_counter()
    with pytest.raises(InputError) as info:
        parse_documents(_bomb(), "bomb.yaml")
    assert time.perf_counter() - start < 2.0
    err = info.value
    assert err.code == "document-too-large"
    assert err.location.file == "bomb.yaml"
    assert err.location.line >= 1


def test_alias_bomb_through_load_text_is_an_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_yaml, "MAX_NODES", 20_000)
    with pytest.raises(InputErrors) as info:
        load_text(_bomb(), "bomb.yaml")
    assert [e.code for e in info.value.errors] == ["document-too-large"]


def test_alias_bomb_is_rejected_quickly_with_the_default_limit() -> None:
    try:
        with _deadline(1.0):
            parse_documents(_bomb(), "bomb.yaml")
    except _TooSlow:
        pytest.fail("alias bomb not rejected within 1 s")
    except InputError as exc:
        assert exc.code == "document-too-large"
    else:
        pytest.fail("alias bomb accepted")


def test_deeply_nested_document_is_an_input_error_not_a_crash() -> None:
    text = "[" * 600 + "]" * 600
    try:
        parse_documents(text, "deep.yaml")
    except InputError as exc:
        assert exc.code in ("invalid-yaml", "document-too-large")


def test_nesting_beyond_libyaml_limit_is_invalid_yaml() -> None:
    text = "[" * 1200 + "]" * 1200
    with pytest.raises(InputError) as info:
        parse_documents(text, "deep.yaml")
    assert info.value.code == "invalid-yaml"
