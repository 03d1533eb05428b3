"""Wall-clock times as cport prints them (UTC, ISO 8601), in one place for every module."""

from __future__ import annotations

import datetime as dt
import time


def iso_ms(unix_ns: int) -> str:
    """An event time (nanoseconds since the epoch) to the millisecond, offset ``+00:00``:
    audit events, flows, the eBPF state."""
    return dt.datetime.fromtimestamp(unix_ns / 1e9, dt.UTC).isoformat(timespec="milliseconds")


def iso_s(unix_s: float) -> str:
    """An expiry or creation time (seconds since the epoch) to the second, ``Z``: grants,
    revocations, credentials."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))
