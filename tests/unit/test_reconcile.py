"""freshet.offline.reconcile's pure comparison logic: classify, recheck and in_flight_deadline."""

from __future__ import annotations

import pytest

from freshet.offline.reconcile import (
    FAILING,
    LOG_AHEAD_LAG_MS,
    Example,
    Outcome,
    Record,
    classify,
    in_flight_deadline,
    recheck,
)

NOW = 1_714_600_000_000
DAY_S = 86_400
DAY_MS = DAY_S * 1000


def rec(as_of: int, offset: int = 7, values: tuple[object, ...] = (1, 2.5, "m")) -> Record:
    return Record(as_of, offset, values)


@pytest.mark.parametrize(
    ("offline", "online", "ttl", "expected"),
    [
        (rec(NOW - 5), rec(NOW - 5), 0, Outcome.MATCH),
        # ints and floats compare by value; NaN in the log is null in Redis (orjson)
        (rec(NOW, values=(3, float("nan"))), rec(NOW, values=(3.0, None)), 0, Outcome.MATCH),
        (rec(NOW - 5), rec(NOW - 6), 0, Outcome.ONLINE_STALE),
        (rec(NOW - 5, offset=8), rec(NOW - 5, offset=7), 0, Outcome.ONLINE_STALE),
        (rec(NOW - 5), rec(NOW - 5, values=(1, 2.5, "x")), 0, Outcome.VALUES_DIFFER),
        (rec(NOW - 5), rec(NOW - 5, values=(1, 2.5)), 0, Outcome.VALUES_DIFFER),
        (rec(NOW - 5), None, 0, Outcome.MISSING_ONLINE),
        (None, rec(NOW - 5), 0, Outcome.MISSING_OFFLINE),
        (rec(NOW - 5), rec(NOW - 4), 0, Outcome.ONLINE_NEWER),
        (rec(NOW - 5, offset=7), rec(NOW - 5, offset=9), 0, Outcome.ONLINE_NEWER),
        # older than the TTL: the record is legitimately gone, or served "expired" if older
        (rec(NOW - DAY_MS - 1), None, DAY_S, Outcome.EXPIRED),
        (rec(NOW - DAY_MS - 1), rec(NOW - DAY_MS - 9), DAY_S, Outcome.EXPIRED),
        # exactly at the TTL it is still served, so it must be there
        (rec(NOW - DAY_MS), None, DAY_S, Outcome.MISSING_ONLINE),
        # the TTL never excuses a newer Redis value (the log lost it) nor different values
        (rec(NOW - DAY_MS - 1), rec(NOW), DAY_S, Outcome.ONLINE_NEWER),
        (rec(NOW - DAY_MS - 1), rec(NOW - DAY_MS - 1, values=(0,)), DAY_S, Outcome.VALUES_DIFFER),
        (None, rec(NOW - DAY_MS - 1), DAY_S, Outcome.MISSING_OFFLINE),
    ],
)
def test_classify(
    offline: Record | None, online: Record | None, ttl: int, expected: Outcome
) -> None:
    assert classify(offline, online, ttl_seconds=ttl, now_ms=NOW) is expected


def test_every_disagreement_fails_verify_and_only_those() -> None:
    assert {
        Outcome.ONLINE_NEWER,
        Outcome.MISSING_OFFLINE,
        Outcome.MISSING_ONLINE,
        Outcome.ONLINE_STALE,
        Outcome.VALUES_DIFFER,
    } == FAILING


def test_classify_needs_at_least_one_side() -> None:
    with pytest.raises(ValueError, match="neither"):
        classify(None, None, ttl_seconds=0, now_ms=NOW)


def first(outcome: Outcome, offline: Record | None, online: Record | None) -> Example:
    return Example("e", outcome, offline, online)


@pytest.mark.parametrize(
    ("was", "offline", "online", "expected"),
    [
        # Redis was ahead: in flight once the log has Redis's row (even if Redis moved on)
        (
            first(Outcome.ONLINE_NEWER, rec(NOW - 9), rec(NOW - 5)),
            rec(NOW - 5),
            rec(NOW - 5),
            Outcome.IN_FLIGHT,
        ),
        (
            first(Outcome.ONLINE_NEWER, rec(NOW - 9), rec(NOW - 5)),
            rec(NOW - 5),
            rec(NOW - 1),
            Outcome.IN_FLIGHT,
        ),
        (
            first(Outcome.MISSING_OFFLINE, None, rec(NOW - 5)),
            rec(NOW - 5),
            rec(NOW - 2),
            Outcome.IN_FLIGHT,
        ),
        # ... and not while the log is still behind that row
        (first(Outcome.ONLINE_NEWER, rec(NOW - 9), rec(NOW - 5)), rec(NOW - 9), rec(NOW - 5), None),
        (first(Outcome.ONLINE_NEWER, rec(NOW - 9), rec(NOW - 5)), rec(NOW - 7), rec(NOW - 1), None),
        (first(Outcome.MISSING_OFFLINE, None, rec(NOW - 5)), None, rec(NOW - 5), None),
        (first(Outcome.MISSING_OFFLINE, None, rec(NOW - 5)), None, None, None),
        # the log was ahead: in flight once Redis has the log's row
        (
            first(Outcome.MISSING_ONLINE, rec(NOW - 5), None),
            rec(NOW - 5),
            rec(NOW - 5),
            Outcome.IN_FLIGHT,
        ),
        (
            first(Outcome.ONLINE_STALE, rec(NOW - 5), rec(NOW - 9)),
            rec(NOW - 2),
            rec(NOW - 5),
            Outcome.IN_FLIGHT,
        ),
        (first(Outcome.ONLINE_STALE, rec(NOW - 5), rec(NOW - 9)), rec(NOW - 5), rec(NOW - 9), None),
        # caught up, but to other values: a real difference
        (
            first(Outcome.MISSING_ONLINE, rec(NOW - 5), None),
            rec(NOW - 5),
            rec(NOW - 5, values=(0,)),
            Outcome.VALUES_DIFFER,
        ),
    ],
)
def test_recheck(
    was: Example, offline: Record | None, online: Record | None, expected: Outcome | None
) -> None:
    assert recheck(was, offline, online, ttl_seconds=0, now_ms=NOW) is expected


def test_recheck_counts_expiry_as_caught_up_only_when_redis_was_behind() -> None:
    old = rec(NOW - DAY_MS - 1)
    log_ahead = first(Outcome.MISSING_ONLINE, old, None)
    redis_ahead = first(Outcome.ONLINE_NEWER, old, rec(NOW - DAY_MS))

    assert recheck(log_ahead, old, None, ttl_seconds=DAY_S, now_ms=NOW) is Outcome.IN_FLIGHT
    # Redis's newer record expiring does not give the log the row it lacks
    assert recheck(redis_ahead, old, None, ttl_seconds=DAY_S, now_ms=NOW) is None


LAG = 90_000


@pytest.mark.parametrize(
    ("outcome", "offline", "online", "received", "lag", "expected"),
    [
        # Redis ahead: the allowance counts from the Redis write, else from the row's as_of
        (
            Outcome.ONLINE_NEWER,
            rec(NOW - 99_000),
            rec(NOW - 50_000),
            NOW - 1_000,
            LAG,
            NOW + 89_000,
        ),
        (Outcome.ONLINE_NEWER, rec(NOW - 99_000), rec(NOW - 50_000), None, LAG, NOW + 40_000),
        (Outcome.MISSING_OFFLINE, None, rec(NOW - 1_000), None, LAG, NOW + 89_000),
        (Outcome.MISSING_OFFLINE, None, rec(NOW - 1_000), NOW - LAG, LAG, None),
        (Outcome.ONLINE_NEWER, rec(NOW - LAG - 2), rec(NOW - LAG - 1), None, LAG, None),
        # an as_of in the future waits at most the allowance
        (Outcome.MISSING_OFFLINE, None, rec(NOW + DAY_MS), None, LAG, NOW + LAG),
        # the log ahead gets at most LOG_AHEAD_LAG_MS from its commit (or as_of)
        (
            Outcome.MISSING_ONLINE,
            rec(NOW - 50_000),
            None,
            NOW - 1_000,
            LAG,
            NOW - 1_000 + LOG_AHEAD_LAG_MS,
        ),
        (Outcome.ONLINE_STALE, rec(NOW - 1_000), rec(NOW - 9_000), None, 5_000, NOW + 4_000),
        (Outcome.MISSING_ONLINE, rec(NOW - 50_000), None, None, LAG, None),
        # never in flight: agreement, expiry, different values, or no allowance at all
        (Outcome.VALUES_DIFFER, rec(NOW), rec(NOW, values=(0,)), None, LAG, None),
        (Outcome.EXPIRED, rec(NOW - DAY_MS - 1), None, None, LAG, None),
        (Outcome.MATCH, rec(NOW), rec(NOW), None, LAG, None),
        (Outcome.ONLINE_NEWER, rec(NOW - 9), rec(NOW - 1), NOW, 0, None),
    ],
)
def test_in_flight_deadline(
    outcome: Outcome,
    offline: Record | None,
    online: Record | None,
    received: int | None,
    lag: int,
    expected: int | None,
) -> None:
    deadline = in_flight_deadline(
        outcome, offline, online, received_ms=received, allow_lag_ms=lag, now_ms=NOW
    )
    assert deadline == expected
