"""Struct layouts from an object file's BTF, through libbpf's ``btf__*`` API.

Used by the layout test and at load time (:func:`check_object`) to prove the C structs in
``bpf/cport.h`` and their ctypes twins in :mod:`cport.ebpf._layout` agree byte for byte, as
Cilium's alignchecker does for its Go structs.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from cport.ebpf import _layout
from cport.ebpf._libbpf import BTF_KIND_STRUCT, BtfMember, BtfType, check_ptr, lib
from cport.errors import EbpfError

StructLayout = tuple[int, list[tuple[str, int, int]]]


def read_structs(obj: Path, names: list[str]) -> dict[str, StructLayout]:
    """``{name: (size, [(field, byte offset, byte size), …])}`` for each named struct in the
    BTF of `obj` (a compiled BPF object); names not found are left out."""
    bpf = lib()
    btf = check_ptr(bpf.btf__parse(str(obj).encode(), None), f"btf__parse({obj})")
    try:
        out: dict[str, StructLayout] = {}
        for name in names:
            type_id = bpf.btf__find_by_name_kind(btf, name.encode(), BTF_KIND_STRUCT)
            if type_id < 0:
                continue
            t = bpf.btf__type_by_id(btf, type_id).contents
            vlen = t.info & 0xFFFF
            kind_flag = t.info >> 31
            members = (BtfMember * vlen).from_address(ctypes.addressof(t) + ctypes.sizeof(BtfType))
            fields = []
            for m in members:
                bit_offset = m.offset & 0xFFFFFF if kind_flag else m.offset
                if bit_offset % 8:
                    raise EbpfError(f"struct {name}: bitfield members are not supported")
                member = bpf.btf__name_by_offset(btf, m.name_off) or b""
                size = bpf.btf__resolve_size(btf, m.type)
                fields.append((member.decode(), bit_offset // 8, int(size)))
            out[name] = (int(t.size), fields)
        return out
    finally:
        bpf.btf__free(btf)


def check_object(obj: Path) -> None:
    """Raise :class:`EbpfError` (``layout-mismatch``) if `obj`'s structs differ from the
    ctypes twins."""
    problems = _layout.check_layouts(read_structs(obj, list(_layout.STRUCTS)))
    if problems:
        raise EbpfError(
            "the BPF object's map layouts differ from cport.ebpf._layout: " + "; ".join(problems),
            code="layout-mismatch",
        )
