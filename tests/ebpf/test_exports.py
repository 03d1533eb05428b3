"""`cport.ebpf`'s public surface is exactly its `__all__`, and importing it needs no kernel,
no clang and no libbpf (those load on first use)."""

from __future__ import annotations

import cport.ebpf


def test_all_names_exist() -> None:
    assert sorted(cport.ebpf.__all__) == sorted(set(cport.ebpf.__all__))
    for name in cport.ebpf.__all__:
        assert hasattr(cport.ebpf, name), name


def test_engine_stays_free_of_the_datapath() -> None:
    import sys

    import cport.engine

    for name, mod in list(sys.modules.items()):
        if name.startswith("cport.engine"):
            assert "cport.ebpf" not in (getattr(mod, "__file__", "") or "")
    assert not hasattr(cport.engine, "BpfDatapath")
