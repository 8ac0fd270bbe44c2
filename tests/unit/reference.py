"""A brute-force reference of DESIGN.md "Window semantics", written from the spec, not the engine.

It keeps every accepted event and recomputes each value from scratch by filtering events on
time: slow and obviously right. The engine's rows are checked against it.

* value of a windowed feature as of ``T``: the accepted events with ``floor_h(T - W) <= t <= T``;
  lifetime features: ``t <= T``; percentiles by exact nearest rank over the sorted values (the
  engine's sketch is exact while small, then within a relative bound: ``assert_rows_close``);
* watermark per entity: ``max t - L``, raised by ``advance(now)`` to
  ``max t - L + (now - wall time when max t was seen)``; an event with ``t < watermark`` is late;
* rows: one per accepted event (as of the entity's max event time, carrying the event's
  position), one per expiry boundary ``B = tile_start + h + W`` of every non-empty tile once the
  watermark passes ``B`` (as of ``B``, carrying the position of the highest-offset event with
  ``t <= B``), boundaries in increasing order before the event's row; ``flush(until)`` passes
  every boundary ``<= until``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from freshet.dsl.definitions import Aggregation, FeatureView
from freshet.engine.aggregations import QUANTILE_RELATIVE_ERROR
from freshet.sinks.rows import Row


@dataclass(frozen=True)
class Event:
    t: int
    fields: tuple[Any, ...]
    partition: int
    offset: int
    seq: int  # arrival order


def exact_percentile(values: list[float], q: float, *, presorted: bool = False) -> float | None:
    """The nearest-rank q-quantile, exactly: the ``max(ceil(q*n), 1)``-th smallest of the
    ``n`` values, NaN left out and ``-0.0`` read as ``0.0`` (``presorted``: ``values`` are
    already so, sorted)."""
    ordered = values if presorted else sorted(v + 0.0 for v in values if v == v)
    if not ordered:
        return None
    return ordered[max(math.ceil(q * len(ordered)), 1) - 1]


def assert_rows_close(view: FeatureView, got: list[Row], want: list[Row]) -> None:
    """``got == want``, except that approx_percentile values may be off by the documented
    relative error (flows/engine/aggregations.py, ``QUANTILE_RELATIVE_ERROR``: exact up to
    ``EXACT_QUANTILE_LIMIT`` values in the window, then within ``|exact| / 128``)."""
    assert len(got) == len(want), (len(got), len(want))
    approx = [f.agg is Aggregation.APPROX_PERCENTILE for f in view.features]
    for g, w in zip(got, want, strict=True):
        assert g._replace(values=()) == w._replace(values=()), (g, w)
        for name, is_approx, a, b in zip(
            (f.name for f in view.features), approx, g.values, w.values, strict=True
        ):
            if not is_approx or a is None or b is None or b == 0.0 or math.isinf(b):
                assert a == b, (name, g, w)
            else:
                assert abs(a - b) <= abs(b) * QUANTILE_RELATIVE_ERROR, (name, a, b, g, w)


# Hand-written stand-ins for a view's expressions (never the engine's compiled code): ``columns``
# maps an event's input fields by name to its computed columns; ``where`` maps a feature name to
# its filter over fields and columns (None counts as false).
Columns = Callable[[Mapping[str, Any]], Mapping[str, Any]]
Where = Mapping[str, Callable[[Mapping[str, Any]], Any]]


@dataclass(frozen=True)
class Expressions:
    columns: Columns = lambda record: {}
    where: Where = field(default_factory=dict)


def _record(view: FeatureView, event: Event, expressions: Expressions) -> dict[str, Any]:
    record = dict(zip(view.input_fields, event.fields, strict=True))
    record.update(expressions.columns(record))
    return record


def _population_variance(values: list[Any]) -> float | None:
    if not values:
        return None
    exact = [Fraction(v) for v in values]
    mean = sum(exact) / len(exact)
    return float(sum((x - mean) ** 2 for x in exact) / len(exact))


def feature_values(
    view: FeatureView,
    events: list[Event],
    as_of: int,
    expressions: Expressions | None = None,
) -> tuple[Any, ...]:
    """Every feature of ``view`` as of ``as_of`` over ``events``, by brute force."""
    expressions = expressions or Expressions()
    out: list[Any] = []
    for feature in view.features:
        if feature.window_seconds is None:
            chosen = [e for e in events if e.t <= as_of]
        else:
            assert feature.hop_seconds is not None
            w, h = feature.window_seconds * 1000, feature.hop_seconds * 1000
            start = ((as_of - w) // h) * h
            chosen = [e for e in events if start <= e.t <= as_of]
        records = [_record(view, e, expressions) for e in chosen]
        where = expressions.where.get(feature.name)
        if where is not None:
            kept = [(e, r) for e, r in zip(chosen, records, strict=True) if where(r) is True]
            chosen = [e for e, _ in kept]
            records = [r for _, r in kept]
        if feature.field is not None:  # aggregations skip null inputs
            kept = [(e, r) for e, r in zip(chosen, records, strict=True)
                    if r[feature.field] is not None]  # fmt: skip
            chosen = [e for e, _ in kept]
            records = [r for _, r in kept]
            values = [r[feature.field] for r in records]
            stamped = sorted(
                ((e.t, e.offset, v) for e, v in zip(chosen, values, strict=True)),
                reverse=True,
            )
        is_float = feature.field is not None and view.field_type(feature.field) == "float64"
        agg = feature.agg
        if agg is Aggregation.COUNT:
            out.append(len(chosen))
        elif agg is Aggregation.SUM:
            out.append(math.fsum(values) if is_float else sum(values))
        elif agg is Aggregation.MEAN:
            total = math.fsum(values) if is_float else sum(values)
            out.append(total / len(values) if values else None)
        elif agg is Aggregation.MIN:
            out.append(min(values) if values else None)
        elif agg is Aggregation.MAX:
            out.append(max(values) if values else None)
        elif agg is Aggregation.LAST:
            out.append(stamped[0][2] if stamped else None)
        elif agg is Aggregation.FIRST:
            out.append(stamped[-1][2] if stamped else None)
        elif agg is Aggregation.LAST_K:
            assert feature.k is not None
            out.append([v for _, _, v in stamped[: feature.k]])
        elif agg is Aggregation.TOP_K:
            assert feature.k is not None
            ranked = sorted(Counter(values).items(), key=lambda vc: (-vc[1], vc[0]))
            out.append(ranked[: feature.k])
        elif agg is Aggregation.VARIANCE:
            out.append(_population_variance(values))
        elif agg is Aggregation.STDDEV:
            variance = _population_variance(values)
            out.append(None if variance is None else math.sqrt(variance))
        elif agg is Aggregation.DISTINCT_COUNT:
            out.append(len(set(values)))
        else:
            assert feature.quantile is not None
            out.append(exact_percentile([float(v) for v in values], feature.quantile))
    return tuple(out)


@dataclass
class _Entity:
    max_t: int | None = None
    wall: int = 0
    watermark: float = -math.inf
    accepted: list[Event] = field(default_factory=list)
    emitted: set[int] = field(default_factory=set)


class Reference:
    """Feeds events per entity and returns the rows DESIGN.md prescribes (None for late events)."""

    def __init__(self, view: FeatureView, expressions: Expressions | None = None) -> None:
        self.view = view
        self.expressions = expressions
        self.lateness = view.allowed_lateness_seconds * 1000
        self.windows = sorted(
            {
                (f.window_seconds * 1000, f.hop_seconds * 1000)
                for f in view.features
                if f.window_seconds is not None and f.hop_seconds is not None
            }
        )
        self.entities: dict[str, _Entity] = {}
        self.late: list[tuple[str, int]] = []
        self._seq = 0

    def _boundaries(self, events: list[Event]) -> set[int]:
        """The expiry boundaries of ``events``: ``B = tile_start + h + W`` of each windowed
        feature's tile holding one. A tile of a feature holds the events that pass its filter
        (``where``, and a non-null input)."""
        boundaries: set[int] = set()
        expressions = self.expressions or Expressions()
        for feature in self.view.features:
            if feature.window_seconds is None or feature.hop_seconds is None:
                continue
            w, h = feature.window_seconds * 1000, feature.hop_seconds * 1000
            where = expressions.where.get(feature.name)
            for e in events:
                record = _record(self.view, e, expressions)
                if where is not None and where(record) is not True:
                    continue
                if feature.field is not None and record[feature.field] is None:
                    continue
                boundaries.add((e.t // h + 1) * h + w)
        return boundaries

    def _valid_until(self, entity: _Entity, as_of: int) -> int:
        """When the value as of ``as_of`` next changes with no new event: the first boundary
        after ``as_of`` of the events up to ``as_of`` (-1: never)."""
        later = [b for b in self._boundaries([e for e in entity.accepted if e.t <= as_of])
                 if b > as_of]  # fmt: skip
        return min(later, default=-1)

    def _due(self, name: str, entity: _Entity) -> list[Row]:
        boundaries = self._boundaries(entity.accepted) - entity.emitted
        rows = []
        for b in sorted(x for x in boundaries if x < entity.watermark):
            entity.emitted.add(b)
            before = [e for e in entity.accepted if e.t <= b]
            last = max(before, key=lambda e: e.offset)
            values = feature_values(self.view, entity.accepted, b, self.expressions)
            valid = self._valid_until(entity, b)
            rows.append(Row(self.view.name, name, b, values, last.partition, last.offset, valid))
        return rows

    def event(
        self,
        name: str,
        t: int,
        fields: tuple[Any, ...],
        partition: int,
        offset: int,
        wall: int,
    ) -> list[Row] | None:
        entity = self.entities.setdefault(name, _Entity())
        if t < entity.watermark:
            self.late.append((name, t))
            return None
        if entity.max_t is None or t > entity.max_t:
            entity.max_t = t
            entity.wall = wall
            entity.watermark = max(entity.watermark, t - self.lateness)
        rows = self._due(name, entity)
        self._seq += 1
        entity.accepted.append(Event(t, fields, partition, offset, self._seq))
        values = feature_values(self.view, entity.accepted, entity.max_t, self.expressions)
        valid = self._valid_until(entity, entity.max_t)
        rows.append(Row(self.view.name, name, entity.max_t, values, partition, offset, valid))
        return rows

    def advance(self, name: str, now: int) -> list[Row]:
        entity = self.entities.setdefault(name, _Entity())
        if entity.max_t is None:
            return []
        entity.watermark = max(entity.watermark, entity.max_t - self.lateness + now - entity.wall)
        return self._due(name, entity)

    def flush(self, name: str, until: int) -> list[Row]:
        entity = self.entities.setdefault(name, _Entity())
        if entity.max_t is None:
            return []
        entity.watermark = max(entity.watermark, until + 1)
        return self._due(name, entity)

    def safe_advance_limit(self, name: str, next_t: int | None) -> int | None:
        """The largest ``now`` for which advance keeps an event at ``next_t`` on time."""
        entity = self.entities.get(name)
        if entity is None or entity.max_t is None:
            return None
        if next_t is None:
            return None
        # max_t - L + now - wall <= next_t
        return next_t - entity.max_t + self.lateness + entity.wall
