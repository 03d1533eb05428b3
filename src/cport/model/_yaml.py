"""YAML documents that remember where every value came from.

PyYAML composes each document into nodes carrying marks; we turn the nodes into plain Python
values and keep a side table from field path to (line, column). Duplicate mapping keys are an
error (YAML says they are, many parsers keep the last silently), and alias expansion is capped so
a "billion laughs" document cannot exhaust memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cport.errors import InputError, Location

try:
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment,unused-ignore]
except AttributeError:  # pragma: no cover - PyYAML without libyaml
    _Loader = yaml.SafeLoader

PathT = tuple[str | int, ...]
MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_NODES = 2_000_000
MAX_DEPTH = 100
YAML_SUFFIXES = (".yaml", ".yml", ".json")


def fmt_path(path: PathT) -> str:
    """``("spec", "ingress", 0, "from")`` → ``spec.ingress[0].from``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass
class Document:
    """One YAML document: its plain value and the position of every field path in it."""

    file: str
    index: int
    value: Any
    marks: dict[PathT, tuple[int, int]] = field(default_factory=dict)

    def location(self, path: PathT) -> Location:
        probe = path
        while probe and probe not in self.marks:
            probe = probe[:-1]
        line, col = self.marks.get(probe, (0, 0))
        return Location(self.file, line, col, fmt_path(path))


def _expanded_size(root: yaml.Node, file: str) -> int:
    """How many values the node graph expands to, counting each alias use, in time linear in
    the number of distinct nodes (so an alias bomb is measured, not expanded)."""
    sizes: dict[int, int] = {}
    # Iterative post-order walk: deep nesting must not exhaust the Python stack.
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if id(node) in sizes:
            continue
        if depth > MAX_DEPTH:
            mark = node.start_mark
            raise InputError(
                f"document nests deeper than {MAX_DEPTH} levels",
                Location(file, mark.line + 1, mark.column + 1),
                code="document-too-large",
            )
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        if done or not children:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            continue
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


class _Builder:
    def __init__(self, doc: Document) -> None:
        self.doc = doc

    def build(self, node: yaml.Node, path: PathT) -> Any:
        self.doc.marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise InputError(
                        "YAML merge keys (<<) are not supported",
                        self.doc.location(path),
                        code="invalid-yaml",
                        hint="write the fields out",
                    )
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, str):
                    raise InputError(
                        "mapping keys must be strings", self.doc.location(path), code="invalid-yaml"
                    )
                sub = (*path, key)
                if key in out:
                    first = self.doc.marks.get(sub, (0, 0))[0]
                    self.doc.marks[sub] = (
                        key_node.start_mark.line + 1,
                        key_node.start_mark.column + 1,
                    )
                    raise InputError(
                        f"duplicate key {key!r} (first at line {first})",
                        self.doc.location(sub),
                        code="duplicate-key",
                        hint="each key may appear once in a mapping",
                    )
                self.doc.marks[sub] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                out[key] = self.build(value_node, sub)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return _scalar(node)


_CONSTRUCTOR = _Loader("")


def _scalar(node: yaml.Node) -> Any:
    # Call the tag's constructor directly: construct_object() would remember every node.
    construct = _CONSTRUCTOR.yaml_constructors.get(node.tag)
    if construct is None:
        return node.value
    return construct(_CONSTRUCTOR, node)


def parse_documents(text: str, file: str) -> list[Document]:
    """Parse multi-document YAML text; empty documents are skipped."""
    docs: list[Document] = []
    try:
        for index, node in enumerate(yaml.compose_all(text, Loader=_Loader)):
            if node is None:
                continue
            doc = Document(file, index, None)
            size = _expanded_size(node, file)
            if size > MAX_NODES:
                mark = node.start_mark
                raise InputError(
                    f"document expands to {size} values, over the limit of {MAX_NODES} "
                    "(an alias bomb?)",
                    Location(file, mark.line + 1, mark.column + 1),
                    code="document-too-large",
                )
            doc.value = _Builder(doc).build(node, ())
            if doc.value is not None:
                docs.append(doc)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise InputError(
            f"invalid YAML: {exc.problem or exc.context}",
            Location(file, line, col),
            code="invalid-yaml",
        ) from exc
    except yaml.reader.ReaderError as exc:
        # Reader errors (bad characters) carry only a character offset.
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise InputError(
            f"invalid YAML: {exc.reason} (character {exc.character!r})",
            Location(file, line, col),
            code="invalid-yaml",
        ) from exc
    except yaml.YAMLError as exc:
        raise InputError(f"invalid YAML: {exc}", Location(file), code="invalid-yaml") from exc
    return docs


def iter_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Expand files and directories (recursively, ``*.yaml``/``*.yml``/``*.json``, sorted);
    a file named twice (directly, or through overlapping directories) is read once."""
    seen: set[Path] = set()
    for path in _expand(paths):
        real = path.resolve()
        if real not in seen:
            seen.add(real)
            yield path


def _expand(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix in YAML_SUFFIXES
            )
        elif path.exists():
            yield path
        else:
            raise InputError(
                "no such file or directory", Location(str(path)), code="file-not-found"
            )


def load_documents(
    paths: Iterable[str | os.PathLike[str]], errors: list[InputError] | None = None
) -> list[Document]:
    """Read every YAML document under `paths`. With `errors`, a file that cannot be read or
    parsed is recorded there and the other files are still read; without, it raises."""
    docs: list[Document] = []
    for path in iter_files(paths):
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise InputError(
                    f"file is {size} bytes, over the {MAX_FILE_BYTES} byte limit",
                    Location(str(path)),
                    code="file-too-large",
                )
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(
                    f"cannot read: {exc}", Location(str(path)), code="unreadable"
                ) from exc
            docs.extend(parse_documents(text, str(path)))
        except InputError as exc:
            if errors is None:
                raise
            errors.append(exc)
    return docs
