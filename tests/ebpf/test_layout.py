"""The map layouts in C (bpf/cport.h) and Python (cport.ebpf._layout) agree: sizes and field
offsets through the compiled object's BTF, packers against their ctypes twins, and the
constants against the header's ``#define`` lines."""

from __future__ import annotations

import ctypes
import re
import shutil
from pathlib import Path

import pytest

from cport.ebpf import _btf, _build
from cport.ebpf import _layout as L

HEADER = _build.SOURCE_DIR / "cport.h"

needs_clang = pytest.mark.skipif(
    shutil.which("clang") is None or not Path("/usr/include/bpf/bpf_helpers.h").exists(),
    reason="needs clang and libbpf-dev to compile the BPF object",
)


@needs_clang
def test_btf_layouts_match_ctypes(tmp_path: Path) -> None:
    build = _build.build(tmp_path)
    found = _btf.read_structs(build.path, list(L.STRUCTS))
    assert set(found) == set(L.STRUCTS)
    assert L.check_layouts(found) == []
    # and the check notices a difference
    size, fields = found["policy_key"]
    broken = dict(found, policy_key=(size, [(n, o + (n == "dport"), s) for n, o, s in fields]))
    assert L.check_layouts(broken) == [
        f"struct policy_key: fields {broken['policy_key'][1]} in C, "
        f"{L.struct_fields(L.PolicyKey)} in Python"
    ]


@needs_clang
def test_build_is_cached_by_content(tmp_path: Path) -> None:
    first = _build.build(tmp_path)
    mtime = first.path.stat().st_mtime_ns
    again = _build.build(tmp_path)
    assert again == first and again.path.stat().st_mtime_ns == mtime
    assert first.path.name.startswith("cport-") and len(list(tmp_path.iterdir())) == 1


def test_missing_clang_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from cport.errors import EbpfToolMissing

    monkeypatch.setattr(_build, "_CLANGS", ("clang-does-not-exist",))
    with pytest.raises(EbpfToolMissing) as info:
        _build.build(Path("/nonexistent"))
    assert info.value.code == "ebpf-tool-missing"
    assert "clang" in info.value.message and "apt-get install clang" in info.value.message


def test_packers_match_ctypes_twins() -> None:
    for name, packer in L.PACKERS.items():
        assert packer.size == ctypes.sizeof(L.STRUCTS[name]), name
    key = L.PolicyKey(96, 7, 256, 1, 6, 0x3815)
    assert bytes(key) == L.POLICY_KEY.pack(96, 7, 256, 1, 6, 0x3815)
    ev = L.VerdictEventC(ts_boot_ns=5, src_id=256, dst_id=257, kind=2, flags=1, suppressed=3)
    unpacked = L.VERDICT_EVENT.unpack(bytes(ev))
    assert (unpacked[0], unpacked[9], unpacked[10], unpacked[7], unpacked[15], unpacked[16]) == (
        5, 256, 257, 2, 3, 1,
    )  # fmt: skip


def test_constants_match_the_header() -> None:
    text = HEADER.read_text()
    defined = {
        m[0]: int(m[1], 0) for m in re.findall(r"#define (CPORT_\w+) (0x[0-9a-f]+|\d+)", text)
    }
    assert defined == L.DEFINES
