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
from dataclasses import dataclass, field
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


def feature_values(view: FeatureView, events: list[Event], as_of: int) -> tuple[Any, ...]:
    """Every feature of ``view`` as of ``as_of`` over ``events``, by brute force."""
    out: list[Any] = []
    for feature in view.features:
        if feature.window_seconds is None:
            chosen = [e for e in events if e.t <= as_of]
        else:
            assert feature.hop_seconds is not None
            w, h = feature.window_seconds * 1000, feature.hop_seconds * 1000
            start = ((as_of - w) // h) * h
            chosen = [e for e in events if start <= e.t <= as_of]
        if feature.field is not None:
            index = view.input_fields.index(feature.field)
            values = [e.fields[index] for e in chosen]
        is_float = feature.field is not None and view.source.field_types[feature.field] == "float64"
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
            latest = max(chosen, key=lambda e: (e.t, e.offset), default=None)
            out.append(None if latest is None else latest.fields[index])
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

    def __init__(self, view: FeatureView) -> None:
        self.view = view
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

    def _due(self, name: str, entity: _Entity) -> list[Row]:
        boundaries = {
            (e.t // h + 1) * h + w for e in entity.accepted for w, h in self.windows
        } - entity.emitted
        rows = []
        for b in sorted(x for x in boundaries if x < entity.watermark):
            entity.emitted.add(b)
            before = [e for e in entity.accepted if e.t <= b]
            last = max(before, key=lambda e: e.offset)
            values = feature_values(self.view, entity.accepted, b)
            rows.append(Row(self.view.name, name, b, values, last.partition, last.offset))
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
        values = feature_values(self.view, entity.accepted, entity.max_t)
        rows.append(Row(self.view.name, name, entity.max_t, values, partition, offset))
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
