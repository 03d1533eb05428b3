"""Where the example estate lives, and reading a command's JSON (not a test module)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import Result

ROOT = Path(__file__).resolve().parents[2]
ESTATE = ROOT / "examples" / "estate"
POLICIES = ESTATE / "policies"
INVENTORY = ESTATE / "inventory"

#: What the `cli` and `explain` fixtures return: call with arguments, get click's Result.
Invoke = Callable[..., Result]


def as_json(result: Result) -> Any:
    """The JSON a command printed on stdout."""
    return json.loads(result.stdout)
