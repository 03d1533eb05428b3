"""Fixtures for the CLI tests: an in-process runner, and `explain` on the example estate."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cport.cli import main

from ._estate import INVENTORY, POLICIES, Invoke


@pytest.fixture
def cli() -> Invoke:
    """Run `cport ARGS...` in-process; returns click's Result (stdout and stderr apart)."""
    runner = CliRunner()

    def _invoke(*args: str | Path) -> Result:
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return _invoke


@pytest.fixture
def explain(cli: Invoke) -> Invoke:
    """`cport explain SRC DST PORT [EXTRA...]` against the example estate."""

    def _explain(src: str, dst: str, port: str, *extra: str | Path) -> Result:
        return cli(
            "explain", "-p", POLICIES, "-i", INVENTORY,
            "--from", src, "--to", dst, "--port", port, *extra,
        )  # fmt: skip

    return _explain
