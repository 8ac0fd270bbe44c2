"""``approx_percentile``: the accuracy bound of :class:`freshet.engine.aggregations.Quantiles`
against exact sorted quantiles, and its determinism, from one partial up to whole engines.

The bound (``flows/engine/aggregations.py``): for ``n`` values and ``q`` in [0, 1], with ``x_r`` the
``r``-th smallest value, ``r = max(ceil(q * n), 1)`` (nearest rank), the result is ``x_r`` while
``n <= EXACT_QUANTILE_LIMIT`` and within ``|x_r| / 128`` of it beyond. Determinism: the partial
and its quantiles are a function of the multiset of values, so any order of additions, any
split into tiles merged in any order, copies and pickles give bit-identical results; so do two
engines fed one entity's events in different batches, with a restart from pickled states.
"""

from __future__ import annotations

import math
import pickle
import random
import struct
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import Reference, assert_rows_close, exact_percentile

from freshet.dsl.definitions import Aggregation, Entity, Feature, FeatureView, Source
from freshet.engine.aggregations import EXACT_QUANTILE_LIMIT, QUANTILE_RELATIVE_ERROR, Quantiles
from freshet.engine.view_engine import EntityState, ViewEngine
from freshet.sinks.rows import Row

QS = [i / 1000 for i in range(1001)] + [1e-9, 0.25 + 1e-12, 1 - 1e-9]


def _bits(x: float | None) -> bytes | None:
    return None if x is None else struct.pack("<d", x)


def _sketch(values: Sequence[float]) -> Quantiles:
    partial = Quantiles()
    for v in values:
        partial.add(v)
    return partial


def _check_bound(partial: Quantiles, values: Sequence[float], qs: Sequence[float]) -> float:
    """Assert the documented bound at every q; returns the worst relative error seen."""
    ordered = sorted(v + 0.0 for v in values if v == v)
    worst = 0.0
    for q in qs:
        want = exact_percentile(ordered, q, presorted=True)
        got = partial.quantile(q)
        assert want is not None
        assert got is not None
        if len(ordered) <= EXACT_QUANTILE_LIMIT or want == 0.0 or math.isinf(want):
            assert _bits(got) == _bits(want), (q, got, want)
            continue
        error = abs(got - want) / abs(want)
        assert error <= QUANTILE_RELATIVE_ERROR, (q, got, want, error)
        worst = max(worst, error)
    return worst


def _uniform(rnd: random.Random) -> float:
    return rnd.uniform(0.0, 1000.0)


def _lognormal(rnd: random.Random) -> float:
    return rnd.lognormvariate(3.0, 2.5)  # spans ~20 orders of magnitude


def _signed_with_zeros(rnd: random.Random) -> float:
    kind = rnd.random()
    if kind < 0.2:
        return rnd.choice([0.0, -0.0])
    if kind < 0.6:
        return -rnd.expovariate(1 / 50)
    return rnd.gauss(10.0, 100.0)


def _duplicates(rnd: random.Random) -> float:
    return rnd.choice([0.01, 1.0, 2.0, 9.99, 10.0, 49.5, -3.0, 0.0, 1e6])


def _wide(rnd: random.Random) -> float:
    return math.ldexp(rnd.random() + 0.5, rnd.randint(-1000, 1000)) * rnd.choice([1, -1])


@pytest.mark.parametrize(
    "draw", [_uniform, _lognormal, _signed_with_zeros, _duplicates, _wide], ids=lambda f: f.__name__
)
def test_quantiles_of_100k_values_are_within_the_relative_bound_of_exact_ranks(
    draw: Callable[[random.Random], float],
) -> None:
    rnd = random.Random(draw.__name__)
    values = [draw(rnd) for _ in range(100_000)]
    partial = _sketch(values)
    assert not partial.is_exact
    _check_bound(partial, values, QS)
    # The ends are exact: the min and the max.
    assert partial.quantile(0.0) == min(values)
    assert partial.quantile(1.0) == max(values)


def test_the_bound_is_tight_and_reached_only_at_bucket_edges() -> None:
    # 1.0 lies at the bottom edge of its bucket [1, 1 + 1/64): the midpoint is 1/128 above.
    values = [1.0] * 200 + [5.0] * 200
    assert _sketch(values).quantile(0.25) == 1.0 + 1 / 128


def test_zeros_infinities_and_nan_are_exact_or_skipped() -> None:
    values = [0.0] * 150 + [-0.0] * 150 + [math.inf, -math.inf] + [math.nan] * 10 + [3.0] * 50
    partial = _sketch(values)
    assert partial.n == 352
    assert _bits(partial.quantile(0.5)) == _bits(0.0)  # never -0.0
    assert partial.quantile(0.0) == -math.inf
    assert partial.quantile(1.0) == math.inf
    assert _sketch([math.nan]).quantile(0.5) is None


@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1,
             max_size=3 * EXACT_QUANTILE_LIMIT),
    st.floats(0.0, 1.0),
)  # fmt: skip
@settings(max_examples=300, deadline=None)
def test_quantiles_are_exact_ranks_while_small_then_within_the_bound(
    values: list[float], q: float
) -> None:
    _check_bound(_sketch(values), values, [q, 0.0, 0.5, 1.0])


def _state(partial: Quantiles) -> bytes:
    return pickle.dumps(partial, protocol=pickle.HIGHEST_PROTOCOL)


def _readings(partial: Quantiles) -> list[bytes | None]:
    return [_bits(partial.quantile(q)) for q in (0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0)]


@given(
    st.lists(st.one_of(st.floats(-1e6, 1e6), st.sampled_from([0.0, -0.0, 1.5, 2.0])),
             max_size=4 * EXACT_QUANTILE_LIMIT),
    st.randoms(use_true_random=False),
)  # fmt: skip
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_order_split_merge_order_copy_or_pickle_gives_the_same_state(
    values: list[float], rnd: random.Random
) -> None:
    straight = _sketch(values)
    want_state, want = _state(straight), _readings(straight)
    shuffled = values[:]
    rnd.shuffle(shuffled)
    # Tiles: a random split, merged in a random order and tree shape.
    cuts = sorted(rnd.randrange(len(shuffled) + 1) for _ in range(rnd.randrange(6)))
    parts = [
        _sketch(shuffled[a:b]) for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)
    ]
    while len(parts) > 1:
        i = rnd.randrange(len(parts) - 1)
        left, right = parts[i], parts.pop(i + 1)
        if rnd.random() < 0.5:
            left, right = right, left
        left = left.copy()
        left.merge(right)
        parts[i] = left
    merged = parts[0]
    # A resume: pickled half way, then the rest added.
    half = len(shuffled) // 2
    resumed = pickle.loads(_state(_sketch(shuffled[:half])))
    for v in shuffled[half:]:
        resumed.add(v)
    for partial in (merged, resumed, pickle.loads(want_state), straight.copy()):
        assert _readings(partial) == want
        assert _state(partial) == want_state


@given(
    st.lists(st.floats(-1e3, 1e3), max_size=3 * EXACT_QUANTILE_LIMIT),
    st.lists(st.floats(-1e3, 1e3), max_size=EXACT_QUANTILE_LIMIT),
    st.lists(st.floats(-1e3, 1e3), max_size=5),
    st.floats(0.0, 1.0),
)
@settings(max_examples=300, deadline=None)
def test_quantile_with_reads_the_merge_without_changing_the_parts(
    complete: list[float], newest: list[float], pending: list[float], q: float
) -> None:
    base, more = _sketch(complete), _sketch(newest)
    before = (_state(base), _state(more))
    want = _sketch(complete + newest + pending).quantile(q)
    assert _bits(base.quantile_with(q, more, pending)) == _bits(want)
    assert (_state(base), _state(more)) == before
    assert _bits(base.quantile_with(q, None, newest + pending)) == _bits(want)


def test_sketch_state_pickles_compactly() -> None:
    rnd = random.Random(5)
    partial = _sketch([round(rnd.lognormvariate(3.0, 1.0), 2) for _ in range(100_000)])
    size = len(_state(partial))
    assert size < 3_500, size  # 670 buckets (amounts 0.26 to 1,481) of ~4 bytes each


def test_a_kll_state_of_an_older_freshet_is_refused_with_a_clear_error() -> None:
    partial = Quantiles.__new__(Quantiles)
    with pytest.raises(ValueError, match=r"older freshet .* new --recovery-dir"):
        partial.__setstate__(b"\x05\x01\x0f")  # type: ignore[arg-type]


# --- whole engines ----------------------------------------------------------------------------

PCT_VIEW = FeatureView(
    name="pct",
    version=1,
    entity=Entity(name="card", key="card_id"),
    source=Source(
        topic="transactions", encoding="avro", schema="transaction.avsc", event_time_field="ts"
    ),
    features=(
        Feature("n_60s", Aggregation.COUNT, window="60s", hop="10s"),
        Feature("p0_60s", Aggregation.APPROX_PERCENTILE, "amount", window="60s", hop="10s",
                quantile=0.0),
        Feature("p50_60s", Aggregation.APPROX_PERCENTILE, "amount", window="60s", hop="10s",
                quantile=0.5),
        Feature("p99_60s", Aggregation.APPROX_PERCENTILE, "amount", window="60s", hop="10s",
                quantile=0.99),
        Feature("p90_20s", Aggregation.APPROX_PERCENTILE, "amount", window="20s", hop="5s",
                quantile=0.9),
        Feature("p50_life", Aggregation.APPROX_PERCENTILE, "amount", quantile=0.5),
        Feature("max_60s", Aggregation.MAX, "amount", window="60s", hop="10s"),
    ),
    allowed_lateness_seconds=2,
)  # fmt: skip

Event = tuple[str, int, tuple[Any, ...], int, int, int]  # apply_batch's BatchEvent


def _events(entities: Sequence[str], per_entity: int, seed: int) -> list[Event]:
    """Per entity: events ~200 ms apart (~300 in a 60 s window: past the exact range), some
    out of order within (and a few beyond) the lateness, idle gaps past every window, amounts
    of every kind; entities interleaved at random, each in its own order."""
    rnd = random.Random(seed)
    streams: dict[str, list[tuple[int, float]]] = {}
    for name in entities:
        clock, events = 1_700_000_000_000 + rnd.randrange(60_000), []
        for _ in range(per_entity):
            clock += rnd.choice([0, 100, 200, 300]) if rnd.random() > 0.002 else 120_000
            t = clock - rnd.randrange(3_000) if rnd.random() < 0.05 else clock
            amount = rnd.choice([_lognormal, _signed_with_zeros, _duplicates])(rnd)
            events.append((t, amount))
        streams[name] = events
    order = [name for name in entities for _ in range(per_entity)]
    rnd.shuffle(order)
    position: dict[str, int] = defaultdict(int)
    out: list[Event] = []
    for offset, name in enumerate(order):
        t, amount = streams[name][position[name]]
        position[name] += 1
        fields = {"amount": amount, "merchant": "m", "ts": t, "card_id": name}
        out.append((name, t, tuple(fields[f] for f in PCT_VIEW.input_fields), 0, offset, 0))
    return out


def _run(events: list[Event], cuts: Sequence[int], restart_at: int | None) -> dict[str, list[Row]]:
    """Feed ``events`` through ``apply_batch`` in the batches ``cuts`` makes, pickling every
    state and starting a fresh engine before batch ``restart_at``; then a bounded replay's end."""
    engine = ViewEngine(PCT_VIEW, clock=lambda: 0)
    states: dict[str, EntityState] = {}
    rows: list[Row] = []
    bounds = list(zip([0, *cuts], [*cuts, len(events)], strict=True))
    for i, (start, end) in enumerate(bounds):
        if i == restart_at:
            states = pickle.loads(pickle.dumps(states, protocol=pickle.HIGHEST_PROTOCOL))
            engine = ViewEngine(PCT_VIEW, clock=lambda: 0)

        def missing(
            entity: str, states: dict[str, EntityState] = states, engine: ViewEngine = engine
        ) -> EntityState:
            state = states[entity] = engine.new_state()
            return state

        engine.apply_batch(states, events[start:end], missing, rows, [], [], {})
    until = max(e[1] for e in events) + 200_000
    for name in sorted(states):
        rows += engine.flush(states[name], name, until)
    by_entity: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_entity[row.entity].append(row)
    return dict(by_entity)


def _exact_bits(rows: dict[str, list[Row]]) -> list[tuple[Any, ...]]:
    """The rows with every float as its IEEE 754 bits (``==`` on floats takes -0.0 for 0.0)."""
    return [
        (*row._replace(values=()), tuple(_bits(v) if type(v) is float else v for v in row.values))
        for name in sorted(rows)
        for row in rows[name]
    ]


def test_engines_give_bit_identical_percentile_rows_whatever_the_batches_and_restarts() -> None:
    events = _events(["a", "b", "c"], 1_500, seed=1)
    one_by_one = _run(events, list(range(1, len(events))), None)
    assert max(r.values[0] for rs in one_by_one.values() for r in rs) > EXACT_QUANTILE_LIMIT
    want = _exact_bits(one_by_one)
    rnd = random.Random(2)
    for _ in range(3):
        cuts = sorted(rnd.sample(range(1, len(events)), rnd.randrange(1, 40)))
        assert _exact_bits(_run(events, cuts, rnd.randrange(len(cuts) + 1))) == want
    # Another interleaving of the entities (each entity's own order kept): the same rows.
    by_entity: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_entity[e[0]].append(e)
    regrouped = [e for name in ("c", "a", "b") for e in by_entity[name]]
    assert _exact_bits(_run(regrouped, [len(regrouped) // 3], None)) == want


def test_engine_percentiles_match_the_brute_force_reference_within_the_bound() -> None:
    events = _events(["a", "b"], 900, seed=3)
    got = _run(events, list(range(1, len(events))), None)
    reference = Reference(PCT_VIEW)
    want: dict[str, list[Row]] = defaultdict(list)
    for name, t, fields, partition, offset, _ in events:
        want[name] += reference.event(name, t, fields, partition, offset, 0) or []
    until = max(e[1] for e in events) + 200_000
    for name in sorted(want):
        want[name] += reference.flush(name, until)
    assert max(r.values[0] for rs in want.values() for r in rs) > EXACT_QUANTILE_LIMIT
    for name in want:
        assert_rows_close(PCT_VIEW, got[name], want[name])
