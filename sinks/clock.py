"""Wall-clock time in epoch milliseconds, and the time values commands accept.

    from freshet.sinks.clock import now_ms, parse_time

    parse_time("-2h", now_ms=now_ms())          # two hours ago
    parse_time("2024-05-01T12:00:00Z", now_ms=0)  # 1714564800000

Every time freshet stores or compares is integer epoch milliseconds (UTC); this module is the
one place that reads the wall clock as such and turns text into it.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime

__all__ = ["TimeFormatError", "now_ms", "parse_time"]

# Epoch ms below this are before 1973-03-03: almost always epoch *seconds* given by mistake.
SECONDS_LIKE_BELOW_MS = 100_000_000_000
_RELATIVE_RE = re.compile(r"^(?:now)?\s*-\s*(\d+)([smhd])$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class TimeFormatError(ValueError):
    """Text that is not a time :func:`parse_time` accepts; the message says what to write."""


def now_ms() -> int:
    """The wall clock in integer epoch milliseconds."""
    return time.time_ns() // 1_000_000


def parse_time(text: str, *, now_ms: int, what: str = "time") -> int:
    """Epoch milliseconds of ``text``: ``now``, relative ``-2h`` / ``now-90m`` (s, m, h, d),
    integer epoch milliseconds, an ISO-8601 time with a UTC offset (``2024-05-01T12:00:00Z``)
    or an ISO date (``2024-05-01``, midnight UTC).

    ``now_ms`` is what ``now`` means; ``what`` names the value in errors (``"--from"``).
    Raises :class:`TimeFormatError`.
    """
    value = text.strip()
    if value == "now":
        return now_ms
    if match := _RELATIVE_RE.match(value):
        amount, unit = int(match.group(1)), match.group(2)
        if amount <= 0:
            raise TimeFormatError(f"{what} {text!r} must lie before now (e.g. '-2h')")
        return now_ms - amount * _UNIT_MS[unit]
    if value.isdigit():
        ms = int(value)
        if ms < SECONDS_LIKE_BELOW_MS:
            raise TimeFormatError(
                f"{what} {text!r} looks like epoch seconds; give epoch milliseconds "
                f"({ms * 1000}) or an ISO-8601 time"
            )
        return ms
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise TimeFormatError(
            f"{what} {text!r} is not a time; use an ISO-8601 time such as "
            "2024-05-01T12:00:00Z, a date, epoch milliseconds, 'now' or '-2h'"
        ) from None
    if parsed.tzinfo is None:
        raise TimeFormatError(f"{what} {text!r} has no UTC offset; add 'Z' or '+00:00'")
    return int(parsed.timestamp() * 1000)
