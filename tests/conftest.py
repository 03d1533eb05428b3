"""Test-wide policy for kernel tests: `@pytest.mark.privileged` tests run wherever the machine
allows (root, BPF filesystem, network namespaces), skip with a reason elsewhere, and FAIL instead
of skipping when CPORT_PRIVILEGED_TESTS=1 (CI sets it)."""

from __future__ import annotations

import os
import shutil

import pytest


def _privileged_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged") is None:
        return
    missing = _privileged_missing()
    if missing is None:
        return
    if os.environ.get("CPORT_PRIVILEGED_TESTS") == "1":
        pytest.fail(f"privileged test cannot run here ({missing}) but CPORT_PRIVILEGED_TESTS=1")
    pytest.skip(f"privileged: {missing}")
