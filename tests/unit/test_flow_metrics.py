"""The flow's batch histograms: the bisected freshness path counts exactly what the per-value
path counts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from freshet.stream.metrics import _FRESHNESS_BUCKETS, BatchHistogram

NOW_MS = 1_795_000_000_123

# Ages on and around the bucket bounds (an age equal to a bound counts in that bound's bucket),
# far beyond the last one, zero, and rows without a Kafka timestamp (-1, skipped).
_edge_ages = st.sampled_from([0, 1, *(int(b * 1000) for b in _FRESHNESS_BUCKETS), 61_000])
_ages = st.one_of(_edge_ages, _edge_ages.map(lambda a: a + 1), st.integers(0, 120_000))


@settings(max_examples=300, deadline=None)
@given(
    ages=st.lists(_ages, max_size=200),
    missing=st.integers(0, 3),
    now_fraction=st.sampled_from([0.0, 0.25, 0.5]),
)
def test_observe_ages_counts_what_observe_many_counts(
    ages: list[int], missing: int, now_fraction: float
) -> None:
    now_ms = NOW_MS + now_fraction
    timestamps = [NOW_MS - age for age in ages] + [-1] * missing
    bisected = BatchHistogram("bisected", "test", buckets=_FRESHNESS_BUCKETS, registry=None)
    per_value = BatchHistogram("per_value", "test", buckets=_FRESHNESS_BUCKETS, registry=None)

    bisected.observe_ages("v", now_ms, timestamps)
    per_value.observe_many("v", [(now_ms - ts) / 1000 for ts in timestamps if ts >= 0])

    got_counts, got_sum = bisected.snapshot("v")
    want_counts, want_sum = per_value.snapshot("v")
    assert got_counts == want_counts
    assert got_counts[-1] == len(ages)  # every row with a timestamp, none without
    assert abs(got_sum - want_sum) <= 1e-6 * max(1.0, abs(want_sum))


def test_observe_ages_accumulates_across_batches() -> None:
    hist = BatchHistogram("acc", "test", buckets=(0.01, 0.1), registry=None)
    hist.observe_ages("v", 1_000.0, [995, 950, 500])  # ages 5 ms, 50 ms, 500 ms
    hist.observe_ages("v", 2_000.0, [1_990, -1])  # age 10 ms (on the bound), no timestamp
    counts, total = hist.snapshot("v")
    assert counts == (2, 3, 4)  # cumulative: <= 10 ms, <= 100 ms, +Inf
    assert abs(total - (0.005 + 0.05 + 0.5 + 0.01)) < 1e-9
