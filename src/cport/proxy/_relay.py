"""The byte relay behind the gateway: copy a tunnel's bytes both ways until it ends.

Two engines, one contract (:func:`relay`):

* **splice** (Linux): per direction, ``socket → pipe → socket`` with :func:`os.splice`
  (``SPLICE_F_MOVE | SPLICE_F_NONBLOCK``), so payload bytes never enter Python. It is a
  callback state machine driven by the event loop (``add_reader``/``add_writer`` on the two
  socket fds); no task or coroutine runs per chunk. Pipes come from a small process-wide pool
  of empty pipes sized with ``F_SETPIPE_SZ`` (where allowed) and go back to it whenever a
  direction has drained: an idle tunnel holds no pipe, so 10,000 idle tunnels cost 20,000
  socket fds and no pipe fds or pipe buffers.
* **copy** (elsewhere, or ``use_splice=False``): per direction, ``sock_recv_into`` a
  preallocated buffer, then ``sock_sendall`` of what was read.

:func:`relay_streams` has the same semantics over asyncio streams (TLS listeners).

Semantics shared by all three:

* ``initial_up`` (bytes read from the client past the CONNECT head) goes upstream first.
* Backpressure: a side is read only while the other side's pipe/buffer has room; when the
  writer would block, reading that direction stops until the writer has drained.
* Half-close: EOF from one side is passed on as ``shutdown(SHUT_WR)`` on the other once every
  byte before it is delivered. The relay ends when both directions have ended
  (``ended_by`` names the side that closed first), on a reset of either side, on an unexpected
  error, or when no byte moved either way for ``idle_timeout`` seconds.
* The sockets (streams) belong to the caller: the relay never closes them. It closes only its
  own pipes, and removes every reader/writer it added, on every path — including cancellation
  of the task running it, which re-raises :class:`asyncio.CancelledError` at once.
* Byte counts are bytes *delivered* to the other side; ``counters`` (if given) is updated live.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "CLIENT_CLOSED",
    "CLIENT_RESET",
    "ENDED_BY",
    "ERROR",
    "IDLE_TIMEOUT",
    "UPSTREAM_CLOSED",
    "UPSTREAM_RESET",
    "RelayCounters",
    "RelayResult",
    "relay",
    "relay_streams",
    "splice_supported",
]

CLIENT_CLOSED: Final = "client-closed"
UPSTREAM_CLOSED: Final = "upstream-closed"
CLIENT_RESET: Final = "client-reset"
UPSTREAM_RESET: Final = "upstream-reset"
IDLE_TIMEOUT: Final = "idle-timeout"
ERROR: Final = "error"
ENDED_BY: Final = frozenset(
    {CLIENT_CLOSED, UPSTREAM_CLOSED, CLIENT_RESET, UPSTREAM_RESET, IDLE_TIMEOUT, ERROR}
)

_CLIENT: Final = "client"
_UPSTREAM: Final = "upstream"

# errnos that mean "the peer went away abruptly" rather than "something is broken here".
_RESET_ERRNOS: Final = frozenset(
    {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT, errno.ENOTCONN}
)


@dataclass(slots=True)
class RelayCounters:
    """Bytes delivered so far, updated live by the relay (read by the agent at any time)."""

    bytes_up: int = 0  # client → upstream
    bytes_down: int = 0  # upstream → client


@dataclass(frozen=True, slots=True)
class RelayResult:
    """How a relay ended. ``ended_by`` is one of :data:`ENDED_BY`; ``error`` is a short
    description for resets and errors (never payload bytes), else ``None``."""

    bytes_up: int
    bytes_down: int
    ended_by: str
    error: str | None = None


def splice_supported() -> bool:
    """Whether this platform has :func:`os.splice` (Linux, Python ≥ 3.10)."""
    return sys.platform == "linux" and hasattr(os, "splice")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, str(exc.errno))}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _is_reset(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError) or (
        isinstance(exc, OSError) and exc.errno in _RESET_ERRNOS
    )


# --------------------------------------------------------------------------------------------
# Pipe pool (splice engine)
# --------------------------------------------------------------------------------------------

_POOL_MAX: Final = 64
# (read fd, write fd, capacity). Only empty pipes are ever put here. list.append/pop are
# atomic under the GIL, so loops in several threads may share the pool.
_pool: list[tuple[int, int, int]] = []


def _new_pipe(size: int) -> tuple[int, int, int]:
    import fcntl

    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):  # EPERM above pipe-max-size unprivileged, EBUSY
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)
        cap = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    return r, w, cap


_MIN_PIPE: Final = 64 * 1024  # 16 slots: one slot per spliced segment, however small


def _take_pipe(size: int) -> tuple[int, int, int]:
    try:
        return _pool.pop()
    except IndexError:
        return _new_pipe(max(size, _MIN_PIPE))


def _give_pipe(pipe: tuple[int, int, int]) -> None:
    """Return an *empty* pipe to the pool (or close it when the pool is full)."""
    if len(_pool) < _POOL_MAX:
        _pool.append(pipe)
    else:
        _close_pipe(pipe)


def _close_pipe(pipe: tuple[int, int, int]) -> None:
    os.close(pipe[0])
    os.close(pipe[1])


def clear_pipe_pool() -> int:
    """Close every pooled pipe; returns how many. (Tests use it before counting fds.)"""
    closed = 0
    while True:
        try:
            pipe = _pool.pop()
        except IndexError:
            return closed
        _close_pipe(pipe)
        closed += 1


# --------------------------------------------------------------------------------------------
# splice engine
# --------------------------------------------------------------------------------------------

_SPLICE_FLAGS: Final = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if splice_supported() else 0


class _Dir:
    """One direction's state: ``src`` socket → pipe → ``dst`` socket."""

    __slots__ = (
        "done",
        "dst",
        "dst_fd",
        "dst_side",
        "eof",
        "pending",
        "pipe",
        "prefix",
        "reading",
        "src_fd",
        "src_side",
        "up",
        "writing",
    )

    def __init__(self, src: socket.socket, dst: socket.socket, *, up: bool) -> None:
        self.src_fd = src.fileno()
        self.dst = dst
        self.dst_fd = dst.fileno()
        self.src_side = _CLIENT if up else _UPSTREAM
        self.dst_side = _UPSTREAM if up else _CLIENT
        self.up = up
        self.pipe: tuple[int, int, int] | None = None
        self.pending = 0  # bytes in the pipe, exactly
        self.prefix: memoryview | None = None  # userspace bytes to send before the pipe's
        self.eof = False  # src sent EOF
        self.done = False  # EOF passed on to dst: this direction is finished
        self.reading = False  # reader registered on src_fd
        self.writing = False  # writer registered on dst_fd


class _SpliceRelay:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: socket.socket,
        upstream: socket.socket,
        counters: RelayCounters,
        chunk: int,
        idle_timeout: float | None,
    ) -> None:
        self.loop = loop
        self.counters = counters
        self.chunk = chunk
        self.idle_timeout = idle_timeout
        self.up = _Dir(client, upstream, up=True)
        self.down = _Dir(upstream, client, up=False)
        self.result: asyncio.Future[RelayResult] = loop.create_future()
        self.first_close: str | None = None
        self.last_activity = loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.ended = False

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, initial_up: bytes) -> None:
        if initial_up:
            self.up.prefix = memoryview(initial_up)
            self._guard(self._pump_out, self.up)
        for d in (self.up, self.down):
            if not self.ended:
                self._read_on(d)
        if self.idle_timeout is not None and not self.ended:
            self.timer = self.loop.call_later(self.idle_timeout, self._check_idle)

    def teardown(self) -> None:
        """Idempotent: unregister everything, recycle empty pipes, close the others."""
        self.ended = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for d in (self.up, self.down):
            if d.reading:
                self.loop.remove_reader(d.src_fd)
                d.reading = False
            if d.writing:
                self.loop.remove_writer(d.dst_fd)
                d.writing = False
            pipe, d.pipe = d.pipe, None
            if pipe is not None:
                if d.pending == 0:
                    _give_pipe(pipe)
                else:
                    _close_pipe(pipe)

    def _end(self, ended_by: str, error: str | None = None) -> None:
        if self.ended:
            return
        self.teardown()
        if not self.result.done():
            c = self.counters
            self.result.set_result(RelayResult(c.bytes_up, c.bytes_down, ended_by, error))

    def _guard(self, fn: Callable[[_Dir], None], d: _Dir) -> None:
        """Run a step; an unexpected exception ends the relay instead of reaching the loop."""
        if self.ended:
            return
        try:
            fn(d)
        except Exception as exc:
            self._end(ERROR, _describe(exc))

    def _on_readable(self, d: _Dir) -> None:
        self._guard(self._pump_in, d)

    def _on_writable(self, d: _Dir) -> None:
        self._guard(self._pump_out, d)

    def _check_idle(self) -> None:
        self.timer = None
        if self.ended or self.idle_timeout is None:
            return
        idle = self.loop.time() - self.last_activity
        if idle >= self.idle_timeout:
            self._end(IDLE_TIMEOUT, None)
        else:
            self.timer = self.loop.call_later(self.idle_timeout - idle, self._check_idle)

    # -- registration ---------------------------------------------------------------------------

    def _read_on(self, d: _Dir) -> None:
        if not d.reading and not d.eof:
            self.loop.add_reader(d.src_fd, self._on_readable, d)
            d.reading = True

    def _read_off(self, d: _Dir) -> None:
        if d.reading:
            self.loop.remove_reader(d.src_fd)
            d.reading = False

    # -- data movement --------------------------------------------------------------------------

    def _pump_in(self, d: _Dir) -> None:
        pipe = d.pipe
        if pipe is None:
            pipe = d.pipe = _take_pipe(self.chunk)
        room = pipe[2] - d.pending
        if room <= 0:
            self._read_off(d)  # resumes when the writer drains
            return
        try:
            n = os.splice(d.src_fd, pipe[1], min(room, self.chunk), flags=_SPLICE_FLAGS)
        except BlockingIOError:
            if d.pending:
                # The pipe may be out of slots although bytes remain (socket pages are often
                # partly filled): wait for the writer, which is registered since pending > 0.
                self._read_off(d)
            else:
                self._release_pipe(d)
            return
        except OSError as exc:
            self._src_failed(d, exc)
            return
        if n == 0:  # EOF from src
            d.eof = True
            self._read_off(d)
            if self.first_close is None:
                self.first_close = f"{d.src_side}-closed"
            if d.pending == 0 and d.prefix is None:
                self._finish(d)
            return
        d.pending += n
        self.last_activity = self.loop.time()
        self._pump_out(d)

    def _pump_out(self, d: _Dir) -> None:
        try:
            prefix = d.prefix
            while prefix is not None:  # bounded: each pass sends ≥ 1 byte or raises
                sent = d.dst.send(prefix)
                self._delivered(d, sent)
                prefix = d.prefix = prefix[sent:] if sent < len(prefix) else None
            pipe = d.pipe
            while d.pending:  # bounded likewise
                assert pipe is not None
                n = os.splice(pipe[0], d.dst_fd, d.pending, flags=_SPLICE_FLAGS)
                if n <= 0:
                    raise OSError(errno.EIO, "splice from a non-empty pipe moved nothing")
                d.pending -= n
                self._delivered(d, n)
        except BlockingIOError:
            if not d.writing:
                self.loop.add_writer(d.dst_fd, self._on_writable, d)
                d.writing = True
            return
        except OSError as exc:
            self._dst_failed(d, exc)
            return
        # drained
        if d.writing:
            self.loop.remove_writer(d.dst_fd)
            d.writing = False
        if d.eof:
            self._finish(d)
        else:
            self._release_pipe(d)
            self._read_on(d)

    def _delivered(self, d: _Dir, n: int) -> None:
        self.last_activity = self.loop.time()
        if d.up:
            self.counters.bytes_up += n
        else:
            self.counters.bytes_down += n

    def _release_pipe(self, d: _Dir) -> None:
        pipe, d.pipe = d.pipe, None
        if pipe is not None:
            _give_pipe(pipe)  # only called with pending == 0

    def _finish(self, d: _Dir) -> None:
        d.done = True
        self._release_pipe(d)
        try:
            d.dst.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if not _is_reset(exc):
                self._end(ERROR, f"shutdown {d.dst_side}: {_describe(exc)}")
                return
            # the destination is already gone; the other direction will notice, or we end:
        if self.up.done and self.down.done:
            self._end(self.first_close or CLIENT_CLOSED)

    def _src_failed(self, d: _Dir, exc: OSError) -> None:
        if _is_reset(exc):
            self._end(f"{d.src_side}-reset", _describe(exc))
        else:
            self._end(ERROR, f"read {d.src_side}: {_describe(exc)}")

    def _dst_failed(self, d: _Dir, exc: OSError) -> None:
        if _is_reset(exc):
            self._end(f"{d.dst_side}-reset", _describe(exc))
        else:
            self._end(ERROR, f"write {d.dst_side}: {_describe(exc)}")


async def _relay_splice(
    client: socket.socket,
    upstream: socket.socket,
    initial_up: bytes,
    counters: RelayCounters,
    chunk: int,
    idle_timeout: float | None,
) -> RelayResult:
    machine = _SpliceRelay(
        asyncio.get_running_loop(), client, upstream, counters, chunk, idle_timeout
    )
    try:
        machine.start(initial_up)
        return await machine.result
    finally:
        machine.teardown()


# --------------------------------------------------------------------------------------------
# copy engines (sockets and streams): two coroutines, one per direction
# --------------------------------------------------------------------------------------------

# A direction's outcome: ("eof", "") when its source ended cleanly and the EOF was passed on,
# ("eof-full", "") when it could only be passed on by ending the relay (no half-close, e.g.
# TLS), or (ended_by, error) for a reset or error.
_Outcome = tuple[str, str]


class _Activity:
    __slots__ = ("last",)

    def __init__(self, now: float) -> None:
        self.last = now


async def _run_directions(
    up: Coroutine[Any, Any, _Outcome],
    down: Coroutine[Any, Any, _Outcome],
    activity: _Activity,
    counters: RelayCounters,
    idle_timeout: float | None,
) -> RelayResult:
    loop = asyncio.get_running_loop()
    sides: dict[asyncio.Future[_Outcome], str] = {
        asyncio.ensure_future(up): _CLIENT,
        asyncio.ensure_future(down): _UPSTREAM,
    }
    waiting: set[asyncio.Future[_Outcome]] = set(sides)
    first_close: str | None = None
    ended_by: str | None = None
    error: str | None = None
    try:
        while waiting and ended_by is None:
            timeout = None
            if idle_timeout is not None:
                timeout = max(0.0, activity.last + idle_timeout - loop.time())
            done, waiting = await asyncio.wait(
                waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                if idle_timeout is not None and loop.time() - activity.last >= idle_timeout:
                    ended_by = IDLE_TIMEOUT
                continue
            for fut in done:
                kind, detail = fut.result()
                if kind in ("eof", "eof-full"):
                    if first_close is None:
                        first_close = f"{sides[fut]}-closed"
                    if kind == "eof-full":
                        ended_by = first_close
                elif ended_by is None:
                    ended_by, error = kind, detail
        if ended_by is None:
            ended_by = first_close or CLIENT_CLOSED
    finally:
        for fut in sides:
            fut.cancel()
        # Wait for both to unwind so no reader/writer outlives the relay (bounded: they only
        # have cancellation to process).
        await asyncio.gather(*sides, return_exceptions=True)
    return RelayResult(counters.bytes_up, counters.bytes_down, ended_by, error)


async def _copy_socket(
    loop: asyncio.AbstractEventLoop,
    src: socket.socket,
    dst: socket.socket,
    *,
    up: bool,
    prefix: bytes,
    chunk: int,
    counters: RelayCounters,
    activity: _Activity,
) -> _Outcome:
    src_side, dst_side = (_CLIENT, _UPSTREAM) if up else (_UPSTREAM, _CLIENT)

    def delivered(n: int) -> None:
        activity.last = loop.time()
        if up:
            counters.bytes_up += n
        else:
            counters.bytes_down += n

    try:
        if prefix:
            await loop.sock_sendall(dst, prefix)
            delivered(len(prefix))
    except OSError as exc:
        return _failure(exc, dst_side, "write")
    buf = bytearray(chunk)
    view = memoryview(buf)
    while True:  # bounded by the stream: every pass moves ≥ 1 byte or returns
        try:
            n = await loop.sock_recv_into(src, buf)
        except OSError as exc:
            return _failure(exc, src_side, "read")
        if n == 0:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError as exc:
                if not _is_reset(exc):
                    return (ERROR, f"shutdown {dst_side}: {_describe(exc)}")
            return ("eof", "")
        activity.last = loop.time()
        try:
            await loop.sock_sendall(dst, view[:n])
        except OSError as exc:
            return _failure(exc, dst_side, "write")
        delivered(n)


async def _copy_stream(
    src: asyncio.StreamReader,
    dst: asyncio.StreamWriter,
    *,
    up: bool,
    prefix: bytes,
    chunk: int,
    counters: RelayCounters,
    activity: _Activity,
) -> _Outcome:
    loop = asyncio.get_running_loop()
    src_side, dst_side = (_CLIENT, _UPSTREAM) if up else (_UPSTREAM, _CLIENT)

    async def send(data: bytes) -> None:
        dst.write(data)
        await dst.drain()
        activity.last = loop.time()
        if up:
            counters.bytes_up += len(data)
        else:
            counters.bytes_down += len(data)

    try:
        if prefix:
            await send(prefix)
    except OSError as exc:
        return _failure(exc, dst_side, "write")
    while True:  # bounded by the stream: every pass moves ≥ 1 byte or returns
        try:
            data = await src.read(chunk)
        except OSError as exc:
            return _failure(exc, src_side, "read")
        if not data:
            if not dst.can_write_eof():
                return ("eof-full", "")
            try:
                dst.write_eof()
            except OSError as exc:
                if not _is_reset(exc):
                    return (ERROR, f"shutdown {dst_side}: {_describe(exc)}")
            return ("eof", "")
        activity.last = loop.time()
        try:
            await send(data)
        except OSError as exc:
            return _failure(exc, dst_side, "write")


def _failure(exc: OSError, side: str, op: str) -> _Outcome:
    if _is_reset(exc):
        return (f"{side}-reset", _describe(exc))
    return (ERROR, f"{op} {side}: {_describe(exc)}")


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------


def _check_args(chunk: int, idle_timeout: float | None) -> None:
    if chunk < 1:
        raise ValueError("chunk must be ≥ 1")
    if idle_timeout is not None and not idle_timeout > 0:
        raise ValueError("idle_timeout must be > 0 (or None)")


def _spliceable(sock: socket.socket) -> bool:
    return sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM


async def relay(
    client: socket.socket,
    upstream: socket.socket,
    *,
    initial_up: bytes = b"",
    counters: RelayCounters | None = None,
    use_splice: bool | None = None,
    idle_timeout: float | None = None,
    chunk: int = 256 * 1024,
) -> RelayResult:
    """Relay bytes between two connected, non-blocking TCP sockets until the tunnel ends.

    ``use_splice``: ``None`` picks splice on Linux for TCP sockets, ``True`` insists on it
    (``ValueError`` where unavailable), ``False`` forces the copy engine. ``chunk`` is the
    most read from a side at once (and the pipe size asked for, or the copy buffer size).
    The sockets are not closed. Cancelling the task re-raises ``CancelledError`` after every
    reader/writer has been removed and every pipe closed or recycled.
    """
    _check_args(chunk, idle_timeout)
    if client.getblocking() or upstream.getblocking():
        raise ValueError("relay() needs non-blocking sockets")
    if use_splice is None:
        use_splice = splice_supported() and _spliceable(client) and _spliceable(upstream)
    elif use_splice and not splice_supported():
        raise ValueError("splice is not available on this platform")
    counters = counters if counters is not None else RelayCounters()
    if use_splice:
        return await _relay_splice(client, upstream, initial_up, counters, chunk, idle_timeout)
    loop = asyncio.get_running_loop()
    activity = _Activity(loop.time())
    common: dict[str, Any] = {"chunk": chunk, "counters": counters, "activity": activity}
    return await _run_directions(
        _copy_socket(loop, client, upstream, up=True, prefix=initial_up, **common),
        _copy_socket(loop, upstream, client, up=False, prefix=b"", **common),
        activity,
        counters,
        idle_timeout,
    )


async def relay_streams(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
    *,
    initial_up: bytes = b"",
    counters: RelayCounters | None = None,
    idle_timeout: float | None = None,
    chunk: int = 64 * 1024,
) -> RelayResult:
    """:func:`relay` over asyncio streams (e.g. a TLS client side). The writers are not closed.

    EOF is passed on with ``write_eof()``; where the destination cannot half-close (TLS), the
    relay ends instead once everything before the EOF was delivered, and the caller's close
    passes the EOF on.
    """
    _check_args(chunk, idle_timeout)
    counters = counters if counters is not None else RelayCounters()
    activity = _Activity(asyncio.get_running_loop().time())
    common: dict[str, Any] = {"chunk": chunk, "counters": counters, "activity": activity}
    return await _run_directions(
        _copy_stream(client_reader, up_writer, up=True, prefix=initial_up, **common),
        _copy_stream(up_reader, client_writer, up=False, prefix=b"", **common),
        activity,
        counters,
        idle_timeout,
    )
