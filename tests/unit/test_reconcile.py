"""flows.reconcile.classify: how a Redis record compares with the entity's latest log row."""

from __future__ import annotations

import pytest

from flows.reconcile import FAILING, Outcome, Record, classify

NOW = 1_714_600_000_000
DAY_S = 86_400


def rec(as_of: int, offset: int = 7, values: tuple[object, ...] = (1, 2.5, "m")) -> Record:
    return Record(as_of, offset, values)


@pytest.mark.parametrize(
    ("offline", "online", "ttl", "expected"),
    [
        (rec(NOW - 5), rec(NOW - 5), 0, (Outcome.MATCH, "")),
        # ints and floats compare by value; NaN in the log is null in Redis (orjson)
        (rec(NOW, values=(3, float("nan"))), rec(NOW, values=(3.0, None)), 0, (Outcome.MATCH, "")),
        (rec(NOW - 5), rec(NOW - 6), 0, (Outcome.MISMATCH, "stale")),
        (rec(NOW - 5, offset=8), rec(NOW - 5, offset=7), 0, (Outcome.MISMATCH, "stale")),
        (rec(NOW - 5), rec(NOW - 5, values=(1, 2.5, "x")), 0, (Outcome.MISMATCH, "differs")),
        (rec(NOW - 5), None, 0, (Outcome.MISSING_ONLINE, "")),
        (None, rec(NOW - 5), 0, (Outcome.MISSING_OFFLINE, "")),
        (rec(NOW - 5), rec(NOW - 4), 0, (Outcome.ONLINE_NEWER, "")),
        (rec(NOW - 5, offset=7), rec(NOW - 5, offset=9), 0, (Outcome.ONLINE_NEWER, "")),
        # older than the TTL: Redis serves "expired" whether it holds the row or not
        (rec(NOW - DAY_S * 1000 - 1), None, DAY_S, (Outcome.EXPIRED, "")),
        (rec(NOW - DAY_S * 1000 - 1), rec(NOW - DAY_S * 1000 - 9), DAY_S, (Outcome.EXPIRED, "")),
        # exactly at the TTL it is still served
        (rec(NOW - DAY_S * 1000), None, DAY_S, (Outcome.MISSING_ONLINE, "")),
        # a newer Redis value is never "expired" because the log's row is
        (rec(NOW - DAY_S * 1000 - 1), rec(NOW), DAY_S, (Outcome.ONLINE_NEWER, "")),
    ],
)
def test_classify(
    offline: Record | None, online: Record | None, ttl: int, expected: tuple[Outcome, str]
) -> None:
    assert classify(offline, online, ttl_seconds=ttl, now_ms=NOW) == expected


def test_only_what_reconcile_repairs_fails_verify() -> None:
    assert {Outcome.MISMATCH, Outcome.MISSING_ONLINE} == FAILING


def test_classify_needs_at_least_one_side() -> None:
    with pytest.raises(ValueError, match="neither"):
        classify(None, None, ttl_seconds=0, now_ms=NOW)
