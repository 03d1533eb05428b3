"""The CONNECT head parser and response writer: unit tests, hypothesis fuzzing, and real
loopback sockets for reading (including a slowloris client)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cport.errors import CportError, ProxyRequestError
from cport.proxy import (
    ConnectRequest,
    http_response,
    parse_connect_head,
    read_connect_head,
    read_connect_head_stream,
)
from cport.proxy._http import _HeadReader

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(bounded())


def parse(data: bytes, max_bytes: int = 8192) -> ConnectRequest:
    req = parse_connect_head(data, max_bytes=max_bytes)
    assert req is not None, "head unexpectedly incomplete"
    return req


def refused(data: bytes, max_bytes: int = 8192) -> ProxyRequestError:
    with pytest.raises(ProxyRequestError) as info:
        parse_connect_head(data, max_bytes=max_bytes)
    return info.value


# --------------------------------------------------------------------------------------------
# accepted heads
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "host", "port"),
    [
        ("sink.bench:9000", "sink.bench", 9000),
        ("Sink.Bench:9000", "sink.bench", 9000),
        ("ledger:1", "ledger", 1),
        ("ledger-db.payments:65535", "ledger-db.payments", 65535),
        ("a.b.c.svc.cluster.local:5432", "a.b.c.svc.cluster.local", 5432),
        ("_svc.x:53", "_svc.x", 53),
        ("192.0.2.10:443", "192.0.2.10", 443),
        ("[2001:db8::1]:443", "2001:db8::1", 443),
        ("[2001:DB8:0:0:0:0:0:1]:8443", "2001:db8::1", 8443),
        ("[::ffff:192.0.2.1]:80", "::ffff:c000:201", 80),
    ],
)
def test_targets(target: str, host: str, port: int) -> None:
    req = parse(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert (req.method, req.target, req.host, req.port) == ("CONNECT", target, host, port)
    assert req.headers == {"host": target}
    assert req.bearer is None
    assert req.leftover == b""


def test_headers_bearer_and_leftover() -> None:
    data = (
        b"CONNECT sink.bench:9000 HTTP/1.1\r\n"
        b"Host: sink.bench:9000\r\n"
        b"X-Trace:   a b  \t\r\n"
        b"x-trace: second\r\n"
        b"Cport-Refresh: yes\r\n"
        b"Proxy-Authorization: Bearer eyJhbGciOi.eyJzdWIi.c2ln-_~+/==\r\n"
        b"\r\n"
        b"\x16\x03\x01 early TLS bytes"
    )
    req = parse(data)
    assert req.headers == {
        "host": "sink.bench:9000",
        "x-trace": "second",  # last value wins
        "cport-refresh": "yes",
    }
    assert req.bearer == "eyJhbGciOi.eyJzdWIi.c2ln-_~+/=="
    assert req.leftover == b"\x16\x03\x01 early TLS bytes"
    assert "proxy-authorization" not in req.headers
    assert "eyJ" not in repr(req) and "early" not in repr(req)


def test_bare_lf_http10_lowercase_scheme_and_leading_empty_lines() -> None:
    req = parse(b"\r\n\nCONNECT a.b:80 HTTP/1.0\nproxy-authorization: bearer tok\n\nrest")
    assert (req.host, req.port, req.bearer, req.leftover) == ("a.b", 80, "tok", b"rest")
    # CRLF, then a bare-LF empty line, and the reverse
    assert parse(b"CONNECT a.b:80 HTTP/1.1\r\n\n").port == 80
    assert parse(b"CONNECT a.b:80 HTTP/1.1\n\r\n").port == 80


def test_obs_text_in_a_value_is_kept() -> None:
    req = parse(b"CONNECT a.b:80 HTTP/1.1\r\nX-Name: caf\xe9\r\n\r\n")
    assert req.headers["x-name"] == "caf\xe9"


def test_incomplete_heads_are_none() -> None:
    full = b"CONNECT a.b:80 HTTP/1.1\r\nHost: a.b:80\r\n\r\n"
    for i in range(len(full)):
        assert parse_connect_head(full[:i]) is None, full[:i]
    assert parse_connect_head(full) is not None


def test_max_bytes_boundary() -> None:
    line = b"CONNECT a.b:80 HTTP/1.1\r\n"
    pad = b"X-Pad: "
    n = 200 - len(line) - len(pad) - 4
    exact = line + pad + b"p" * n + b"\r\n\r\n"
    assert len(exact) == 200
    assert parse(exact, max_bytes=200).headers["x-pad"] == "p" * n
    # the leftover does not count against the head, and need not fit
    assert parse(exact + b"more", max_bytes=200).leftover == b"more"
    over = line + pad + b"p" * (n + 1) + b"\r\n\r\n"
    err = refused(over, max_bytes=200)
    assert (err.code, err.status) == ("header-too-large", 431)
    # an unterminated head that reached max_bytes is refused without waiting for more
    err = refused(over[:200], max_bytes=200)
    assert err.code == "header-too-large"


# --------------------------------------------------------------------------------------------
# refused heads
# --------------------------------------------------------------------------------------------

OK_LINE = b"CONNECT a.b:80 HTTP/1.1\r\n"


@pytest.mark.parametrize(
    ("data", "code", "status"),
    [
        # request line
        (b"GET / HTTP/1.1\r\n\r\n", "method-not-allowed", 405),
        (b"GET http://a.b/ HTTP/1.1\r\nHost: a.b\r\n\r\n", "method-not-allowed", 405),
        (b"connect a.b:80 HTTP/1.1\r\n\r\n", "method-not-allowed", 405),
        (b"POST a.b:80 HTTP/1.1\r\n\r\n", "method-not-allowed", 405),
        (b"CONNECT a.b:80 HTTP/2.0\r\n\r\n", "bad-request", 400),
        (b"CONNECT a.b:80 HTTP/1.1 extra\r\n\r\n", "bad-request", 400),
        (b"CONNECT  a.b:80 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT a.b:80\r\n\r\n", "bad-request", 400),
        (b"CONNECT a.b:80 http/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT\ta.b:80 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT a.b:80 HTTP/1.1\r\r\n\r\n", "bad-request", 400),
        (b"\r\n" * 9 + b"CONNECT a.b:80 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "bad-request", 400),
        (b"\x00CONNECT a.b:80 HTTP/1.1\r\n\r\n", "bad-request", 400),
        # targets
        (b"CONNECT a.b HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT a.b: HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT :80 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT a.b:0 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT a.b:65536 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT a.b:999999 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT a.b:+80 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT a.b:8o HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT /a.b:80 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT http://a.b:80 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT user@a.b:80 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT a..b:80 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT .a.b:80 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT a.b.:80 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT -a.b:80 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT a%2eb:80 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT 192.0.2.300:80 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT 192.0.2:80 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT 192.0.2.010:80 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT 2001:db8::1:443 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT [2001:db8::1]443 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT [2001:db8::1:443 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT [a.b]:443 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT [fe80::1%25eth0]:443 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT " + b"a" * 64 + b".b:80 HTTP/1.1\r\n\r\n", "bad-request", 400),
        (b"CONNECT " + b"a." * 127 + b"bb:80 HTTP/1.1\r\n\r\n", "bad-request", 400),
        # headers
        (OK_LINE + b"X-A: 1\r\n folded\r\n\r\n", "bad-request", 400),
        (OK_LINE + b"X-A: 1\r\n\tfolded\r\n\r\n", "bad-request", 400),
        (OK_LINE + b" X-A: 1\r\n\r\n", "bad-request", 400),
        (OK_LINE + b"X-A : 1\r\n\r\n", "bad-request", 400),
        (OK_LINE + b"X A: 1\r\n\r\n", "bad-request", 400),
        (OK_LINE + b": 1\r\n\r\n", "bad-request", 400),
        (OK_LINE + b"no colon\r\n\r\n", "bad-request", 400),
        (OK_LINE + b"X-A: a\x00b\r\n\r\n", "bad-request", 400),
        (OK_LINE + b"X-A: a\rb\r\n\r\n", "bad-request", 400),
        (OK_LINE + b"X-A: a\x7fb\r\n\r\n", "bad-request", 400),
        (OK_LINE + b"X-A: a\x1bb\r\n\r\n", "bad-request", 400),
        (OK_LINE + b"X-\xe9: a\r\n\r\n", "bad-request", 400),
        (OK_LINE + b"Content-Length: 0\r\n\r\n", "bad-request", 400),
        (OK_LINE + b"content-length: 5\r\n\r\nhello", "bad-request", 400),
        (OK_LINE + b"Transfer-Encoding: chunked\r\n\r\n", "bad-request", 400),
        (OK_LINE + b"Host: a.b:80\r\nHost: c.d:80\r\n\r\n", "bad-request", 400),
        (
            OK_LINE + b"Proxy-Authorization: Bearer a\r\nProxy-Authorization: Bearer a\r\n\r\n",
            "bad-request",
            400,
        ),
        (
            OK_LINE + b"Proxy-Authorization:\r\nproxy-authorization: Bearer a\r\n\r\n",
            "bad-request",
            400,
        ),
        # credentials
        (
            OK_LINE + b"Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n",
            "bad-credential-scheme",
            407,
        ),
        (OK_LINE + b"Proxy-Authorization: Negotiate abc\r\n\r\n", "bad-credential-scheme", 407),
        (OK_LINE + b"Proxy-Authorization: \r\n\r\n", "bad-credential-scheme", 407),
        (OK_LINE + b"Proxy-Authorization: Bearer\r\n\r\n", "bad-credential-scheme", 407),
        (OK_LINE + b"Proxy-Authorization: Bearer a b\r\n\r\n", "bad-credential-scheme", 407),
        (OK_LINE + b"Proxy-Authorization: Bearer a=b\r\n\r\n", "bad-credential-scheme", 407),
        (OK_LINE + b"Proxy-Authorization: Bearer\ttok\r\n\r\n", "bad-credential-scheme", 407),
    ],
)
def test_refused(data: bytes, code: str, status: int) -> None:
    err = refused(data)
    assert (err.code, err.status) == (code, status), err.message
    assert isinstance(err, CportError)
    assert err.to_json()["status"] == status


def test_refused_early_on_a_bad_request_line() -> None:
    # the request line is judged as soon as it is complete: no wait for the rest of the head
    err = refused(b"GET / HTTP/1.1\r\nHost: a")
    assert err.code == "method-not-allowed"
    err = refused(b"\x16\x03\x01")  # a TLS ClientHello sent to the plain gateway
    assert err.code == "bad-request"


def test_credentials_never_in_messages() -> None:
    secret = "eyJzZWNyZXQiOiJ0b3Agc2VjcmV0In0"
    for value in (
        secret,  # no scheme: the token is the first word
        f"Basic {secret}",
        f"Bearer {secret} {secret}",
        f"Token {secret}",
    ):
        err = refused(OK_LINE + f"Proxy-Authorization: {value}\r\n\r\n".encode())
        assert secret not in str(err) and secret not in json.dumps(err.to_json())
    err = refused(OK_LINE + f"Proxy-Authorization: Bearer {secret}\r\n".encode() * 2 + b"\r\n")
    assert secret not in str(err)


# --------------------------------------------------------------------------------------------
# fuzzing
# --------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(data: bytes, max_bytes: int = 512) -> object:
    try:
        return parse_connect_head(data, max_bytes=max_bytes)
    except ProxyRequestError as exc:
        assert exc.status in (400, 405, 407, 431), exc.status
        return (exc.code, exc.status)


@FUZZ
@given(st.binary(max_size=700))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    outcome(data)


_VALID_HEAD = (
    b"CONNECT sink.bench:9000 HTTP/1.1\r\n"
    b"Host: sink.bench:9000\r\n"
    b"Proxy-Authorization: Bearer abc.def\r\n"
    b"User-Agent: cport/0.1\r\n"
    b"\r\n"
)
_INTERESTING = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"\x00", b"[", b"]", b"\x7f", b"\xff"]


@st.composite
def mutated_heads(draw: st.DrawFn) -> bytes:
    data = bytearray(_VALID_HEAD)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.one_of(st.sampled_from(_INTERESTING), st.binary(min_size=1, max_size=3)))
        if kind == "insert":
            data[pos:pos] = piece
        elif kind == "delete":
            del data[pos : pos + len(piece)]
        else:
            data[pos : pos + len(piece)] = piece
    return bytes(data)


@FUZZ
@given(mutated_heads())
def test_fuzz_mutated_heads(data: bytes) -> None:
    result = outcome(data)
    if isinstance(result, ConnectRequest):
        # whatever is accepted is well-formed
        assert 1 <= result.port <= 65535
        assert result.method == "CONNECT"
        assert all(k == k.lower() for k in result.headers)
        assert "proxy-authorization" not in result.headers
        for value in result.headers.values():
            assert not any(ord(c) < 32 and c != "\t" for c in value)
            assert "\x7f" not in value


@FUZZ
@given(mutated_heads(), st.lists(st.integers(1, 64), min_size=1, max_size=40))
def test_incremental_feeding_matches_one_shot(data: bytes, cuts: list[int]) -> None:
    """The reader scans incrementally; fed in arbitrary pieces it must reach the same verdict
    as on the whole input (the first verdict reached is final)."""
    want = outcome(data)
    reader = _HeadReader(512)
    got: object = None
    fed = 0
    for cut in [*cuts, len(data)]:  # bounded by len(cuts) + 1
        fed = min(len(data), fed + cut)
        try:
            got = reader.feed(data[:fed])
        except ProxyRequestError as exc:
            got = (exc.code, exc.status)
        if got is not None or fed == len(data):
            break
    if isinstance(want, tuple) and isinstance(got, tuple):
        # an early verdict on the request line may be reached before a later header problem
        assert got[0] in (want[0], "method-not-allowed", "bad-request")
    elif isinstance(want, ConnectRequest) and isinstance(got, ConnectRequest):
        # the leftover is whatever had been read past the head when it completed
        assert want.leftover.startswith(got.leftover)
        assert replace(got, leftover=b"") == replace(want, leftover=b"")
    else:
        assert got == want


dns_label = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
header_names = st.from_regex(r"X-[A-Za-z0-9-]{1,12}", fullmatch=True)
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30
).map(str.strip)


@FUZZ
@given(
    st.lists(dns_label, min_size=1, max_size=4),
    st.integers(1, 65535),
    st.dictionaries(header_names, header_values, max_size=6),
    st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9\-._~+/]{1,40}=?", fullmatch=True)),
    st.booleans(),
    st.binary(max_size=20),
)
def test_valid_heads_round_trip(
    labels: list[str],
    port: int,
    headers: dict[str, str],
    bearer: str | None,
    crlf: bool,
    leftover: bytes,
) -> None:
    eol = "\r\n" if crlf else "\n"
    host = ".".join(labels)
    head = f"CONNECT {host}:{port} HTTP/1.1{eol}"
    canonical = {k.lower(): v for k, v in headers.items()}
    for k, v in headers.items():
        head += f"{k}: {v}{eol}"
    if bearer is not None:
        head += f"Proxy-Authorization: Bearer {bearer}{eol}"
    req = parse((head + eol).encode() + leftover)
    assert (req.host, req.port, req.bearer, req.leftover) == (host, port, bearer, leftover)
    assert dict(req.headers) == canonical


# --------------------------------------------------------------------------------------------
# responses
# --------------------------------------------------------------------------------------------


def split_response(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(": ")
        headers[name.lower()] = value
    return status_line, headers, body


def test_response_with_json_body() -> None:
    raw = http_response(403, body={"reason": "denied", "n": 1}, headers={"Cport-Reason": "denied"})
    status, headers, body = split_response(raw)
    assert status == "HTTP/1.1 403 Forbidden"
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body) == {"reason": "denied", "n": 1}
    assert headers["cport-reason"] == "denied"
    assert headers["connection"] == "close"


def test_response_407_challenges_bearer() -> None:
    status, headers, _ = split_response(http_response(407, body={"reason": "no-credential"}))
    assert status == "HTTP/1.1 407 Proxy Authentication Required"
    assert headers["proxy-authenticate"] == 'Bearer realm="cport"'
    custom = http_response(407, headers={"Proxy-Authenticate": 'Bearer realm="x"'})
    assert custom.count(b"Proxy-Authenticate") == 1 and b'realm="x"' in custom


def test_response_200_has_no_framing() -> None:
    assert http_response(200) == b"HTTP/1.1 200 OK\r\n\r\n"
    raw = http_response(200, headers={"Cport-Connection": "c1"})
    assert raw == b"HTTP/1.1 200 OK\r\nCport-Connection: c1\r\n\r\n"


@pytest.mark.parametrize(
    ("status", "phrase"),
    [(400, "Bad Request"), (405, "Method Not Allowed"), (408, "Request Timeout"),
     (431, "Request Header Fields Too Large"), (502, "Bad Gateway"), (599, "Unknown")],
)  # fmt: skip
def test_response_phrases_and_empty_error_bodies(status: int, phrase: str) -> None:
    status_line, headers, body = split_response(http_response(status))
    assert status_line == f"HTTP/1.1 {status} {phrase}"
    assert headers["content-length"] == "0" and body == b""


@pytest.mark.parametrize(
    "headers",
    [{"X-A": "a\r\nSet-Cookie: x"}, {"X-A": "a\nb"}, {"X A": "b"}, {"": "b"},
     {"X-A\r\n": "b"}, {"Content-Length": "5"}, {"Transfer-Encoding": "chunked"}],
)  # fmt: skip
def test_response_refuses_header_injection(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        http_response(400, headers=headers)


def test_response_own_phrase_and_no_injection_through_it() -> None:
    assert http_response(200, phrase="Granted") == b"HTTP/1.1 200 Granted\r\n\r\n"
    for bad in ("", "OK\r\nSet-Cookie: x", "a\nb", "a\x00b"):
        with pytest.raises(ValueError):
            http_response(200, phrase=bad)


@pytest.mark.parametrize("status", [0, 99, 600, -1])
def test_response_status_range(status: int) -> None:
    with pytest.raises(ValueError):
        http_response(status)


# --------------------------------------------------------------------------------------------
# real sockets
# --------------------------------------------------------------------------------------------


async def socket_pair() -> tuple[socket.socket, socket.socket]:
    """(server side, non-blocking; client side, non-blocking) over loopback TCP."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as ls:
        ls.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, ls.getsockname())
        server, _ = await loop.sock_accept(ls)
    server.setblocking(False)
    return server, client


async def with_pair(fn: Callable[[socket.socket, socket.socket], Awaitable[T]]) -> T:
    server, client = await socket_pair()
    try:
        return await fn(server, client)
    finally:
        server.close()
        client.close()


def test_read_head_over_a_socket_keeps_what_follows() -> None:
    head = b"CONNECT sink.bench:9000 HTTP/1.1\r\nProxy-Authorization: Bearer t0k\r\n\r\n"
    tail = bytes(range(256)) * 400  # 100 KiB sent right after the head

    async def go(server: socket.socket, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        sender = asyncio.ensure_future(loop.sock_sendall(client, head + tail))
        req = await read_connect_head(server, max_bytes=4096, timeout=10)
        assert (req.host, req.port, req.bearer) == ("sink.bench", 9000, "t0k")
        assert len(head) + len(req.leftover) <= 4096  # never reads past max_bytes
        assert tail.startswith(req.leftover)
        rest = bytearray(req.leftover)
        while len(rest) < len(tail):  # bounded by len(tail): each pass reads ≥ 1 byte
            chunk = await loop.sock_recv(server, 65536)
            assert chunk
            rest += chunk
        assert bytes(rest) == tail
        await sender

    run(with_pair(go))


def test_read_head_in_small_pieces() -> None:
    head = b"CONNECT a.b:80 HTTP/1.1\r\nHost: a.b:80\r\nX-Many: " + b"v" * 300 + b"\r\n\r\n"

    async def go(server: socket.socket, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()

        async def trickle() -> None:
            for i in range(0, len(head), 7):
                await loop.sock_sendall(client, head[i : i + 7])
                await asyncio.sleep(0)

        sender = asyncio.ensure_future(trickle())
        req = await read_connect_head(server, timeout=10)
        await sender
        assert req.headers["x-many"] == "v" * 300

    run(with_pair(go))


def test_slowloris_times_out() -> None:
    async def go(server: socket.socket, client: socket.socket) -> ProxyRequestError:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        async def slowloris() -> None:
            await loop.sock_sendall(client, b"CONNECT a.b:80 HTTP/1.1\r\n")
            for i in range(200):  # bounded; the reader gives up long before
                if stop.is_set():
                    return
                await loop.sock_sendall(client, b"X-%d: y\r\n" % i)
                await asyncio.sleep(0.02)

        sender = asyncio.ensure_future(slowloris())
        try:
            with pytest.raises(ProxyRequestError) as info:
                await read_connect_head(server, timeout=0.3)
        finally:
            stop.set()
            await sender
        return info.value

    err = run(with_pair(go))
    assert (err.code, err.status) == ("handshake-timeout", 408)


def test_silent_client_times_out_and_early_close_is_bad_request() -> None:
    async def silent(server: socket.socket, client: socket.socket) -> str:
        with pytest.raises(ProxyRequestError) as info:
            await read_connect_head(server, timeout=0.1)
        return info.value.code

    assert run(with_pair(silent)) == "handshake-timeout"

    async def closes(server: socket.socket, client: socket.socket) -> str:
        client.sendall(b"CONNECT a.b:80 HTTP/1.1\r\n")
        client.shutdown(socket.SHUT_WR)
        with pytest.raises(ProxyRequestError) as info:
            await read_connect_head(server, timeout=10)
        return info.value.code

    assert run(with_pair(closes)) == "bad-request"


def test_oversized_head_over_a_socket() -> None:
    async def go(server: socket.socket, client: socket.socket) -> ProxyRequestError:
        loop = asyncio.get_running_loop()
        big = b"CONNECT a.b:80 HTTP/1.1\r\n" + b"X-Pad: " + b"p" * 10000 + b"\r\n\r\n"
        sender = asyncio.ensure_future(loop.sock_sendall(client, big))
        try:
            with pytest.raises(ProxyRequestError) as info:
                await read_connect_head(server, max_bytes=1024, timeout=10)
        finally:
            server.close()  # unblocks the sender if the buffers filled up
            await asyncio.gather(sender, return_exceptions=True)
        return info.value

    err = run(with_pair(go))
    assert (err.code, err.status) == ("header-too-large", 431)


def test_read_head_from_a_stream() -> None:
    async def go() -> tuple[Any, ...]:
        results: list[Any] = []
        done = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                req = await read_connect_head_stream(reader, timeout=10)
                results.append((req.host, req.port, req.bearer, req.leftover))
                writer.write(http_response(200))
                await writer.drain()
            except ProxyRequestError as exc:
                results.append(exc.code)
            finally:
                writer.close()
                done.set()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"CONNECT a.b:80 HTTP/1.1\r\nProxy-Authorization: Bearer x\r\n\r\nhi")
            reply = await reader.read(100)
            writer.close()
            await writer.wait_closed()
            await done.wait()
        finally:
            server.close()
            await server.wait_closed()
        return (reply, *results)

    reply, result = run(go())
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert result == ("a.b", 80, "x", b"hi")
