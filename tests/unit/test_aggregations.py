"""Aggregators: one table of (aggregation, values, result), merge = fold, sketches, exact sums.

The percentile sketch's accuracy at scale and its determinism: tests/unit/test_percentile_sketch.py.
"""

from __future__ import annotations

import math
import pickle
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import exact_percentile  # tests/unit/reference.py

from freshet.dsl.definitions import Aggregation
from freshet.engine.aggregations import (
    EXACT_DISTINCT_LIMIT,
    EXACT_QUANTILE_LIMIT,
    QUANTILE_RELATIVE_ERROR,
    Distinct,
    Quantiles,
    aggregator_for,
    exact_float,
    exact_to_float,
)

# (aggregation, quantile, float field?, values, result, result of no values)
TABLE: list[tuple[Aggregation, float | None, bool, list[Any], Any, Any]] = [
    (Aggregation.COUNT, None, False, [5, 1, 5], 3, 0),
    (Aggregation.SUM, None, False, [5, 1, 5], 11, 0),
    (Aggregation.SUM, None, True, [0.1, 0.2, 0.3], 0.6, 0.0),
    (Aggregation.SUM, None, True, [1e16, 1.0, -1e16], 1.0, 0.0),
    (Aggregation.MEAN, None, True, [1.0, 2.0, 4.5], 2.5, None),
    (Aggregation.MEAN, None, False, [1, 2], 1.5, None),
    (Aggregation.MIN, None, True, [3.0, -1.5, 2.0], -1.5, None),
    (Aggregation.MAX, None, True, [3.0, -1.5, 2.0], 3.0, None),
    (Aggregation.LAST, None, False, ["a", "b", "c"], "c", None),
    (Aggregation.DISTINCT_COUNT, None, False, ["a", "b", "a", "c"], 3, 0),
    (Aggregation.APPROX_PERCENTILE, 0.5, True, [4.0, 1.0, 3.0, 2.0], 2.0, None),
    (Aggregation.APPROX_PERCENTILE, 0.9, True, [4.0, 1.0, 3.0, 2.0], 4.0, None),
    (Aggregation.APPROX_PERCENTILE, 0.0, True, [4.0, 1.0], 1.0, None),
]


@pytest.mark.parametrize(("agg", "q", "is_float", "values", "result", "empty"), TABLE)
def test_aggregators_fold_merge_and_peek_to_the_same_result(
    agg: Aggregation, q: float | None, is_float: bool, values: list[Any], result: Any, empty: Any
) -> None:
    aggregator = aggregator_for(agg, q, float_sum=is_float)
    assert aggregator.result(aggregator.empty()) == empty
    folded = aggregator.empty()
    for t, v in enumerate(values):
        folded = aggregator.add(folded, t, v)
    assert aggregator.result(folded) == result
    # Tiles: every split merged back gives the same result.
    for cut in range(len(values) + 1):
        left, right = aggregator.empty(), aggregator.empty()
        for t, v in enumerate(values):
            if t < cut:
                left = aggregator.add(left, t, v)
            else:
                right = aggregator.add(right, t, v)
        assert aggregator.result(aggregator.merge(left, right)) == result
    # peek adds values without changing the partial.
    partial = aggregator.empty()
    partial = aggregator.add(partial, 0, values[0])
    before = aggregator.result(partial)
    assert aggregator.peek(partial, list(enumerate(values))[1:]) == result
    assert aggregator.result(partial) == before


def test_last_prefers_the_later_event_time_then_the_later_addition() -> None:
    last = aggregator_for(Aggregation.LAST)
    p = last.empty()
    for t, v in [(5, "a"), (3, "old"), (5, "b")]:
        p = last.add(p, t, v)
    assert last.result(p) == "b"


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), max_size=30),
       st.randoms())  # fmt: skip
@settings(max_examples=300, deadline=None)
def test_exact_float_sums_are_correctly_rounded_whatever_the_order(
    values: list[float], rnd: random.Random
) -> None:
    total = sum(exact_float(v) for v in values)
    shuffled = values[:]
    rnd.shuffle(shuffled)
    assert sum(exact_float(v) for v in shuffled) == total
    try:
        expected = math.fsum(values)
    except OverflowError:
        return
    assert exact_to_float(total) == expected


def test_exact_float_round_trips_every_kind_of_double() -> None:
    for v in [0.0, -0.0, 5e-324, 2.2250738585072014e-308, 0.1, -3.5, 1e300, 1.7976931348623157e308]:
        assert exact_to_float(exact_float(v)) == v


def test_distinct_is_exact_up_to_the_limit_then_an_hll_within_five_percent() -> None:
    d = Distinct()
    for i in range(EXACT_DISTINCT_LIMIT):
        d.add(f"m{i}")
        d.add(f"m{i}")
    assert d.is_exact
    assert d.estimate() == EXACT_DISTINCT_LIMIT
    for n in (EXACT_DISTINCT_LIMIT + 1, 2_000, 50_000):
        d = Distinct(f"v{i}" for i in range(n))
        assert not d.is_exact
        assert abs(d.estimate() - n) <= 0.05 * n


def test_distinct_estimates_depend_on_the_set_only() -> None:
    values = [f"v{i}" for i in range(5_000)]
    estimates = set()
    rnd = random.Random(1)
    for _ in range(5):
        rnd.shuffle(values)
        cut = rnd.randrange(1, len(values))
        left, right = Distinct(values[:cut]), Distinct(values[cut:])
        left.merge(right)
        estimates.add(left.estimate())
        whole = Distinct()
        for v in values:
            whole.add(v)
        estimates.add(whole.estimate())
    assert len(estimates) == 1


def test_sketch_partials_pickle_and_copy_without_sharing_state() -> None:
    for d in (Distinct(["a", "b"]), Distinct(f"v{i}" for i in range(1_000))):
        clone = pickle.loads(pickle.dumps(d))
        assert clone == d
        assert clone.estimate() == d.estimate()
        before = d.estimate()
        copy = d.copy()
        for i in range(100):
            copy.add(f"new-{i}")
        assert d.estimate() == before
        assert copy.estimate() > before
    q = Quantiles()
    for v in (3.0, 1.0, 2.0):
        q.add(v)
    restored = pickle.loads(pickle.dumps(q))
    assert (restored.n, restored.quantile(0.5)) == (3, 2.0)
    q_copy = q.copy()
    q_copy.add(100.0)
    assert q.n == 3
    big = Quantiles()
    for i in range(1_000):
        big.add(float(i))
    restored = pickle.loads(pickle.dumps(big))
    assert restored == big
    assert restored.quantile(0.5) == big.quantile(0.5)
    big_copy = big.copy()
    for _ in range(1_000):
        big_copy.add(1e9)
    assert (big.n, big.quantile(0.9)) == (1_000, restored.quantile(0.9))


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=3 * EXACT_QUANTILE_LIMIT),
       st.floats(0.0, 1.0))  # fmt: skip
@settings(max_examples=200, deadline=None)
def test_quantiles_are_exact_nearest_ranks_while_small_then_within_the_relative_bound(
    values: list[float], q: float
) -> None:
    sketch = Quantiles()
    for v in values:
        sketch.add(v)
    want = exact_percentile(values, q)
    assert want is not None
    got = sketch.quantile(q)
    if len(values) <= EXACT_QUANTILE_LIMIT:
        assert sketch.is_exact
        assert got == want
    else:
        assert not sketch.is_exact
        assert got is not None
        assert abs(got - want) <= abs(want) * QUANTILE_RELATIVE_ERROR


def test_percentile_without_a_quantile_is_refused() -> None:
    with pytest.raises(ValueError, match="approx_percentile needs a quantile"):
        aggregator_for(Aggregation.APPROX_PERCENTILE)
