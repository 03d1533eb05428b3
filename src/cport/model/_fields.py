"""A validating cursor over one YAML document: typed access that fails with file, line, column,
field path, what was expected, and (for unknown keys) the closest known field."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any, NoReturn

from cport.errors import InputError, Location, UnsupportedFieldError
from cport.model._yaml import Document, PathT

_SKIPPED: ContextVar[list[str] | None] = ContextVar("cport_skipped_unsupported", default=None)


def skipped_unsupported() -> list[str] | None:
    """While loading with skip_unsupported, the list collecting dropped-rule warnings."""
    return _SKIPPED.get()


class Cursor:
    """A value inside a document, with its path. `error_cls` picks PolicyError/InventoryError."""

    __slots__ = ("doc", "error_cls", "path", "value")

    def __init__(
        self, doc: Document, path: PathT, value: Any, error_cls: type[InputError] = InputError
    ) -> None:
        self.doc = doc
        self.path = path
        self.value = value
        self.error_cls = error_cls

    # -- errors --------------------------------------------------------------------------
    @property
    def location(self) -> Location:
        return self.doc.location(self.path)

    def fail(self, message: str, *, hint: str = "", code: str | None = None) -> NoReturn:
        raise self.error_cls(message, self.location, hint=hint, code=code)

    def unsupported(self, what: str, *, droppable: bool = True) -> NoReturn:
        exc = UnsupportedFieldError(
            f"{what} is not supported by cport (L3/L4 only)",
            self.location,
            hint="remove the field, or pass --skip-unsupported to drop the allow rule holding it"
            if droppable
            else "remove the field: cport cannot enforce it and will not guess",
        )
        exc.droppable = droppable
        raise exc

    # -- navigation ----------------------------------------------------------------------
    def get(self, key: str) -> Cursor | None:
        if not isinstance(self.value, dict) or key not in self.value:
            return None
        return Cursor(self.doc, (*self.path, key), self.value[key], self.error_cls)

    def require(self, key: str, what: str = "") -> Cursor:
        found = self.get(key)
        if found is None:
            self.fail(f"missing required field {key!r}", hint=what)
        return found

    def items(self) -> Iterator[Cursor]:
        for i, item in enumerate(self.value):
            yield Cursor(self.doc, (*self.path, i), item, self.error_cls)

    def entries(self) -> Iterator[tuple[str, Cursor]]:
        for key, item in self.value.items():
            yield key, Cursor(self.doc, (*self.path, key), item, self.error_cls)

    # -- type checks ---------------------------------------------------------------------
    def mapping(
        self,
        known: set[str] | frozenset[str],
        unsupported: Mapping[str, str] | None = None,
        *,
        allow_null: bool = True,
        droppable: bool = True,
    ) -> Cursor:
        """Check this is a mapping with only `known` keys; `unsupported` keys name a feature
        cport understands but does not enforce. Returns self for chaining."""
        if self.value is None and allow_null:
            self.value = {}
        if not isinstance(self.value, dict):
            self.fail(f"expected a mapping, got {_kind(self.value)}")
        for key in self.value:
            if key in known:
                continue
            sub = Cursor(self.doc, (*self.path, key), self.value[key], self.error_cls)
            if unsupported and key in unsupported:
                sub.unsupported(unsupported[key], droppable=droppable)
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            sub.fail(
                f"unknown field {key!r}",
                hint=f"did you mean {close[0]!r}?"
                if close
                else f"expected one of: {', '.join(sorted(known))}",
                code="unknown-field",
            )
        return self

    def sequence(self, *, allow_null: bool = True) -> Cursor:
        if self.value is None and allow_null:
            self.value = []
        if not isinstance(self.value, list):
            self.fail(f"expected a list, got {_kind(self.value)}")
        return self

    def string(self, *, nonempty: bool = True) -> str:
        if not isinstance(self.value, str):
            self.fail(f"expected a string, got {_kind(self.value)}")
        if nonempty and not self.value:
            self.fail("must not be empty")
        return self.value

    def scalar_string(self) -> str:
        """A label value: strings, numbers and booleans are accepted as text (`true`→"true")."""
        if isinstance(self.value, bool):
            return "true" if self.value else "false"
        if isinstance(self.value, (str, int, float)):
            return str(self.value)
        if self.value is None:
            return ""
        self.fail(f"expected a string, got {_kind(self.value)}")

    def boolean(self) -> bool:
        if not isinstance(self.value, bool):
            self.fail(f"expected true or false, got {_kind(self.value)}")
        return self.value

    def string_list(self) -> list[str]:
        self.sequence()
        return [item.string() for item in self.items()]

    def string_map(self) -> dict[str, str]:
        if self.value is not None and not isinstance(self.value, dict):
            self.fail(f"expected a mapping of strings, got {_kind(self.value)}")
        self.mapping(set(self.value or {}))
        return {k: c.scalar_string() for k, c in self.entries()}

    def choice(self, options: tuple[str, ...], *, fold: bool = False) -> str:
        text = self.string()
        for opt in options:
            if text == opt or (fold and text.upper() == opt.upper()):
                return opt
        close = difflib.get_close_matches(text, options, n=1, cutoff=0.5)
        self.fail(
            f"invalid value {text!r}",
            hint=f"did you mean {close[0]!r}?"
            if close
            else f"expected one of: {', '.join(options)}",
        )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
