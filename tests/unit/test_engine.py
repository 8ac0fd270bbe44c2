"""The window engine against the brute-force reference (tests/unit/reference.py) and itself.

Property tests generate per-entity event streams with out-of-order events within and beyond the
allowed lateness, idle gaps longer than every window, times exactly on tile and window
boundaries, and ``advance`` calls at random wall times; every row the engine emits must equal
the reference's, late events must be refused and left out of every value, and the rows must not
depend on how entities are interleaved or when ``advance`` runs. ``--slow`` runs many more
examples.
"""

from __future__ import annotations

import pickle
import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import (  # tests/unit/reference.py (pytest puts tests/unit on sys.path)
    Expressions,
    Reference,
)

from freshet.dsl.definitions import Aggregation, Entity, Feature, FeatureView, Source
from freshet.dsl.views import CARD_TXN
from freshet.engine.aggregations import EXACT_DISTINCT_LIMIT
from freshet.engine.view_engine import EntityState, StateFormatError, ViewEngine
from freshet.sinks.rows import Row

# Every aggregation, windows of a few seconds (so streams cross many boundaries), tiles of 1-5 s,
# lifetime features, int and float sums; L = 2 s.
ALL_AGGS = FeatureView(
    name="all_aggs",
    version=1,
    entity=Entity(name="card", key="card_id"),
    source=Source(
        topic="transactions", encoding="avro", schema="transaction.avsc", event_time_field="ts"
    ),
    features=(
        Feature("n_4s", Aggregation.COUNT, window="4s", hop="1s"),
        Feature("sum_6s", Aggregation.SUM, "amount", window="6s", hop="2s"),
        Feature("mean_6s", Aggregation.MEAN, "amount", window="6s", hop="2s"),
        Feature("min_10s", Aggregation.MIN, "amount", window="10s", hop="1s"),
        Feature("max_10s", Aggregation.MAX, "amount", window="10s", hop="5s"),
        Feature("distinct_6s", Aggregation.DISTINCT_COUNT, "merchant", window="6s", hop="2s"),
        Feature("p50_6s", Aggregation.APPROX_PERCENTILE, "amount", window="6s", hop="3s",
                quantile=0.5),
        Feature("p90_6s", Aggregation.APPROX_PERCENTILE, "amount", window="6s", hop="3s",
                quantile=0.9),
        Feature("int_sum_4s", Aggregation.SUM, "ts", window="4s", hop="1s"),
        Feature("last", Aggregation.LAST, "merchant"),
        Feature("n_life", Aggregation.COUNT),
        Feature("sum_life", Aggregation.SUM, "amount"),
        Feature("mean_life", Aggregation.MEAN, "amount"),
        Feature("distinct_life", Aggregation.DISTINCT_COUNT, "merchant"),
        Feature("max_ts_life", Aggregation.MAX, "ts"),
        Feature("p10_life", Aggregation.APPROX_PERCENTILE, "amount", quantile=0.1),
    ),
    allowed_lateness_seconds=2,
)  # fmt: skip

# Windows only plus `last`: the shape of the demo view, whose drained states may be dropped.
WINDOWS_ONLY = FeatureView(
    name="windows_only",
    version=1,
    entity=Entity(name="card", key="card_id"),
    source=ALL_AGGS.source,
    features=(
        Feature("n_4s", Aggregation.COUNT, window="4s", hop="1s"),
        Feature("sum_6s", Aggregation.SUM, "amount", window="6s", hop="2s"),
        Feature("max_10s", Aggregation.MAX, "amount", window="10s", hop="5s"),
        Feature("distinct_6s", Aggregation.DISTINCT_COUNT, "merchant", window="6s", hop="2s"),
        Feature("last", Aggregation.LAST, "merchant"),
    ),
    allowed_lateness_seconds=1,
)

# Computed columns, filters, a nullable column, and the aggregations of variance/stddev,
# first/last over windows, last_k and top_k, windowed and lifetime.
EXPRESSIVE = FeatureView(
    name="expressive",
    version=1,
    entity=Entity(name="card", key="card_id"),
    source=ALL_AGGS.source,
    columns={
        "big": "amount >= 1.0",
        "cents": "round(amount * 100)",
        "ratio": "amount / (ts % 7000)",  # null when ts is a multiple of 7 s
    },
    features=(
        Feature("big_n_4s", Aggregation.COUNT, window="4s", hop="1s", where="big"),
        Feature("small_cents_6s", Aggregation.SUM, "cents", window="6s", hop="2s",
                where="not big"),
        Feature("std_6s", Aggregation.STDDEV, "amount", window="6s", hop="2s"),
        Feature("var_6s", Aggregation.VARIANCE, "amount", window="6s", hop="2s"),
        Feature("first_6s", Aggregation.FIRST, "amount", window="6s", hop="3s"),
        Feature("last_4s", Aggregation.LAST, "merchant", window="4s", hop="1s"),
        Feature("last3_6s", Aggregation.LAST_K, "amount", window="6s", hop="2s", k=3),
        Feature("top2_6s", Aggregation.TOP_K, "merchant", window="6s", hop="2s", k=2),
        Feature("ratio_max_4s", Aggregation.MAX, "ratio", window="4s", hop="1s"),
        Feature("ratio_mean_life", Aggregation.MEAN, "ratio"),
        Feature("var_life", Aggregation.VARIANCE, "cents"),
        Feature("first_life", Aggregation.FIRST, "merchant"),
        Feature("last2_life", Aggregation.LAST_K, "merchant", k=2),
        Feature("top1_life", Aggregation.TOP_K, "amount", k=1),
        Feature("big_last", Aggregation.LAST, "merchant", where="big"),
        Feature("big_first_4s", Aggregation.FIRST, "merchant", window="4s", hop="1s",
                where="big and merchant != 'm4'"),
    ),
    allowed_lateness_seconds=2,
)  # fmt: skip

# The same expressions written by hand, for the reference (never the engine's compiled code).
EXPRESSIONS = {
    "expressive": Expressions(
        columns=lambda r: {
            "big": r["amount"] >= 1.0,
            "cents": round(r["amount"] * 100),
            "ratio": None if r["ts"] % 7000 == 0 else r["amount"] / (r["ts"] % 7000),
        },
        where={
            "big_n_4s": lambda r: r["big"],
            "small_cents_6s": lambda r: not r["big"],
            "big_last": lambda r: r["big"],
            "big_first_4s": lambda r: r["big"] and r["merchant"] != "m4",
        },
    )
}

# Amounts include values whose float sums depend on the order of additions.
AMOUNTS = (0.1, 0.2, 0.3, 1.5, -2.25, 7.0, 1e16, -1e16, 3.0e-5)
MERCHANTS = ("m1", "m2", "m3", "m4")

Op = tuple[Any, ...]  # ("event", entity, t, fields, wall) | ("advance", entity, now)


def _fields(view: FeatureView, t: int, amount: float, merchant: str) -> tuple[Any, ...]:
    by_name = {"amount": amount, "merchant": merchant, "ts": t, "card_id": "x"}
    return tuple(by_name[name] for name in view.input_fields)


@st.composite
def entity_streams(draw: st.DrawFn, view: FeatureView) -> dict[str, list[Op]]:
    """Per entity: events in arrival order, times on a 250 ms grid (so exactly on tile and
    window boundaries often), stepping forward, idling past every window, or arriving out of
    order by up to twice the allowed lateness; each with a wall time."""
    lateness = view.allowed_lateness_seconds * 1000
    streams: dict[str, list[Op]] = {}
    for name in draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3,
                              unique=True)):  # fmt: skip
        clock = draw(st.integers(0, 40)) * 1000  # entities start at different times
        wall = 1_000_000
        ops: list[Op] = []
        for _ in range(draw(st.integers(1, 40))):
            kind = draw(st.sampled_from(["step", "step", "step", "same", "idle", "disorder"]))
            if kind == "step":
                clock += draw(st.integers(0, 16)) * 250
            elif kind == "idle":
                clock += draw(st.integers(12, 120)) * 1000
            t = clock
            if kind == "disorder":
                t = clock - draw(st.integers(0, 2 * lateness // 250)) * 250
            wall += draw(st.integers(0, 3000))
            amount = draw(st.sampled_from(AMOUNTS))
            merchant = draw(st.sampled_from(MERCHANTS))
            ops.append(("event", name, t, _fields(view, t, amount, merchant), wall))
        streams[name] = ops
    return streams


def _interleave(streams: dict[str, list[Op]], rnd: random.Random) -> list[Op]:
    """A random merge of the entities' streams keeping each entity's own order."""
    queues = {name: list(ops) for name, ops in streams.items()}
    merged: list[Op] = []
    while queues:
        name = rnd.choice(sorted(queues))
        merged.append(queues[name].pop(0))
        if not queues[name]:
            del queues[name]
    return merged


class _Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def _run_engine(view: FeatureView, ops: list[Op]) -> tuple[list[Any], dict[str, EntityState]]:
    """Feed ops; returns each op's result (rows or None) and the final states."""
    clock = _Clock()
    engine = ViewEngine(view, clock=clock)
    states: dict[str, EntityState] = {}
    results: list[Any] = []
    for op in ops:
        state = states.setdefault(op[1], engine.new_state())
        if op[0] == "event":
            _, name, t, fields, wall = op
            clock.now = wall
            results.append(engine.apply(state, name, t, fields, 0, len(results)))
        elif op[0] == "advance":
            results.append(engine.advance(state, op[1], op[2]))
        else:
            results.append(engine.flush(state, op[1], op[2]))
    return results, states


def _reference(view: FeatureView) -> Reference:
    return Reference(view, EXPRESSIONS.get(view.name))


def _run_reference(view: FeatureView, ops: list[Op]) -> list[Any]:
    reference = _reference(view)
    results: list[Any] = []
    for op in ops:
        if op[0] == "event":
            _, name, t, fields, wall = op
            results.append(reference.event(name, t, fields, 0, len(results), wall))
        elif op[0] == "advance":
            results.append(reference.advance(op[1], op[2]))
        else:
            results.append(reference.flush(op[1], op[2]))
    return results


def _with_ends(ops: list[Op], streams: dict[str, list[Op]]) -> list[Op]:
    """Append a bounded replay's end per entity: flush far enough to drain every window."""
    until = max(op[2] for stream in streams.values() for op in stream) + 200_000
    return ops + [("flush", name, until) for name in sorted(streams)]


def _check(request: pytest.FixtureRequest, examples: int, body: Callable[..., None]) -> None:
    """Run ``body(data)`` as a hypothesis test: ``examples`` examples, 10x under ``--slow``."""
    slow = bool(request.config.getoption("--slow", default=False))

    @settings(
        max_examples=examples * 10 if slow else examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        body(data)

    run()


def _sprinkle_advances(
    ops: list[Op], rnd: random.Random, view: FeatureView, *, safe: bool
) -> list[Op]:
    """Insert ``advance`` calls at random points. ``safe``: never so far that a later event of
    the entity would become late (so the set of accepted events stays the same)."""
    reference = _reference(view)
    out: list[Op] = []
    next_t: dict[int, int | None] = {}
    for i, op in enumerate(ops):
        later = [o for o in ops[i:] if o[0] == "event" and o[1] == op[1]]
        next_t[i] = min((o[2] for o in later), default=None)
    for i, op in enumerate(ops):
        name = op[1]
        entity = reference.entities.get(name)
        if rnd.random() < 0.4 and entity is not None and entity.max_t is not None:
            lo = entity.wall
            hi = reference.safe_advance_limit(name, next_t[i]) if safe else None
            if hi is None:
                hi = lo + 300_000
            if hi >= lo:
                now = rnd.randint(lo, hi)
                out.append(("advance", name, now))
                reference.advance(name, now)
        out.append(op)
        if op[0] == "event":
            reference.event(name, op[2], op[3], 0, 0, op[4])
    return out


@pytest.mark.parametrize(
    "view", [ALL_AGGS, CARD_TXN, WINDOWS_ONLY, EXPRESSIVE], ids=lambda v: v.name
)
def test_every_row_equals_the_reference_and_late_events_are_refused(
    view: FeatureView, request: pytest.FixtureRequest
) -> None:
    _check(request, 100, lambda data: _rows_equal_reference(view, data))


def _rows_equal_reference(view: FeatureView, data: st.DataObject) -> None:
    streams = data.draw(entity_streams(view))
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    ops = _sprinkle_advances(_interleave(streams, rnd), rnd, view, safe=False)
    ops = _with_ends(ops, streams)
    got, _ = _run_engine(view, ops)
    expected = _run_reference(view, ops)
    for op, rows, want in zip(ops, got, expected, strict=True):
        assert rows == want, f"after {op}"


@pytest.mark.parametrize("view", [ALL_AGGS, CARD_TXN, EXPRESSIVE], ids=lambda v: v.name)
def test_rows_do_not_depend_on_interleaving_or_advance_timing(
    view: FeatureView, request: pytest.FixtureRequest
) -> None:
    _check(request, 60, lambda data: _same_rows_any_timing(view, data))


def _same_rows_any_timing(view: FeatureView, data: st.DataObject) -> None:
    streams = data.draw(entity_streams(view))
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    # Give every event the same offset in both runs: its index in its entity's stream.
    streams = {
        name: [(*op[:4], op[4], i) for i, op in enumerate(ops)] for name, ops in streams.items()
    }

    def run(ops: list[Op]) -> dict[str, list[Row]]:
        clock = _Clock()
        engine = ViewEngine(view, clock=clock)
        states: dict[str, EntityState] = {}
        rows: dict[str, list[Row]] = defaultdict(list)
        late: dict[str, list[int]] = defaultdict(list)
        for op in ops:
            state = states.setdefault(op[1], engine.new_state())
            if op[0] == "event":
                clock.now = op[4]
                out = engine.apply(state, op[1], op[2], op[3], 7, op[5])
                if out is None:
                    late[op[1]].append(op[5])
                else:
                    rows[op[1]].extend(out)
            elif op[0] == "advance":
                rows[op[1]].extend(engine.advance(state, op[1], op[2]))
            else:
                rows[op[1]].extend(engine.flush(state, op[1], op[2]))
        return {name: [*sorted(rs, key=repr), ("late", late[name])] for name, rs in rows.items()}

    plain = _with_ends(_interleave(streams, rnd), streams)
    timed = _with_ends(_sprinkle_advances(_interleave(streams, rnd), rnd, view, safe=True), streams)
    assert run(plain) == run(timed)


@pytest.mark.parametrize("view", [ALL_AGGS, CARD_TXN, EXPRESSIVE], ids=lambda v: v.name)
def test_apply_batch_gives_the_rows_of_apply_event_by_event(
    view: FeatureView, request: pytest.FixtureRequest
) -> None:
    _check(request, 40, lambda data: _batch_equals_single(view, data))


def _batch_equals_single(view: FeatureView, data: st.DataObject) -> None:
    streams = data.draw(entity_streams(view))
    ops = _interleave(streams, random.Random(data.draw(st.integers(0, 2**32))))
    events = [
        (op[1], op[2], op[3], 3, i, 50_000 + i) for i, op in enumerate(ops) if op[0] == "event"
    ]
    single = ViewEngine(view, clock=lambda: 0)
    states: dict[str, EntityState] = {}
    rows: list[Row] = []
    kafka_ts: list[int] = []
    late: list[Any] = []
    for event in events:
        state = states.setdefault(event[0], single.new_state())
        out = single.apply(state, *event[:5])
        if out is None:
            late.append(event)
        else:
            rows += out
            kafka_ts += [-1] * (len(out) - 1) + [event[5]]

    batched = ViewEngine(view, clock=lambda: 0)
    states_b: dict[str, EntityState] = {}
    rows_b: list[Row] = []
    kafka_ts_b: list[int] = []
    late_b: list[Any] = []
    touched: dict[str, EntityState] = {}
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=6)))
    for start, end in zip([0, *cuts], [*cuts, len(events)], strict=True):
        batched.apply_batch(
            states_b,
            events[start:end],
            lambda entity: states_b.setdefault(entity, batched.new_state()),
            rows_b,
            kafka_ts_b,
            late_b,
            touched,
        )
    assert rows_b == rows
    assert kafka_ts_b == kafka_ts
    assert late_b == late
    assert states_b == states
    assert set(touched) == {e[0] for e in events if e not in late}


@pytest.mark.parametrize("view", [ALL_AGGS, EXPRESSIVE], ids=lambda v: v.name)
def test_a_pickled_state_resumes_with_identical_rows(
    view: FeatureView, request: pytest.FixtureRequest
) -> None:
    _check(request, 40, lambda data: _a_pickled_state_resumes_with_identical_rows(view, data))


def _a_pickled_state_resumes_with_identical_rows(view: FeatureView, data: st.DataObject) -> None:
    streams = data.draw(entity_streams(view))
    ops = _with_ends(_interleave(streams, random.Random(0)), streams)
    cut = data.draw(st.integers(0, len(ops)))
    straight, _ = _run_engine(view, ops)

    clock = _Clock()
    engine = ViewEngine(view, clock=clock)
    states: dict[str, EntityState] = {}
    resumed: list[Any] = []
    for i, op in enumerate(ops):
        if i == cut:  # a recovery snapshot and a restart
            states = pickle.loads(pickle.dumps(states))
            engine = ViewEngine(view, clock=clock)
        state = states.setdefault(op[1], engine.new_state())
        if op[0] == "event":
            clock.now = op[4]
            resumed.append(engine.apply(state, op[1], op[2], op[3], 0, len(resumed)))
        else:
            resumed.append(engine.flush(state, op[1], op[2]))
    assert resumed == straight


def test_advance_emits_exactly_at_next_expiry(request: pytest.FixtureRequest) -> None:
    _check(request, 60, _advance_emits_exactly_at_next_expiry)


def _advance_emits_exactly_at_next_expiry(data: st.DataObject) -> None:
    view = CARD_TXN
    streams = data.draw(entity_streams(view))
    name, ops = next(iter(streams.items()))
    _, states = _run_engine(view, ops)
    engine = ViewEngine(view, clock=lambda: 0)
    state = states[name]
    for _ in range(50):
        at = engine.next_expiry(state)
        if at is None:
            assert engine.is_drained(state)
            break
        assert engine.advance(state, name, at - 1) == []
        rows = engine.advance(state, name, at)
        assert rows, "next_expiry promised a row"
        assert [r.as_of for r in rows] == sorted({r.as_of for r in rows})
    else:
        pytest.fail("the entity never drained")


def test_dropping_a_drained_state_changes_no_later_row(request: pytest.FixtureRequest) -> None:
    _check(request, 40, _dropping_a_drained_state_changes_no_later_row)


def _dropping_a_drained_state_changes_no_later_row(data: st.DataObject) -> None:
    view = WINDOWS_ONLY
    first = data.draw(entity_streams(view))
    second = data.draw(entity_streams(view))
    name = "a"
    ops1 = [op for op in first.get(name, first[next(iter(first))]) if op[0] == "event"]
    clock = _Clock()
    engine = ViewEngine(view, clock=clock)
    kept = engine.new_state()
    for op in ops1:
        clock.now = op[4]
        engine.apply(kept, name, op[2], op[3], 0, 0)
    end = max(op[2] for op in ops1)
    engine.flush(kept, name, end + 100_000)
    assert engine.is_drained(kept)
    fresh = engine.new_state()
    shift = end + 200_000
    for op in next(iter(second.values())):
        t = op[2] + shift
        clock.now = op[4]
        assert engine.apply(kept, name, t, op[3], 0, 1) == engine.apply(fresh, name, t, op[3], 0, 1)


# --- examples that pin the semantics down ----------------------------------------------------

BASE = 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000  # midnight UTC: aligned to every hop


def _card_engine() -> tuple[ViewEngine, EntityState, _Clock]:
    clock = _Clock()
    engine = ViewEngine(CARD_TXN, clock=clock)
    return engine, engine.new_state(), clock


def _apply(
    engine: ViewEngine, state: EntityState, t: int, amount: float, merchant: str, offset: int
) -> list[Row] | None:
    return engine.apply(state, "card-1", BASE + t, (amount, merchant), 0, offset)


def test_an_event_exactly_on_a_boundary_counts_in_the_value_as_of_that_boundary() -> None:
    engine, state, _ = _card_engine()
    _apply(engine, state, 0, 10.0, "a", 0)  # tile [0, 10 s): 5 min boundary at 310 s
    rows = _apply(engine, state, 310_000, 1.0, "b", 1)
    assert rows is not None
    assert [(r.as_of - BASE, r.values[0]) for r in rows] == [(310_000, 1)]
    later = _apply(engine, state, 320_000, 1.0, "b", 2)
    assert later is not None
    # The watermark (315 s) passed 310 s: the expiry row as of 310 s includes the event at 310 s.
    assert [(r.as_of - BASE, r.values[0], r.offset) for r in later] == [
        (310_000, 1, 1),
        (320_000, 2, 2),
    ]


def test_a_window_holds_between_w_and_w_plus_h_of_history() -> None:
    engine, state, _ = _card_engine()
    _apply(engine, state, 5_000, 10.0, "a", 0)  # tile [0 s, 10 s)
    before = _apply(engine, state, 309_999, 1.0, "a", 1)
    assert before is not None
    assert before[-1].values[0] == 2  # the window [floor_h(9.999 s), 309.999 s] holds 5 s
    rows = engine.flush(state, "card-1", BASE + 310_000)
    assert (rows[0].as_of - BASE, rows[0].values[0]) == (310_000, 1)


def test_late_events_are_refused_and_left_out_of_every_value() -> None:
    engine, state, _ = _card_engine()
    _apply(engine, state, 60_000, 10.0, "a", 0)
    assert _apply(engine, state, 54_999, 99.0, "z", 1) is None  # watermark = 60 s - 5 s
    rows = _apply(engine, state, 55_000, 1.0, "b", 2)  # exactly at the watermark: on time
    assert rows is not None
    count, total, _, top, last, distinct = rows[-1].values
    assert (count, total, top, last, distinct) == (2, 11.0, 10.0, "a", 2)
    assert state.max_t == BASE + 60_000


def test_an_idle_entity_drains_when_the_wall_clock_passes_its_boundaries() -> None:
    engine, state, clock = _card_engine()
    clock.now = 1_000
    _apply(engine, state, 0, 10.0, "a", 0)
    at = engine.next_expiry(state)
    # The 5 min count expires at 310 s event time = 310 s + L after the event was seen.
    assert at == 1_000 + 310_000 + 5_000 + 1
    rows = engine.advance(state, "card-1", 1_000 + 400_000)
    assert [(r.as_of - BASE, r.values[0]) for r in rows] == [(310_000, 0)]
    rows = engine.advance(state, "card-1", 1_000 + 2 * 86_400_000)
    assert rows[-1].values == (0, 0.0, None, None, "a", 0)
    assert engine.is_drained(state)


def test_out_of_order_events_within_lateness_update_the_right_tiles() -> None:
    engine, state, _ = _card_engine()
    _apply(engine, state, 303_000, 2.0, "b", 0)
    rows = _apply(engine, state, 299_000, 5.0, "a", 1)  # older tile, within L
    assert rows is not None
    assert rows[-1].as_of == BASE + 303_000
    assert rows[-1].values[:2] == (2, 7.0)
    assert rows[-1].values[4] == "b"  # last = the greatest event time
    rows = engine.flush(state, "card-1", BASE + 600_000)
    # 299 s sits in tile [290 s, 300 s) (boundary 600 s); 303 s in [300 s, 310 s) (610 s).
    assert [(r.as_of - BASE, r.values[0]) for r in rows] == [(600_000, 1)]


def test_distinct_count_switches_to_a_sketch_within_its_error_bound() -> None:
    engine, state, _ = _card_engine()
    n = EXACT_DISTINCT_LIMIT * 8
    rows: list[Row] = []
    for i in range(n):
        out = _apply(engine, state, i * 10, 1.0, f"merchant-{i}", i)
        assert out is not None
        rows.extend(out)
    estimate = rows[-1].values[5]
    assert abs(estimate - n) <= 0.05 * n
    exact_below = rows[EXACT_DISTINCT_LIMIT - 1].values[5]
    assert exact_below == EXACT_DISTINCT_LIMIT
    # Once the 24 h window has emptied the count is exact again.
    engine.flush(state, "card-1", BASE + 3 * 86_400_000)
    out = _apply(engine, state, 3 * 86_400_000 + 1, 1.0, "x", n)
    assert out is not None
    assert out[-1].values[5] == 1
    assert pickle.loads(pickle.dumps(state)) == state


def test_a_state_of_another_format_is_refused_with_a_clear_error() -> None:
    engine, state, _ = _card_engine()
    _apply(engine, state, 0, 12.5, "m1", 0)
    blob = pickle.dumps(state)
    assert pickle.loads(blob) == state
    old = state.__getstate__()[1:]  # format 1 had no version in front
    with pytest.raises(StateFormatError, match="new --recovery-dir"):
        EntityState.__new__(EntityState).__setstate__(old)


def test_state_of_a_demo_card_pickles_small() -> None:
    engine, state, _ = _card_engine()
    for i in range(10):
        _apply(engine, state, i * 360_000, 12.5 + i, f"m{i % 3}", i)
    size = len(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
    assert size < 800, size


def test_a_nan_amount_is_refused_before_the_state_changes() -> None:
    engine, state, _ = _card_engine()
    _apply(engine, state, 0, 10.0, "a", 0)
    before = pickle.dumps(state)
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match=r"field 'amount' = .* is not a finite number"):
            _apply(engine, state, 1_000, bad, "b", 1)
    assert pickle.dumps(state) == before
