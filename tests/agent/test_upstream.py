"""`open_upstream`: connecting to an upstream without `wait_for`'s task — success, refusal
and the connect timeout, on loopback."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from cport.agent._gateway import open_upstream
from cport.config import HostPort


def test_connects_and_sets_nodelay() -> None:
    with socket.create_server(("127.0.0.1", 0)) as ls:
        port = ls.getsockname()[1]

        async def go() -> None:
            sock = await open_upstream(HostPort("127.0.0.1", port), 5.0)
            try:
                assert not sock.getblocking()
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                assert sock.getpeername()[1] == port
            finally:
                sock.close()

        asyncio.run(go())


def test_refused_is_an_oserror_with_its_errno() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(OSError) as err:
            asyncio.run(open_upstream(HostPort("127.0.0.1", port), 5.0))
        assert err.value.errno == errno.ECONNREFUSED


def test_a_connect_that_never_completes_times_out() -> None:
    # A listener whose accept queue is full drops further SYNs: the connect hangs.
    with socket.create_server(("127.0.0.1", 0), backlog=0) as ls:
        port = ls.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):  # bounded: the queue (backlog 0 holds one) fills at once
                f = socket.socket()
                f.setblocking(False)
                f.connect_ex(("127.0.0.1", port))
                fillers.append(f)

            with pytest.raises(OSError) as err:
                asyncio.run(open_upstream(HostPort("127.0.0.1", port), 0.3))
            assert err.value.errno == errno.ETIMEDOUT
            assert "timed out after 0.3s" in str(err.value)
        finally:
            for f in fillers:
                f.close()
