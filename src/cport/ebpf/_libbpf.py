"""ctypes bindings for the few libbpf functions cport uses (Debian's ``libbpf.so.1``, 1.1).

Why ctypes over libbpf rather than a Python binding: PyPI's ``bcc`` is an unrelated package
and the real BCC needs kernel headers this machine lacks; ``pylibbpf`` is alpha and could not
attach a program in the field notes; pyroute2 attaches tc filters but loads nothing. libbpf
itself does the hard parts (ELF and BTF, relocations, map creation and pin reuse, tc hooks,
the ring buffer) and its C API is small and stable, so a thin typed layer is the least code
with the fewest moving parts. Every call here returns a negative errno (or NULL with errno
set) on failure; :func:`check` turns that into :class:`~cport.errors.EbpfError`.
"""

from __future__ import annotations

import ctypes
import functools
import os
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_int,
    c_int64,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)
from typing import Any

from cport.errors import EbpfError, EbpfToolMissing

LIBBPF = "libbpf.so.1"

BPF_TC_INGRESS = 1 << 0
BPF_TC_EGRESS = 1 << 1
BPF_TC_F_REPLACE = 1 << 0
BPF_ANY = 0
BPF_NOEXIST = 1
BTF_KIND_STRUCT = 4


class TcHook(Structure):
    """``struct bpf_tc_hook`` (libbpf.h)."""

    _fields_ = [
        ("sz", c_size_t),
        ("ifindex", c_int),
        ("attach_point", c_int),
        ("parent", c_uint32),
        ("_pad", c_uint32),
    ]


class TcOpts(Structure):
    """``struct bpf_tc_opts`` (libbpf.h)."""

    _fields_ = [
        ("sz", c_size_t),
        ("prog_fd", c_int),
        ("flags", c_uint32),
        ("prog_id", c_uint32),
        ("handle", c_uint32),
        ("priority", c_uint32),
        ("_pad", c_uint32),
    ]


class BatchOpts(Structure):
    """``struct bpf_map_batch_opts`` (bpf.h)."""

    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


class BtfType(Structure):
    """``struct btf_type`` (linux/btf.h): name offset, info (vlen, kind), size or type."""

    _fields_ = [("name_off", c_uint32), ("info", c_uint32), ("size", c_uint32)]


class BtfMember(Structure):
    """``struct btf_member`` (linux/btf.h), following a struct's btf_type."""

    _fields_ = [("name_off", c_uint32), ("type", c_uint32), ("offset", c_uint32)]


SAMPLE_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)

_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__find_program_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_map__set_pin_path": (c_int, [c_void_p, c_char_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_program__set_log_buf": (c_int, [c_void_p, c_void_p, c_size_t]),
    "bpf_program__set_log_level": (c_int, [c_void_p, c_uint32]),
    "bpf_obj_pin": (c_int, [c_int, c_char_p]),
    "bpf_obj_get": (c_int, [c_char_p]),
    "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, POINTER(c_uint32)]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_uint64]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_update_batch": (
        c_int,
        [c_int, c_void_p, c_void_p, POINTER(c_uint32), POINTER(BatchOpts)],
    ),
    "bpf_map_delete_batch": (c_int, [c_int, c_void_p, POINTER(c_uint32), POINTER(BatchOpts)]),
    "bpf_map_lookup_batch": (
        c_int,
        [c_int, c_void_p, c_void_p, c_void_p, c_void_p, POINTER(c_uint32), POINTER(BatchOpts)],
    ),
    "bpf_tc_hook_create": (c_int, [POINTER(TcHook)]),
    "bpf_tc_hook_destroy": (c_int, [POINTER(TcHook)]),
    "bpf_tc_attach": (c_int, [POINTER(TcHook), POINTER(TcOpts)]),
    "bpf_tc_detach": (c_int, [POINTER(TcHook), POINTER(TcOpts)]),
    "bpf_tc_query": (c_int, [POINTER(TcHook), POINTER(TcOpts)]),
    "ring_buffer__new": (c_void_p, [c_int, SAMPLE_FN, c_void_p, c_void_p]),
    "ring_buffer__poll": (c_int, [c_void_p, c_int]),
    "ring_buffer__consume": (c_int, [c_void_p]),
    "ring_buffer__free": (None, [c_void_p]),
    "libbpf_num_possible_cpus": (c_int, []),
    "bpf_enable_stats": (c_int, [c_int]),
    "libbpf_set_print": (c_void_p, [PRINT_FN]),
    "btf__parse": (c_void_p, [c_char_p, c_void_p]),
    "btf__free": (None, [c_void_p]),
    "btf__find_by_name_kind": (c_int, [c_void_p, c_char_p, c_uint32]),
    "btf__type_by_id": (POINTER(BtfType), [c_void_p, c_uint32]),
    "btf__name_by_offset": (c_char_p, [c_void_p, c_uint32]),
    "btf__resolve_size": (c_int64, [c_void_p, c_uint32]),
}

_messages: list[str] = []  # libbpf's recent warnings, for error messages
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
_libc.vsnprintf.restype = c_int


def _on_print(level: int, fmt: bytes | None, args: int | None) -> int:
    """libbpf's log: kept (the last 40 lines) for error messages instead of going to stderr."""
    if fmt is None:
        return 0
    buf = ctypes.create_string_buffer(1024)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    if level <= 1:  # LIBBPF_WARN, LIBBPF_INFO (debug is dropped)
        _messages.append(buf.value.decode(errors="replace").rstrip())
        del _messages[:-40]
    return 0


_print_cb = PRINT_FN(_on_print)


@functools.cache
def lib() -> ctypes.CDLL:
    """The loaded libbpf, typed. Raises :class:`EbpfToolMissing` when it is not installed."""
    try:
        handle = ctypes.CDLL(LIBBPF, use_errno=True)
    except OSError as exc:
        raise EbpfToolMissing(
            f"{LIBBPF} cannot be loaded ({exc}); the eBPF enforcer needs libbpf "
            "(Debian: apt-get install libbpf1)"
        ) from None
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(handle, name)
        fn.restype = restype
        fn.argtypes = argtypes
    handle.libbpf_set_print(_print_cb)
    return handle


def recent_messages(clear: bool = True) -> list[str]:
    """libbpf's warnings since the last call (for an error message)."""
    out = list(_messages)
    if clear:
        _messages.clear()
    return out


def check(rc: int, what: str, *, code: str = "ebpf-error") -> int:
    """`rc` if it is not negative, else :class:`EbpfError` naming `what` and the errno."""
    if rc < 0:
        err = -rc
        detail = "; ".join(m for m in recent_messages() if m)
        msg = f"{what}: {os.strerror(err)} (errno {err})"
        if detail:
            msg += f"; libbpf: {detail}"
        raise EbpfError(msg, code=code, errno=err)
    return rc


def check_ptr(ptr: int | None, what: str, *, code: str = "ebpf-error") -> int:
    """`ptr` if not NULL, else :class:`EbpfError` with errno."""
    if not ptr:
        check(-(ctypes.get_errno() or 22), what, code=code)
    assert ptr is not None
    return ptr


def obj_info(fd: int, size: int = 80) -> bytes:
    """The leading `size` bytes of ``struct bpf_map_info`` / ``bpf_prog_info`` for `fd`."""
    buf = ctypes.create_string_buffer(size)
    length = c_uint32(size)
    check(lib().bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(length)), "bpf_obj_get_info_by_fd")
    return buf.raw[: length.value]


#: Offsets in ``struct bpf_prog_info`` (linux/bpf.h): id, run_time_ns, run_cnt.
PROG_INFO_SIZE = 216
_PROG_ID, _RUN_TIME_NS, _RUN_CNT = 4, 192, 200
BPF_STATS_RUN_TIME = 0


def prog_stats(fd: int) -> tuple[int, int, int]:
    """(program id, total run time in ns, runs) of a program; the last two count only while
    run-time statistics are enabled (:func:`enable_run_time_stats`)."""
    raw = obj_info(fd, PROG_INFO_SIZE)
    ident = int.from_bytes(raw[_PROG_ID : _PROG_ID + 4], "little")
    if len(raw) < _RUN_CNT + 8:
        return ident, 0, 0
    run_ns = int.from_bytes(raw[_RUN_TIME_NS : _RUN_TIME_NS + 8], "little")
    runs = int.from_bytes(raw[_RUN_CNT : _RUN_CNT + 8], "little")
    return ident, run_ns, runs


def enable_run_time_stats() -> int:
    """Turn on the kernel's per-program run-time statistics for as long as the returned file
    descriptor stays open (``BPF_ENABLE_STATS``; they cost a clock read per run)."""
    return check(lib().bpf_enable_stats(BPF_STATS_RUN_TIME), "bpf_enable_stats")


def possible_cpus() -> int:
    return check(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


__all__ = [
    "BPF_ANY",
    "BPF_NOEXIST",
    "BPF_TC_EGRESS",
    "BPF_TC_F_REPLACE",
    "BPF_TC_INGRESS",
    "BTF_KIND_STRUCT",
    "SAMPLE_FN",
    "BatchOpts",
    "BtfMember",
    "BtfType",
    "TcHook",
    "TcOpts",
    "check",
    "check_ptr",
    "enable_run_time_stats",
    "lib",
    "obj_info",
    "possible_cpus",
    "prog_stats",
    "recent_messages",
]
