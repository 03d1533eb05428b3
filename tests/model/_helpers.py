"""Small helpers shared by the model tests (not a test module)."""

from __future__ import annotations

import pytest

from cport.errors import InputError, InputErrors
from cport.model import Bundle, load_text


def pos(text: str, needle: str, nth: int = 0) -> tuple[int, int]:
    """1-based (line, column) of the `nth` occurrence of `needle` in `text`."""
    idx = -1
    for _ in range(nth + 1):
        idx = text.index(needle, idx + 1)
    line = text.count("\n", 0, idx) + 1
    column = idx - (text.rfind("\n", 0, idx) + 1) + 1
    return line, column


def errors_of(text: str, file: str = "t.yaml") -> list[InputError]:
    """Every error `load_text` reports for `text` (fails the test if it loads)."""
    with pytest.raises(InputErrors) as info:
        load_text(text, file)
    assert info.value.errors, "InputErrors without errors"
    return info.value.errors


def one_error(text: str, file: str = "t.yaml") -> InputError:
    errors = errors_of(text, file)
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


def loaded(text: str, file: str = "t.yaml") -> Bundle:
    return load_text(text, file)
