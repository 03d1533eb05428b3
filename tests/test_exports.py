"""Each subpackage's public surface is exactly its `__all__`, and every name in it exists."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = [
    "cport",
    "cport.model",
    "cport.identity",
    "cport.engine",
    "cport.cli",
    "cport.errors",
    "cport.audit",
    "cport.config",
    "cport.agent",
    "cport.proxy",
    "cport.ebpf",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_exist_and_are_public(name: str) -> None:
    mod = importlib.import_module(name)
    exported = getattr(mod, "__all__", None)
    if exported is None:  # a plain module: its public classes and functions are its surface
        return
    assert sorted(exported) == sorted(set(exported)), "duplicates in __all__"
    for item in exported:
        assert hasattr(mod, item), f"{name}.__all__ names {item!r}, which does not exist"


def test_engine_does_not_import_io_or_datapath() -> None:
    # docs/architecture.md: the engine is pure; it must import on a laptop without a kernel.
    import sys

    importlib.import_module("cport.engine")
    for banned in ("ctypes", "pyroute2", "click", "rich"):
        users = [m for m in list(sys.modules) if m.startswith("cport.engine")]
        for m in users:
            src = getattr(sys.modules[m], "__file__", "") or ""
            with open(src, encoding="utf-8") as fh:
                assert f"import {banned}" not in fh.read(), f"{m} imports {banned}"
