"""Entering a network namespace for netlink work (tc hooks, interface lookups).

``setns(2)`` moves only the calling thread, and :func:`entered` always moves it back. BPF
maps and programs belong to no namespace; only attaching to an interface does.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

from cport.errors import EbpfError

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise EbpfError(f"setns: {os.strerror(err)}", code="netns-error", errno=err)


def netns_path(netns: str) -> str:
    """An ``ip netns`` name (``/run/netns/NAME``) or a path to a namespace file."""
    return netns if "/" in netns else f"/run/netns/{netns}"


@contextmanager
def entered(netns: str | None) -> Iterator[None]:
    """Run the body in `netns` (this thread only); None: stay where we are."""
    if netns is None:
        yield
        return
    try:
        target = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise EbpfError(
            f"network namespace {netns!r} not found ({exc.strerror})", code="netns-error"
        ) from None
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)
