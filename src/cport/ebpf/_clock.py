"""Wall clock ↔ the kernel's boot clock (``CLOCK_BOOTTIME``, ``bpf_ktime_get_boot_ns``).

Grants expire on the boot clock, which keeps counting through suspend and never jumps with
NTP; credentials expire on the wall clock. The offset between the two is sampled with the
boot clock read on both sides of the wall clock read, keeping the tightest of a few samples.
"""

from __future__ import annotations

import time


def boot_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def wall_minus_boot_ns(samples: int = 5) -> int:
    """Unix time (ns) minus boot time (ns), now."""
    best: tuple[int, int] | None = None
    for _ in range(samples):
        b0 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        w = time.time_ns()
        b1 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        if best is None or b1 - b0 < best[0]:
            best = (b1 - b0, w - (b0 + b1) // 2)
    assert best is not None
    return best[1]


def wall_to_boot_ns(unix_seconds: float) -> int:
    """The boot-clock time (ns) at which the wall clock will read `unix_seconds`."""
    return round(unix_seconds * 1_000_000_000) - wall_minus_boot_ns()


def boot_to_wall_ns(boot: int) -> int:
    """The wall-clock time (unix ns) of boot-clock time `boot`."""
    return boot + wall_minus_boot_ns()
