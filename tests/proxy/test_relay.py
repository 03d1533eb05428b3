"""The byte relay over real loopback TCP: both engines (splice, copy) and the streams variant,
half-close, resets, idle timeout, cancellation, backpressure, TLS, and fd accounting."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cport.proxy import RelayCounters, RelayResult, relay, relay_streams, splice_supported
from cport.proxy._relay import _POOL_MAX, _pool, clear_pipe_pool

T = TypeVar("T")

ENGINES = [
    pytest.param(
        "splice",
        marks=pytest.mark.skipif(not splice_supported(), reason="os.splice is Linux-only"),
    ),
    "copy",
    "streams",
]


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 60)

    return asyncio.run(bounded())


async def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected, non-blocking loopback TCP sockets (accepted side, connecting side)."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as ls:
        ls.setblocking(False)
        out = socket.socket()
        out.setblocking(False)
        await loop.sock_connect(out, ls.getsockname())
        acc, _ = await loop.sock_accept(ls)
    acc.setblocking(False)
    return acc, out


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass
class Rig:
    """client app ⇄ [gw_client | relay | gw_upstream] ⇄ upstream app, all on loopback."""

    client: socket.socket
    gw_client: socket.socket
    gw_upstream: socket.socket
    upstream: socket.socket
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(
        self, engine: str, **kw: Any
    ) -> tuple[asyncio.Task[RelayResult], RelayCounters]:
        counters = RelayCounters()
        if engine == "streams":
            kw.pop("chunk", None)
            cr, cw = await asyncio.open_connection(sock=self.gw_client)
            ur, uw = await asyncio.open_connection(sock=self.gw_upstream)
            self.writers += [cw, uw]
            coro = relay_streams(cr, cw, ur, uw, counters=counters, **kw)
        else:
            coro = relay(
                self.gw_client,
                self.gw_upstream,
                counters=counters,
                use_splice=engine == "splice",
                **kw,
            )
        return asyncio.ensure_future(coro), counters

    async def close(self) -> None:
        for w in self.writers:
            w.transport.abort()  # close() would wait for unsent bytes the peer never reads
            with contextlib.suppress(OSError):
                await w.wait_closed()
        for s in (self.client, self.gw_client, self.gw_upstream, self.upstream):
            s.close()


@contextlib.asynccontextmanager
async def rig() -> AsyncIterator[Rig]:
    gw_client, client = await tcp_pair()
    upstream, gw_upstream = await tcp_pair()
    r = Rig(client, gw_client, gw_upstream, upstream)
    try:
        yield r
    finally:
        await r.close()


async def send(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)


async def recv_exact(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    buf = bytearray()
    while len(buf) < n:  # bounded: each pass reads ≥ 1 byte or fails
        chunk = await loop.sock_recv(sock, min(1 << 20, n - len(buf)))
        assert chunk, f"EOF after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


async def recv_to_eof(sock: socket.socket, limit: int = 1 << 30) -> bytes:
    loop = asyncio.get_running_loop()
    buf = bytearray()
    while True:  # bounded by `limit`
        chunk = await loop.sock_recv(sock, 1 << 20)
        if not chunk:
            return bytes(buf)
        buf += chunk
        assert len(buf) <= limit


def registered_fds(loop: asyncio.AbstractEventLoop) -> set[int]:
    selector = loop._selector  # type: ignore[attr-defined]
    return set(selector.get_map())


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_initial_bytes_echo_and_half_close_from_client(engine: str) -> None:
    async def go() -> tuple[RelayResult, RelayCounters]:
        async with rig() as r:
            task, counters = await r.start(engine, initial_up=b"early:")
            await send(r.client, b"hello")
            assert await recv_exact(r.upstream, 11) == b"early:hello"
            big = os.urandom(3 << 20)
            await asyncio.gather(send(r.upstream, big), recv_exact(r.client, len(big)))
            assert counters.bytes_up == 11  # live counters
            # client half-closes; upstream sees EOF but can still answer
            r.client.shutdown(socket.SHUT_WR)
            assert await recv_to_eof(r.upstream) == b""
            await send(r.upstream, b"bye")
            r.upstream.shutdown(socket.SHUT_WR)
            assert await recv_to_eof(r.client) == b"bye"
            result = await task
            assert r.gw_client.fileno() >= 0 and r.gw_upstream.fileno() >= 0  # not closed
            return result, counters

    result, counters = run(go())
    assert result == RelayResult(11, (3 << 20) + 3, "client-closed", None)
    assert (counters.bytes_up, counters.bytes_down) == (11, (3 << 20) + 3)


@pytest.mark.parametrize("engine", ENGINES)
def test_upstream_closes_first(engine: str) -> None:
    async def go() -> RelayResult:
        async with rig() as r:
            task, _ = await r.start(engine)
            await send(r.upstream, b"x" * 1000)
            r.upstream.shutdown(socket.SHUT_WR)
            assert await recv_to_eof(r.client) == b"x" * 1000
            await send(r.client, b"late")
            assert await recv_exact(r.upstream, 4) == b"late"
            r.client.shutdown(socket.SHUT_WR)
            return await task

    assert run(go()) == RelayResult(4, 1000, "upstream-closed", None)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("chunk", [1, 1000, 256 * 1024])
def test_bulk_both_ways_at_once(engine: str, chunk: int) -> None:
    size = {1: 64 << 10, 1000: 2 << 20}.get(chunk, 16 << 20)

    async def go() -> RelayResult:
        up_data, down_data = os.urandom(size), os.urandom(size)
        async with rig() as r:
            task, _ = await r.start(engine, chunk=chunk)

            async def client_side() -> bytes:
                async def tx() -> None:
                    await send(r.client, up_data)
                    r.client.shutdown(socket.SHUT_WR)

                _, got = await asyncio.gather(tx(), recv_to_eof(r.client))
                return got

            async def upstream_side() -> bytes:
                async def tx() -> None:
                    await send(r.upstream, down_data)
                    r.upstream.shutdown(socket.SHUT_WR)

                _, got = await asyncio.gather(tx(), recv_to_eof(r.upstream))
                return got

            at_client, at_upstream = await asyncio.gather(client_side(), upstream_side())
            assert hashlib.sha256(at_upstream).digest() == hashlib.sha256(up_data).digest()
            assert hashlib.sha256(at_client).digest() == hashlib.sha256(down_data).digest()
            return await task

    result = run(go())
    assert (result.bytes_up, result.bytes_down) == (size, size)
    assert result.ended_by in ("client-closed", "upstream-closed")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("side", ["client", "upstream"])
def test_reset(engine: str, side: str) -> None:
    async def go() -> RelayResult:
        async with rig() as r:
            task, _ = await r.start(engine)
            await send(r.client, b"ping")
            assert await recv_exact(r.upstream, 4) == b"ping"
            victim = r.client if side == "client" else r.upstream
            reset(victim)
            return await task

    result = run(go())
    assert result.ended_by == f"{side}-reset"
    assert result.error and "ECONNRESET" in result.error
    assert result.bytes_up == 4


@pytest.mark.parametrize("engine", ["splice", "copy"])
def test_reset_of_a_side_that_is_not_reading(engine: str) -> None:
    """Upstream stops reading and resets while the relay still holds bytes for it."""
    if engine == "splice" and not splice_supported():
        pytest.skip("os.splice is Linux-only")

    async def go() -> RelayResult:
        async with rig() as r:
            task, _ = await r.start(engine)
            filler = os.urandom(1 << 20)
            sender = asyncio.ensure_future(send(r.client, filler * 64))
            for _ in range(3000):  # bounded; the reset below ends the relay at once
                await asyncio.sleep(0.01)
                if r.upstream.fileno() >= 0:
                    reset(r.upstream)
                if task.done():
                    break
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
            return await task

    assert run(go()).ended_by == "upstream-reset"


@pytest.mark.parametrize("engine", ENGINES)
def test_idle_timeout(engine: str) -> None:
    async def go() -> RelayResult:
        async with rig() as r:
            task, _ = await r.start(engine, idle_timeout=0.2)
            await send(r.client, b"a")
            assert await recv_exact(r.upstream, 1) == b"a"
            return await task

    assert run(go()) == RelayResult(1, 0, "idle-timeout", None)


@pytest.mark.parametrize("engine", ENGINES)
def test_cancel_removes_everything_and_reraises(engine: str) -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        async with rig() as r:
            fds = {r.gw_client.fileno(), r.gw_upstream.fileno()}
            before = registered_fds(loop)
            task, _ = await r.start(engine)
            # leave bytes in flight: upstream does not read
            sender = asyncio.ensure_future(send(r.client, os.urandom(32 << 20)))
            await recv_exact(r.upstream, 1000)
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            if engine != "streams":  # stream transports own their fds' registrations
                assert not (registered_fds(loop) - before) & fds
                assert r.gw_client.fileno() >= 0  # the caller's sockets are left open
                assert r.gw_upstream.fileno() >= 0

    run(go())


@pytest.mark.parametrize("engine", ENGINES)
def test_backpressure_bounds_what_is_read(engine: str) -> None:
    """With the upstream not reading, the relay stops reading the client: the client's sends
    stall after a bounded amount (kernel buffers + one pipe/buffer), and every byte sent
    arrives intact once the upstream reads."""

    async def go() -> None:
        async with rig() as r:
            task, counters = await r.start(engine)
            piece = os.urandom(64 * 1024)
            digest = hashlib.sha256()
            sent = stalls = 0
            for _ in range(10_000):  # bounded: ≤ 10,000 × 64 KiB attempts
                try:
                    n = r.client.send(piece)
                except BlockingIOError:
                    stalls += 1
                    if stalls >= 30:
                        break
                    await asyncio.sleep(0.01)
                    continue
                digest.update(piece[:n])
                sent += n
                stalls = 0
            assert stalls >= 30, "the client never stalled: the relay kept reading"
            assert sent < 256 << 20
            assert counters.bytes_up <= sent
            r.client.shutdown(socket.SHUT_WR)
            got = await recv_to_eof(r.upstream)
            assert len(got) == sent and hashlib.sha256(got).digest() == digest.digest()
            r.upstream.shutdown(socket.SHUT_WR)
            result = await task
            assert result.bytes_up == sent

    run(go())


def test_arguments_are_checked() -> None:
    async def go() -> None:
        async with rig() as r:
            with pytest.raises(ValueError, match="idle_timeout"):
                await relay(r.gw_client, r.gw_upstream, idle_timeout=0)
            with pytest.raises(ValueError, match="chunk"):
                await relay(r.gw_client, r.gw_upstream, chunk=0)
            r.gw_client.setblocking(True)
            with pytest.raises(ValueError, match="non-blocking"):
                await relay(r.gw_client, r.gw_upstream)

    run(go())


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_no_fd_leaks_across_many_relays() -> None:
    def fd_count() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def one(engine: str, how: str) -> None:
        async with rig() as r:
            task, _ = await r.start(engine, idle_timeout=0.1 if how == "idle" else None)
            await send(r.client, b"q" * 5000)
            await recv_exact(r.upstream, 5000)
            if how == "close":
                r.client.shutdown(socket.SHUT_WR)
                r.upstream.shutdown(socket.SHUT_WR)
                await task
            elif how == "reset":
                reset(r.client)
                await task
            elif how == "idle":
                await task
            else:  # cancel with bytes stuck in the pipe / buffer
                sender = asyncio.ensure_future(send(r.client, b"z" * (16 << 20)))
                await asyncio.sleep(0.02)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await sender

    async def go() -> None:
        engines = ["splice", "copy", "streams"] if splice_supported() else ["copy", "streams"]
        for _ in range(3):
            for engine in engines:
                for how in ("close", "reset", "idle", "cancel"):
                    await one(engine, how)
        assert len(_pool) <= _POOL_MAX

    clear_pipe_pool()
    before = fd_count()
    run(go())
    clear_pipe_pool()
    assert fd_count() == before


@pytest.mark.skipif(not splice_supported(), reason="os.splice is Linux-only")
def test_idle_tunnels_hold_no_pipes() -> None:
    """A splice tunnel gives its pipes back once drained: 50 open idle tunnels after traffic
    add no pipe fds beyond the pool."""

    async def go() -> None:
        clear_pipe_pool()
        before = len(os.listdir("/proc/self/fd"))
        rigs, tasks = [], []
        try:
            for _ in range(50):
                cm = rig()
                r = await cm.__aenter__()
                rigs.append(cm)
                task, _ = await r.start("splice")
                tasks.append(task)
                await send(r.client, b"hi")
                await recv_exact(r.upstream, 2)
                await send(r.upstream, b"yo")
                await recv_exact(r.client, 2)
            sockets_only = before + 50 * 4  # four loopback sockets per rig, no pipes
            assert len(os.listdir("/proc/self/fd")) <= sockets_only + 2 * len(_pool)
            assert len(_pool) <= 2
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for cm in rigs:
                await cm.__aexit__(None, None, None)

    run(go())
    clear_pipe_pool()


# --------------------------------------------------------------------------------------------
# streams over TLS: no half-close on the TLS side
# --------------------------------------------------------------------------------------------


def self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cport-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_streams_with_a_tls_client_end_when_upstream_closes(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def go() -> tuple[bytes, list[RelayResult]]:
        results: list[RelayResult] = []
        upstream_srv_sock, gw_upstream = await tcp_pair()

        async def gateway(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
            ur, uw = await asyncio.open_connection(sock=gw_upstream)
            try:
                results.append(await relay_streams(cr, cw, ur, uw, initial_up=b">"))
            finally:
                for w in (uw, cw):
                    w.close()
                    with contextlib.suppress(OSError):
                        await w.wait_closed()

        server = await asyncio.start_server(gateway, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
            writer.write(b"ping")
            await writer.drain()
            assert await recv_exact(upstream_srv_sock, 5) == b">ping"
            await send(upstream_srv_sock, b"pong")
            upstream_srv_sock.shutdown(socket.SHUT_WR)
            got = await reader.read()  # "pong", then EOF once the gateway closes
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()
            upstream_srv_sock.close()
        return got, results

    got, results = run(go())
    assert got == b"pong"
    assert results == [RelayResult(5, 4, "upstream-closed", None)]
