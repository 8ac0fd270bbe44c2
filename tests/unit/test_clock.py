"""The wall clock in epoch ms and the times commands accept (``--from``, ``--to``)."""

from __future__ import annotations

import time

import pytest

from freshet.sinks.clock import TimeFormatError, now_ms, parse_time

NOW = 1_750_000_000_000
MIN = 60_000
HOUR = 60 * MIN


def test_now_is_the_wall_clock_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    assert before <= now_ms() <= time.time_ns() // 1_000_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-06-15T14:40:00Z", 1_749_998_400_000),
        ("2025-06-15T14:40:00z", 1_749_998_400_000),
        ("2025-06-15T16:40:00+02:00", 1_749_998_400_000),
        ("2025-06-15T14:40:00.250Z", 1_749_998_400_250),
        ("2025-06-15", 1_749_945_600_000),
        ("1749998400000", 1_749_998_400_000),
        ("now", NOW),
        ("-2h", NOW - 2 * HOUR),
        ("now-90m", NOW - 90 * MIN),
        ("-1d", NOW - 24 * HOUR),
        (" -30s ", NOW - 30_000),
    ],
)
def test_times_are_iso_times_dates_epoch_ms_or_relative(text: str, expected: int) -> None:
    assert parse_time(text, now_ms=NOW) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2025-06-15T14:40:00", "has no UTC offset"),
        ("1749998400", "looks like epoch seconds"),
        ("yesterday", "is not a time"),
        ("-2x", "is not a time"),
        ("-0h", "must lie before now"),
    ],
)
def test_unusable_times_are_refused_naming_the_value_and_what_to_write(
    text: str, message: str
) -> None:
    with pytest.raises(TimeFormatError, match=message) as caught:
        parse_time(text, now_ms=NOW, what="--from")
    assert str(caught.value).startswith(f"--from {text!r}")
    assert isinstance(caught.value, ValueError)
