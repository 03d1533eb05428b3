"""The gateway's HTTP: reading and checking a ``CONNECT`` request head, writing responses.

Only ``CONNECT`` in authority form is accepted (RFC 9110 §9.3.6, RFC 9112 §3.2.3):
``CONNECT host:port HTTP/1.1`` where ``host`` is a DNS name (``name.namespace``), a dotted-quad
IPv4 address or a bracketed IPv6 address, and ``port`` is 1-65535. The head is parsed
strictly — requests that proxies in front of or behind us might read differently are refused:

* lines end in CRLF or a bare LF; a bare CR, NUL or any other control character is refused;
* obs-fold (a header line starting with whitespace), whitespace before a header's colon, and
  header names that are not tokens are refused;
* ``Content-Length`` or ``Transfer-Encoding`` on a CONNECT is refused, as are duplicate
  ``Proxy-Authorization`` and ``Host`` headers; otherwise the last value of a header wins;
* up to 8 empty lines before the request line are ignored (RFC 9112 §2.2).

``Proxy-Authorization: Bearer <token>`` yields :attr:`ConnectRequest.bearer`; the header is
removed from :attr:`ConnectRequest.headers`, and no error message or ``repr`` ever carries it.

Reason codes (:class:`~cport.errors.ProxyRequestError` ``code`` → ``status``):
``bad-request`` 400, ``method-not-allowed`` 405, ``bad-credential-scheme`` 407,
``handshake-timeout`` 408, ``header-too-large`` 431. A client that closes before its head is
complete gets ``bad-request`` with the message "connection closed before …" (there is no one
left to answer).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket
import string
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import MappingProxyType
from typing import Final

from cport.errors import ProxyRequestError

__all__ = [
    "BAD_CREDENTIAL_SCHEME",
    "BAD_REQUEST",
    "HANDSHAKE_TIMEOUT",
    "HEADER_TOO_LARGE",
    "METHOD_NOT_ALLOWED",
    "ConnectRequest",
    "http_response",
    "parse_connect_head",
    "read_connect_head",
    "read_connect_head_stream",
]

BAD_REQUEST: Final = "bad-request"
METHOD_NOT_ALLOWED: Final = "method-not-allowed"
BAD_CREDENTIAL_SCHEME: Final = "bad-credential-scheme"
HANDSHAKE_TIMEOUT: Final = "handshake-timeout"
HEADER_TOO_LARGE: Final = "header-too-large"

_MAX_LEADING_EMPTY_LINES: Final = 8

_LEADING_EMPTY = re.compile(rb"(?:\r?\n){0,%d}" % _MAX_LEADING_EMPTY_LINES)
_HEAD_END = re.compile(rb"\n\r?\n")  # the LF ending the last line, then an empty line
_TCHARS: Final = frozenset(
    b"!#$%&'*+-.^_`|~" + (string.digits + string.ascii_letters).encode("ascii")
)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) (HTTP/[0-9]\.[0-9])")
# field-value characters: VCHAR, obs-text, SP, HTAB (no other control characters, no DEL)
_BAD_VALUE_CHAR = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# control characters never allowed anywhere in a head (HTAB, LF and CR are judged separately)
_HEAD_CTLS: Final = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_PORT = re.compile(r"[0-9]{1,5}")
_DOTTED = re.compile(r"[0-9.]+")

_SINGLETONS: Final = frozenset({"proxy-authorization", "host"})
_FORBIDDEN: Final = ("content-length", "transfer-encoding")


@dataclass(frozen=True)
class ConnectRequest:
    """A checked CONNECT head. ``host`` is lower-cased (IPv6 without brackets, compressed);
    ``target`` is the request target as sent. ``headers``: lower-cased names, last value wins,
    without ``proxy-authorization``. ``bearer``, ``leftover``: not shown by ``repr``."""

    method: str
    target: str
    host: str
    port: int
    headers: Mapping[str, str]
    bearer: str | None = field(default=None, repr=False)
    leftover: bytes = field(default=b"", repr=False)


def _bad(message: str) -> ProxyRequestError:
    return ProxyRequestError(message, code=BAD_REQUEST, status=400)


# --------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------


def _check_request_line(line: bytes) -> tuple[str, str]:
    """Syntax, version and method of the request line; returns (method, target)."""
    if line.endswith(b"\r"):
        line = line[:-1]
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        raise _bad("malformed request line (expected 'CONNECT host:port HTTP/1.1')")
    method, target, version = (g.decode("ascii") for g in m.groups())
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _bad(f"unsupported HTTP version {version}")
    if method != "CONNECT":
        raise ProxyRequestError(
            f"method {method} is not allowed: this is a CONNECT proxy",
            code=METHOD_NOT_ALLOWED,
            status=405,
        )
    return method, target


def _parse_target(target: str) -> tuple[str, int]:
    """``host:port`` authority form → (normalised host, port)."""
    if target.startswith("["):
        close = target.find("]")
        if close < 0 or target[close + 1 : close + 2] != ":":
            raise _bad("bad target: expected [ipv6]:port")
        literal, port_text = target[1:close], target[close + 2 :]
        if "%" in literal:
            raise _bad("bad target: IPv6 zone identifiers are not accepted")
        try:
            host = str(ipaddress.IPv6Address(literal))
        except ValueError:
            raise _bad("bad target: not an IPv6 address in brackets") from None
    else:
        host, sep, port_text = target.rpartition(":")
        if not sep or not host:
            raise _bad("bad target: expected host:port")
        if ":" in host:
            raise _bad("bad target: an IPv6 address must be in brackets")
        host = host.lower()
        if _DOTTED.fullmatch(host):
            try:
                host = str(ipaddress.IPv4Address(host))
            except ValueError:
                raise _bad("bad target: not a dotted-quad IPv4 address") from None
        elif len(host) > 253 or not all(_LABEL.fullmatch(lbl) for lbl in host.split(".")):
            raise _bad("bad target: host is not a DNS name, name.namespace or IP address")
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise _bad("bad target: port must be 1-65535")
    return host, int(port_text)


def _parse_head(head: bytes, leftover: bytes) -> ConnectRequest:
    """``head``: the request line and header lines, each ending in LF (no empty line)."""
    # whole-head checks at C speed: no control characters, and every CR ends a line
    if len(head.translate(None, _HEAD_CTLS)) != len(head):
        raise _bad("control character in the request head")
    if head.count(b"\r") != head.count(b"\r\n"):
        raise _bad("bare CR in the request head")
    lines = head.split(b"\n")
    lines.pop()  # head ends with LF: the last element is empty
    method, target = _check_request_line(lines[0])
    host, port = _parse_target(target)
    headers: dict[str, str] = {}
    auth: str | None = None
    for raw in lines[1:]:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if line[:1] in (b" ", b"\t"):
            raise _bad("header folding (obs-fold) is not accepted")
        name_b, colon, value_b = line.partition(b":")
        if not colon:
            raise _bad("malformed header line (no colon)")
        if not _TOKEN.fullmatch(name_b):
            raise _bad("malformed header name")
        name = name_b.decode("ascii").lower()
        value = value_b.decode("latin-1").strip(" \t")
        if name in _SINGLETONS and (
            name in headers or (name == "proxy-authorization" and auth is not None)
        ):
            raise _bad(f"duplicate {name_b.decode('ascii')} header")
        if name == "proxy-authorization":
            auth = value
            continue
        headers[name] = value
    for name in _FORBIDDEN:
        if name in headers:
            raise _bad(f"{name} is not allowed on CONNECT")
    bearer: str | None = None
    if auth is not None:
        scheme, _, credentials = auth.partition(" ")
        if scheme.lower() != "bearer":  # never echo `scheme`: it may be a bare token
            raise ProxyRequestError(
                "Proxy-Authorization must use the Bearer scheme",
                code=BAD_CREDENTIAL_SCHEME,
                status=407,
            )
        credentials = credentials.strip(" \t")
        if not _TOKEN68.fullmatch(credentials):
            raise ProxyRequestError(
                "malformed Bearer credential in Proxy-Authorization",
                code=BAD_CREDENTIAL_SCHEME,
                status=407,
            )
        bearer = credentials
    return ConnectRequest(
        method=method,
        target=target,
        host=host,
        port=port,
        headers=MappingProxyType(headers),
        bearer=bearer,
        leftover=leftover,
    )


class _HeadReader:
    """Incremental: ``feed`` everything read so far; scanning is linear in total bytes."""

    __slots__ = ("line_checked", "max_bytes", "scanned")

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 16:
            raise ValueError("max_bytes must be ≥ 16")
        self.max_bytes = max_bytes
        self.scanned = 0
        self.line_checked = False

    def feed(self, data: bytes) -> ConnectRequest | None:
        skip = _LEADING_EMPTY.match(data)
        start = skip.end() if skip else 0
        if start < len(data) and data[start] not in _TCHARS and data[start] not in b"\r\n":
            raise _bad("not an HTTP request")
        if not self.line_checked:
            nl = data.find(b"\n", start, self.max_bytes)
            if nl >= 0:
                _check_request_line(data[start:nl])  # refuse a bad request line early
                self.line_checked = True
        m = _HEAD_END.search(data, max(start, self.scanned - 2), self.max_bytes)
        if m is None:
            if len(data) >= self.max_bytes:
                raise ProxyRequestError(
                    f"request head larger than {self.max_bytes} bytes",
                    code=HEADER_TOO_LARGE,
                    status=431,
                )
            self.scanned = len(data)
            return None
        return _parse_head(data[start : m.start() + 1], data[m.end() :])


def parse_connect_head(data: bytes, *, max_bytes: int = 8192) -> ConnectRequest | None:
    """Parse a CONNECT head from the bytes read so far: the request, or ``None`` while it is
    incomplete (and may still fit in ``max_bytes``). Raises
    :class:`~cport.errors.ProxyRequestError` and nothing else."""
    return _HeadReader(max_bytes).feed(data)


_CLOSED_EARLY = "connection closed before the request head was complete"


async def read_connect_head(
    sock: socket.socket, *, max_bytes: int = 8192, timeout: float = 10.0
) -> ConnectRequest:
    """Read and check a CONNECT head from a non-blocking socket.

    Never reads past ``max_bytes`` in total; bytes after the head are in ``leftover``. The
    whole head must arrive within ``timeout`` seconds (``handshake-timeout``, 408), however
    slowly it trickles in. Raises :class:`~cport.errors.ProxyRequestError` only (a reset
    while reading is ``bad-request``).
    """
    loop = asyncio.get_running_loop()
    return await _read_head(lambda n: loop.sock_recv(sock, n), max_bytes, timeout)


async def read_connect_head_stream(
    stream: asyncio.StreamReader, *, max_bytes: int = 8192, timeout: float = 10.0
) -> ConnectRequest:
    """:func:`read_connect_head` over an asyncio stream (e.g. a TLS listener)."""
    return await _read_head(stream.read, max_bytes, timeout)


async def _read_head(
    recv: Callable[[int], Awaitable[bytes]], max_bytes: int, timeout: float
) -> ConnectRequest:
    reader = _HeadReader(max_bytes)
    buf = b""
    try:
        async with asyncio.timeout(timeout):
            while True:  # bounded: each pass adds ≥ 1 byte and len(buf) < max_bytes
                try:
                    data = await recv(max_bytes - len(buf))
                except OSError as exc:
                    raise _bad(f"connection failed while reading the request head: {exc}") from None
                if not data:
                    raise _bad(_CLOSED_EARLY)
                buf += data
                req = reader.feed(buf)
                if req is not None:
                    return req
    except TimeoutError:
        raise ProxyRequestError(
            f"request head not complete within {timeout:g}s",
            code=HANDSHAKE_TIMEOUT,
            status=408,
        ) from None


# --------------------------------------------------------------------------------------------
# responses
# --------------------------------------------------------------------------------------------

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_PROXY_AUTHENTICATE = 'Bearer realm="cport"'


def http_response(
    status: int,
    *,
    body: Mapping[str, object] | None = None,
    headers: Mapping[str, str] = _NO_HEADERS,
    phrase: str | None = None,
) -> bytes:
    """An HTTP/1.1 response: status line with the standard reason phrase (or `phrase`),
    ``headers``, then
    a JSON ``body`` with ``Content-Type: application/json`` and ``Content-Length``.

    A 2xx without a body has no framing headers at all (RFC 9110 §9.3.6 forbids them on a
    CONNECT success: the tunnel starts right after the head). Other statuses without a body
    get ``Content-Length: 0``; non-2xx responses get ``Connection: close`` and 407 gets
    ``Proxy-Authenticate: Bearer realm="cport"`` unless ``headers`` sets them.
    ``ValueError`` for a status outside 100-599 or a header that would break the framing.
    """
    if not 100 <= status <= 599:
        raise ValueError(f"HTTP status {status} out of range")
    if phrase is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
    elif not phrase or _BAD_VALUE_CHAR.search(phrase.encode("latin-1", "replace")):
        raise ValueError(f"bad reason phrase {phrase!r}")
    out: list[tuple[str, str]] = []
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name.encode("latin-1", "replace")):
            raise ValueError(f"bad header name {name!r}")
        if _BAD_VALUE_CHAR.search(value.encode("latin-1", "replace")):
            raise ValueError(f"control character in header {name!r}")
        if name.lower() in ("content-length", "content-type", "transfer-encoding"):
            raise ValueError(f"{name} is set by http_response itself")
        out.append((name, value))
    given = {name.lower() for name, _ in out}
    if status == 407 and "proxy-authenticate" not in given:
        out.append(("Proxy-Authenticate", _PROXY_AUTHENTICATE))
    success = 200 <= status < 300
    if not success and "connection" not in given:
        out.append(("Connection", "close"))
    payload = b""
    if body is not None:
        payload = json.dumps(body, separators=(",", ":"), default=str).encode() + b"\n"
        out.append(("Content-Type", "application/json"))
        out.append(("Content-Length", str(len(payload))))
    elif not success:
        out.append(("Content-Length", "0"))
    head = f"HTTP/1.1 {status} {phrase}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in out) + "\r\n"
    return head.encode("latin-1") + payload
