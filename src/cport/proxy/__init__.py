"""The gateway's building blocks: the CONNECT head (``_http``) and the byte relay (``_relay``)."""

from __future__ import annotations

from cport.errors import ProxyRequestError
from cport.proxy._http import (
    ConnectRequest,
    http_response,
    parse_connect_head,
    read_connect_head,
    read_connect_head_stream,
)
from cport.proxy._relay import (
    ENDED_BY,
    RelayCounters,
    RelayResult,
    relay,
    relay_streams,
    splice_supported,
)

__all__ = [
    "ENDED_BY",
    "ConnectRequest",
    "ProxyRequestError",
    "RelayCounters",
    "RelayResult",
    "http_response",
    "parse_connect_head",
    "read_connect_head",
    "read_connect_head_stream",
    "relay",
    "relay_streams",
    "splice_supported",
]
