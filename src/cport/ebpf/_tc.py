"""tc clsact attachment through libbpf's ``bpf_tc_*`` API (netlink under the hood).

Why tc clsact and not tcx: the kernel (6.18) has tcx, but Debian's libbpf 1.1 predates
``bpf_program__attach_tcx`` (libbpf 1.3). A tc filter holds a reference to its program, so
enforcement outlives the process that attached it, and ``BPF_TC_F_REPLACE`` swaps a program
in place with no gap, which is all adoption needs. cport's filter has a fixed handle and
priority so it can be found, replaced and removed without touching anyone else's; passing
packets return ``TC_ACT_UNSPEC`` so filters after cport's still run.
"""

from __future__ import annotations

import ctypes
import errno

from cport.ebpf._libbpf import (
    BPF_TC_EGRESS,
    BPF_TC_F_REPLACE,
    BPF_TC_INGRESS,
    TcHook,
    TcOpts,
    check,
    lib,
)

HANDLE = 0xC9
PRIORITY = 1
POINTS = {"ingress": BPF_TC_INGRESS, "egress": BPF_TC_EGRESS}


def _hook(ifindex: int, point: int) -> TcHook:
    return TcHook(ctypes.sizeof(TcHook), ifindex, point, 0, 0)


def create_hook(ifindex: int) -> bool:
    """Add the clsact qdisc; False if it was already there."""
    rc = lib().bpf_tc_hook_create(_hook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS))
    if rc == -errno.EEXIST:
        return False
    check(rc, f"creating the clsact qdisc on ifindex {ifindex}", code="attach-failed")
    return True


def destroy_hook(ifindex: int) -> None:
    """Remove the clsact qdisc (and every filter on it)."""
    rc = lib().bpf_tc_hook_destroy(_hook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS))
    if rc not in (0, -errno.ENOENT, -errno.EINVAL, -errno.ENODEV):
        check(rc, f"removing the clsact qdisc on ifindex {ifindex}", code="detach-failed")


def attach(ifindex: int, point: str, prog_fd: int) -> int:
    """Attach (or atomically replace) cport's filter at `point`; returns the program id."""
    opts = TcOpts(ctypes.sizeof(TcOpts), prog_fd, BPF_TC_F_REPLACE, 0, HANDLE, PRIORITY, 0)
    hook = _hook(ifindex, POINTS[point])
    check(lib().bpf_tc_attach(hook, opts), f"attaching to tc {point}", code="attach-failed")
    return int(opts.prog_id)


def query(ifindex: int, point: str) -> int | None:
    """The program id of cport's filter at `point`, or None."""
    opts = TcOpts(ctypes.sizeof(TcOpts), 0, 0, 0, HANDLE, PRIORITY, 0)
    rc = lib().bpf_tc_query(_hook(ifindex, POINTS[point]), opts)
    if rc in (-errno.ENOENT, -errno.EINVAL, -errno.ENODEV):
        return None
    check(rc, f"querying tc {point}")
    return int(opts.prog_id)


def detach(ifindex: int, point: str) -> bool:
    """Remove cport's filter at `point`; False if there was none."""
    opts = TcOpts(ctypes.sizeof(TcOpts), 0, 0, 0, HANDLE, PRIORITY, 0)
    rc = lib().bpf_tc_detach(_hook(ifindex, POINTS[point]), opts)
    if rc in (-errno.ENOENT, -errno.EINVAL, -errno.ENODEV):
        return False
    check(rc, f"detaching from tc {point}", code="detach-failed")
    return True
