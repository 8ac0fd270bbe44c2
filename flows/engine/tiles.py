"""Tiles: a view's per-entity window state, its layout and the generic operations on it.

Implements the state side of the window semantics: a windowed feature's value as of ``T``
aggregates the entity's accepted events in ``[floor_h(T - W), T]``, over tiles of the hop ``h``
aligned to the Unix epoch (README, "Defining features"). The features
of a view that share ``(W, h)`` form a :class:`WindowGroup`. One entity's window state is one flat
list ``d`` (``EntityState.d``) in which each group owns the slots ``o, o+1, ...`` from its offset
``o``: ``[tiles, sum scale, total count, total sum_1, ..., column states..., open tile...]``.
A tile is ``[k, count, sum_1, ..., column_1, ...]``, the events with ``k*h <= t < (k+1)*h``.
The newest tile is normally *open*: its slots sit in ``d`` itself (``d[kix : kix + tlen]``, with
``d[kix] = k``, or None when no tile is open; its count and sums slots hold the totals' values
when it opened) and ``tiles`` holds the older ones, oldest first.
An event into the open tile, by far the common case, then touches no tile list at all: with
100,000 entities the engine is bound by memory latency (measured: the same code runs 2x faster
over 1,000 entities), so every object not touched counts. The generic code below works on
*sealed* groups (``seal`` appends the open tile to ``tiles``; ``unseal`` opens the newest tile
again); the compiled hot path (:mod:`freshet.engine.hotpath`) handles the open tile inline. Features
without a window live in :class:`LifetimeFeatures`.

Per-event cost does not grow with ``W/h``: counts and sums are running totals (a tile is
subtracted when it expires), min/max keep a monotonic queue of tile extremes, exact distinct
counts a value -> number-of-tiles map, and sketches (HLL beyond the exact limit, quantiles) a
cached merge of the complete tiles. The generic methods here handle every case;
:mod:`freshet.engine.hotpath` compiles the common cases of a view into straight-line code that
calls back into them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from freshet.dsl.definitions import Aggregation, Feature, FeatureView
from freshet.engine.aggregations import (
    EXACT_DISTINCT_LIMIT,
    STAMPED,
    Aggregator,
    Distinct,
    Quantiles,
    aggregator_for,
    exact_float,
    partial_aggregator,
)

__all__ = [
    "COARSE",
    "FINE",
    "FINE_SCALE",
    "INV_TWO_64",
    "NEVER",
    "OUT_COLUMN",
    "OUT_COUNT",
    "OUT_MEAN",
    "OUT_SUM",
    "TWO_64",
    "Column",
    "DistinctColumn",
    "LifetimeFeatures",
    "MaxColumn",
    "MinColumn",
    "Pending",
    "QuantileColumn",
    "SketchColumn",
    "Tile",
    "WindowGroup",
    "from_scaled",
    "to_coarse",
]

NEVER = -(1 << 62)  # "minus infinity" for event times and watermarks, still an int
# A tile: [k, count, sum_1, ..., column_1, ...], updated in place.
Tile = list[Any]
# A pending event: (event time, fields, partition, offset).
Pending = tuple[int, tuple[Any, ...], int, int]


# --- window columns that are not running totals -------------------------------------------
#
# A column owns one slot in every tile (``tile[self.tcol]``) and two slots of the entity's flat
# state: ``d[self.gcol]``, its state, and ``d[self.gcol + 1]``, its window value as the hot path
# reads it (max/min: the queue's head; exact distinct: the count; kept by ``recache`` after
# every generic change). ``d[self.tix]`` is its group's tiles (see the module docstring).


class Column:
    """A window column kept per tile (``tile[tcol]``) and per entity state (``d[gcol]``).

    ``stamped`` columns take ``(event time, offset, value)`` rather than the value (first,
    last and last_k: the order of events decides their values)."""

    __slots__ = ("field", "gcol", "tcol", "tix")
    stamped = False

    def __init__(self, field: int, tcol: int, gcol: int, tix: int) -> None:
        self.field = field  # index into the event's fields tuple
        self.tcol = tcol
        self.gcol = gcol
        self.tix = tix

    def new_state(self) -> Any:
        raise NotImplementedError

    def new_cache(self) -> Any:
        return None

    def recache(self, d: list[Any]) -> None:
        """Update ``d[gcol + 1]`` from the column's state."""

    def new_tile(self, d: list[Any]) -> Any:
        raise NotImplementedError

    def add(self, d: list[Any], tile: Tile, v: Any) -> None:
        """Fold ``v`` into ``tile`` (``tile[tcol]``)."""
        raise NotImplementedError

    def refresh(self, d: list[Any]) -> None:
        """Bring the group-level state up to date after :meth:`add` (the slow, general path)."""

    def drop(self, d: list[Any], dropped: list[Tile]) -> None:
        """``dropped`` (the oldest tiles) have left the window for good."""
        raise NotImplementedError

    def value(
        self, d: list[Any], c: int, shadow: int, extra: Sequence[Any] | None, arg: Any
    ) -> Any:
        """The window value over tiles ``k >= c`` (the first ``shadow`` tiles are older than
        ``c``) plus the ``extra`` pending values."""
        raise NotImplementedError


class MaxColumn(Column):
    """Window max: a monotonic queue of ``(k, tile max)`` with strictly decreasing values.

    The common case (a value into the newest tile: pop the dominated tail, append) is inlined
    by :mod:`freshet.engine.hotpath`; :meth:`add` + :meth:`refresh` rebuild the queue (rare)."""

    __slots__ = ()

    def new_state(self) -> list[tuple[int, Any]]:
        return []

    def new_tile(self, d: list[Any]) -> Any:
        return None

    def add(self, d: list[Any], tile: Tile, v: Any) -> None:
        current = tile[self.tcol]
        if current is None or v > current:
            tile[self.tcol] = v

    def refresh(self, d: list[Any]) -> None:
        col = self.tcol
        queue: list[tuple[int, Any]] = []
        best = None
        for tile in reversed(d[self.tix]):
            v = tile[col]
            if v is not None and (best is None or v > best):
                best = v
                queue.append((tile[0], v))
        queue.reverse()
        d[self.gcol] = queue
        self.recache(d)

    def drop(self, d: list[Any], dropped: list[Tile]) -> None:
        queue = d[self.gcol]
        last = dropped[-1][0]
        i = 0
        while i < len(queue) and queue[i][0] <= last:
            i += 1
        if i:
            del queue[:i]
        self.recache(d)

    def recache(self, d: list[Any]) -> None:
        queue = d[self.gcol]
        d[self.gcol + 1] = queue[0][1] if queue else None

    def value(
        self, d: list[Any], c: int, shadow: int, extra: Sequence[Any] | None, arg: Any
    ) -> Any:
        best = None
        for k, v in d[self.gcol]:
            if k >= c:
                best = v
                break
        if extra:
            for v in extra:
                if best is None or v > best:
                    best = v
        return best


class MinColumn(MaxColumn):
    """Window min: a monotonic queue of ``(k, tile min)`` with strictly increasing values."""

    __slots__ = ()

    def add(self, d: list[Any], tile: Tile, v: Any) -> None:
        current = tile[self.tcol]
        if current is None or v < current:
            tile[self.tcol] = v

    def refresh(self, d: list[Any]) -> None:
        col = self.tcol
        queue: list[tuple[int, Any]] = []
        best = None
        for tile in reversed(d[self.tix]):
            v = tile[col]
            if v is not None and (best is None or v < best):
                best = v
                queue.append((tile[0], v))
        queue.reverse()
        d[self.gcol] = queue
        self.recache(d)

    def value(
        self, d: list[Any], c: int, shadow: int, extra: Sequence[Any] | None, arg: Any
    ) -> Any:
        best = None
        for k, v in d[self.gcol]:
            if k >= c:
                best = v
                break
        if extra:
            for v in extra:
                if best is None or v < best:
                    best = v
        return best


class SketchColumn(Column):
    """A sketch per tile and a cached merge of the complete tiles (all but the newest).

    Group state slot: ``None`` (no cache) or ``[c, k_newest, merged partial]``, the merge of
    the tiles ``c <= k < k_newest``. A new tile folds the previous newest tile into the cache
    (one merge); expiry and out-of-order changes to complete tiles rebuild it.
    """

    __slots__ = ("agg",)

    def __init__(self, field: int, tcol: int, gcol: int, tix: int, agg: Aggregator[Any]) -> None:
        super().__init__(field, tcol, gcol, tix)
        self.agg = agg

    def new_state(self) -> Any:
        return None

    def new_tile(self, d: list[Any]) -> Any:
        return self.agg.empty()

    def add(self, d: list[Any], tile: Tile, v: Any) -> None:
        tile[self.tcol].add(v)  # the partial is updated in place

    def refresh(self, d: list[Any]) -> None:
        d[self.gcol] = None  # a complete tile may have changed: rebuild the cache when read

    def drop(self, d: list[Any], dropped: list[Tile]) -> None:
        d[self.gcol] = None

    def complete(self, d: list[Any], c: int) -> Any:
        """The merge of every tile ``k >= c`` but the newest, cached (the caller must not
        mutate it); ``d[self.tix]`` must not be empty."""
        return self.complete_before(d, c, d[self.tix][-1][0])

    def complete_before(self, d: list[Any], c: int, newest: int) -> Any:
        """The merge of the tiles ``c <= k < newest`` held in ``d[self.tix]`` (at least one),
        cached as ``[first k merged, newest, partial]``: sealed, ``newest`` is the newest
        tile's ``k``; with a tile open (:meth:`PartialColumn.open_value`), the open tile's."""
        tiles = d[self.tix]
        col = self.tcol
        agg = self.agg
        for tile in tiles:  # key the cache by the first tile it holds, not by c itself
            if tile[0] >= c:
                c = tile[0]
                break
        cache = d[self.gcol]
        if cache is None or cache[0] != c or cache[1] > newest:
            partial = agg.empty()
            for tile in tiles:
                if tile[0] >= newest:
                    break
                if tile[0] >= c:
                    partial = agg.merge(partial, tile[col])
            cache = d[self.gcol] = [c, newest, partial]
        elif cache[1] < newest:
            # Tiles completed since the cache was built: fold them in.
            for tile in tiles:
                if tile[0] >= newest:
                    break
                if tile[0] >= cache[1]:
                    cache[2] = agg.merge(cache[2], tile[col])
            cache[1] = newest
        return cache[2]

    def merged(self, d: list[Any], c: int) -> Any:
        """A fresh partial: the merge of every tile ``k >= c`` (the caller may mutate it)."""
        result = self.complete(d, c).copy()
        newest = d[self.tix][-1]
        if newest[0] >= c:
            result = self.agg.merge(result, newest[self.tcol])
        return result

    def value(
        self, d: list[Any], c: int, shadow: int, extra: Sequence[Any] | None, arg: Any
    ) -> Any:
        agg = self.agg
        partial = self.merged(d, c) if d[self.tix] else agg.empty()
        if extra:
            for v in extra:
                partial = agg.add(partial, 0, v)
        return arg(partial)


class PartialColumn(SketchColumn):
    """A :class:`SketchColumn` of partial objects (variance/stddev moments, first/last/last_k
    events, top_k counts: :mod:`freshet.engine.aggregations`); ``arg`` reads the value."""

    __slots__ = ()

    def open_value(self, d: list[Any], kix: int, read: Callable[[Any], Any]) -> Any:
        """The value over every tile held, read as the hot path leaves the group (its newest
        tile open at ``d[kix:]``): the cached merge of the sealed tiles combined with the open
        tile's partial, without sealing or copying the cache."""
        k_open = d[kix]
        tiles = d[self.tix]
        if k_open is None:  # no open tile: the group is sealed as it is
            return read(self.merged(d, NEVER) if tiles else self.agg.empty())
        newest = d[kix + self.tcol]
        if not tiles:
            return read(newest)
        return read(self.complete_before(d, NEVER, k_open).combined(newest))


class StampedColumn(PartialColumn):
    """A :class:`PartialColumn` fed ``(event time, offset, value)`` (first, last, last_k)."""

    __slots__ = ()
    stamped = True


class QuantileColumn(SketchColumn):
    """A :class:`SketchColumn` of :class:`Quantiles` read without a merged copy per row: ``arg``
    gets the cached merge of the complete tiles, the newest tile and the pending values (see
    :meth:`Quantiles.quantile_with`; the same value as merging them, and much cheaper once the
    window is a sketch: a binary search over the cache's running counts)."""

    __slots__ = ()

    def value(
        self, d: list[Any], c: int, shadow: int, extra: Sequence[Any] | None, arg: Any
    ) -> Any:
        tiles = d[self.tix]
        if not tiles:
            return arg(Quantiles(), None, extra or ())
        newest = tiles[-1]
        return arg(self.complete(d, c), newest[self.tcol] if newest[0] >= c else None, extra or ())


class DistinctColumn(SketchColumn):
    """Exact distinct count while the window holds at most ``EXACT_DISTINCT_LIMIT`` values.

    Exact mode: each tile holds a set, the group state a dict value -> number of tiles holding
    it, so the count is ``len(dict)`` and expiry costs O(values of the expired tile). Beyond the
    limit the column switches to sketch mode (tiles hold :class:`Distinct` partials merged as in
    :class:`SketchColumn`) until the window is empty again.
    """

    __slots__ = ()

    def new_state(self) -> Any:
        return {}

    def new_tile(self, d: list[Any]) -> Any:
        return set() if type(d[self.gcol]) is dict else Distinct()

    def add(self, d: list[Any], tile: Tile, v: Any) -> None:
        counts = d[self.gcol]
        if type(counts) is dict:
            values = tile[self.tcol]  # the tile's set, updated in place
            if v not in values:
                values.add(v)
                counts[v] = counts.get(v, 0) + 1
        else:
            tile[self.tcol].add(v)

    def new_cache(self) -> Any:
        return 0

    def recache(self, d: list[Any]) -> None:
        counts = d[self.gcol]
        d[self.gcol + 1] = len(counts) if type(counts) is dict else None

    def refresh(self, d: list[Any]) -> None:
        counts = d[self.gcol]
        if type(counts) is dict:
            if len(counts) > EXACT_DISTINCT_LIMIT:
                self.to_sketch(d)
        else:
            d[self.gcol] = None
        self.recache(d)

    def to_sketch(self, d: list[Any]) -> None:
        """Switch the window to sketch mode (its exact count passed the limit)."""
        col = self.tcol
        for tile in d[self.tix]:
            tile[col] = Distinct(tile[col])
        d[self.gcol] = None
        self.recache(d)

    def drop(self, d: list[Any], dropped: list[Tile]) -> None:
        counts = d[self.gcol]
        if type(counts) is dict:
            col = self.tcol
            for tile in dropped:
                for v in tile[col]:
                    n = counts[v] - 1
                    if n:
                        counts[v] = n
                    else:
                        del counts[v]
        elif d[self.tix]:
            d[self.gcol] = None
        else:
            d[self.gcol] = {}  # the window is empty: back to exact mode
        self.recache(d)

    def value(
        self, d: list[Any], c: int, shadow: int, extra: Sequence[Any] | None, arg: Any
    ) -> Any:
        counts = d[self.gcol]
        if type(counts) is not dict:
            partial = self.merged(d, c)
            if extra:
                for v in extra:
                    partial.add(v)
            return partial.estimate()
        n = len(counts)
        if extra and not shadow:
            new = {v for v in extra if v not in counts}
            if n + len(new) > EXACT_DISTINCT_LIMIT:  # same value as a sketch of the window
                return Distinct([*counts, *new]).estimate()
            return n + len(new)
        if shadow:
            # Values held only by tiles older than c do not count.
            col = self.tcol
            seen: dict[Any, int] = {}
            for tile in d[self.tix][:shadow]:
                for v in tile[col]:
                    seen[v] = seen.get(v, 0) + 1
            gone = {v for v, m in seen.items() if counts[v] == m}
            n -= len(gone)
            if extra:
                new = {v for v in extra if v not in counts or v in gone}
                if n + len(new) > EXACT_DISTINCT_LIMIT:
                    kept = [v for v in counts if v not in gone]
                    return Distinct([*kept, *new]).estimate()
                n += len(new)
        return n


# --- window groups and lifetime features ------------------------------------------------------
#
# Float sums are exact integers: ``value * 2**64`` while every value added is a multiple of
# 2**-64 (any double >= 2**-12 in magnitude is), else ``value * 2**1074`` (every double is a
# multiple of 2**-1074). The scale is per group (``d[o + 1]``) and drops back to 2**64 when the
# window empties. Both give sums that do not depend on the order of additions; the small scale
# keeps the ints short (fast to add and convert, small to pickle).

COARSE = 64
FINE = 1074
TWO_64 = 18446744073709551616.0
INV_TWO_64 = 1.0 / TWO_64
_FINE_SHIFT = FINE - COARSE
FINE_SCALE = 1 << FINE

OUT_COUNT, OUT_SUM, OUT_MEAN, OUT_COLUMN = range(4)


def to_coarse(value: float) -> int | None:
    """``value * 2**64`` if that is an integer (exactly), else None."""
    scaled = value * TWO_64
    try:
        n = int(scaled)
    except (OverflowError, ValueError):  # inf, nan
        return None
    return n if n == scaled else None


def _to_fine(value: float) -> int:
    try:
        return exact_float(value)
    except (OverflowError, ValueError):
        raise ValueError(
            f"cannot sum {value!r}: sums need finite numbers (the decoder should dead-letter "
            "events with NaN or infinite values)"
        ) from None


def from_scaled(value: int, scale: int) -> float:
    if scale == COARSE:
        return value * INV_TWO_64  # float(value) rounds once; the power of two is exact
    return value / FINE_SCALE


class WindowGroup:
    """The features sharing one ``(W, h)``: their tiles, running totals and columns.

    Its slots in an entity's flat state ``d``, from ``o = self.o``: ``d[o]`` the sealed tiles,
    oldest first, each a :data:`Tile` ``[k, count, sum_1, ..., column_1, ...]``; ``d[o + 1]`` the
    sum scale; ``d[o + 2]`` the count and ``d[o + 2 + j]`` sum ``j`` over all tiles held, open or
    not (tile slot ``i`` is totalled at ``d[o + 1 + i]``); two slots per column; then the open
    tile, ``d[kix + i]`` being its slot ``i`` (``d[kix]`` None: no tile open). Every open tile is
    newer than every sealed one.
    """

    __slots__ = (
        "closed", "columns", "float_sums", "h", "int_sums", "kix", "n", "nsums", "o", "outputs",
        "pred", "size", "tlen", "w",
    )  # fmt: skip

    def __init__(
        self,
        window_ms: int,
        hop_ms: int,
        features: list[tuple[int, Feature]],
        view: FeatureView,
        offset: int = 0,
        pred: int | None = None,
    ) -> None:
        self.w = window_ms
        self.h = hop_ms
        self.n = window_ms // hop_ms
        self.o = offset
        # The engine field holding this group's filter (its features' ``where`` and non-null
        # inputs): the group folds only events for which it is true. None: every event.
        self.pred = pred
        inputs = view.engine_fields
        sum_fields: list[int] = []
        column_keys: list[tuple[Any, ...]] = []
        for _, feature in features:
            assert feature.agg is Aggregation.COUNT or feature.field is not None
            if feature.agg in (Aggregation.SUM, Aggregation.MEAN):
                index = inputs.index(feature.field)
                if index not in sum_fields:
                    sum_fields.append(index)
            elif feature.agg is not Aggregation.COUNT:
                key = _column_key(feature, inputs.index(feature.field))
                if key not in column_keys:
                    column_keys.append(key)
        self.nsums = len(sum_fields)
        # (tile slot, field index) of the sums, split by type.
        is_float = [view.field_type(inputs[index]) == "float64" for index in sum_fields]
        self.int_sums = tuple((2 + i, f) for i, f in enumerate(sum_fields) if not is_float[i])
        self.float_sums = tuple((2 + i, f) for i, f in enumerate(sum_fields) if is_float[i])
        first_column = 2 + len(sum_fields)
        first_gcol = offset + 3 + len(sum_fields)
        columns: list[Column] = []
        for j, (agg, field, k) in enumerate(column_keys):
            tcol, gcol = first_column + j, first_gcol + 2 * j
            if agg in _PARTIAL_AGGS:
                cls = StampedColumn if agg in _STAMPED_COLUMNS else PartialColumn
                float_values = view.field_type(inputs[field]) == "float64"
                partial = partial_aggregator(agg, k=k, float_values=float_values)
                columns.append(cls(field, tcol, gcol, offset, partial))
            elif agg is Aggregation.MAX:
                columns.append(MaxColumn(field, tcol, gcol, offset))
            elif agg is Aggregation.MIN:
                columns.append(MinColumn(field, tcol, gcol, offset))
            elif agg is Aggregation.DISTINCT_COUNT:
                columns.append(DistinctColumn(field, tcol, gcol, offset, aggregator_for(agg)))
            else:  # approx_percentile: Quantiles per tile; the quantile is chosen per feature
                columns.append(QuantileColumn(field, tcol, gcol, offset, _QUANTILES))
        self.columns = tuple(columns)
        self.kix = first_gcol + 2 * len(columns)
        self.tlen = 2 + len(sum_fields) + len(columns)
        self.closed = (None,) * self.tlen
        self.size = self.kix - offset + self.tlen
        outputs: list[tuple[int, int, int, Any]] = []
        for position, feature in features:
            if feature.agg is Aggregation.COUNT:
                outputs.append((position, OUT_COUNT, 0, None))
            elif feature.agg in (Aggregation.SUM, Aggregation.MEAN):
                kind = OUT_SUM if feature.agg is Aggregation.SUM else OUT_MEAN
                index = sum_fields.index(inputs.index(feature.field))
                outputs.append((position, kind, 2 + index, is_float[index]))
            else:
                key = _column_key(feature, inputs.index(feature.field))
                arg: Any = None
                if feature.agg is Aggregation.APPROX_PERCENTILE:
                    arg = _quantile_of(feature.quantile)
                elif feature.agg in _PARTIAL_AGGS:
                    arg = partial_aggregator(feature.agg, k=feature.k, float_values=False).read
                outputs.append((position, OUT_COLUMN, column_keys.index(key), arg))
        self.outputs = tuple(outputs)

    def new_state(self) -> list[Any]:
        """This group's slots of a new entity state (``d[o : o + size]``)."""
        columns = [slot for c in self.columns for slot in (c.new_state(), c.new_cache())]
        state = [[], COARSE, 0, *[0] * self.nsums, *columns]
        return state + list(self.closed)

    def seal(self, d: list[Any]) -> None:
        """Move the open tile, if any, to the end of ``tiles`` (before any generic operation).

        An open tile holds, in place of its count and sums, the totals' values when it opened
        (so an event into it only adds to the totals); sealing turns them into its own."""
        kix = self.kix
        if d[kix] is not None:
            tile = d[kix : kix + self.tlen]
            o = self.o
            for i in range(1, 2 + self.nsums):
                tile[i] = d[o + 1 + i] - tile[i]
            d[o].append(tile)
            d[kix : kix + self.tlen] = self.closed

    def unseal(self, d: list[Any]) -> None:
        """Open the newest tile again (``seal``'s inverse; the hot path's fast case)."""
        tiles = d[self.o]
        if tiles and d[self.kix] is None:
            tile = tiles.pop()
            o = self.o
            for i in range(1, 2 + self.nsums):
                tile[i] = d[o + 1 + i] - tile[i]
            d[self.kix : self.kix + self.tlen] = tile

    def is_empty(self, d: list[Any]) -> bool:
        return not d[self.o] and d[self.kix] is None

    def column_value(self, d: list[Any], j: int, arg: Any) -> Any:
        """Column ``j``'s value over every tile held (no pending events, no shadow)."""
        self.seal(d)
        value = self.columns[j].value(d, NEVER, 0, None, arg)
        self.unseal(d)
        return value

    def to_sketch(self, d: list[Any], j: int) -> None:
        """Switch distinct column ``j`` to sketch mode (its exact count passed the limit)."""
        self.seal(d)
        column = self.columns[j]
        assert isinstance(column, DistinctColumn)
        column.to_sketch(d)
        self.unseal(d)

    def boundary(self, k: int) -> int:
        """The expiry boundary of tile ``k``: ``tile_start + h + W``."""
        return (k + 1) * self.h + self.w

    def fold(self, d: list[Any], t: int, fields: tuple[Any, ...], offset: int = -1) -> int | None:
        """Add one event to its tile, any tile (the general, slow path:
        :mod:`freshet.engine.hotpath` inlines the open-tile cases); returns the group's new oldest
        boundary if it changed. The caller checks the group's filter."""
        # Convert the sums first: switching to the fine scale rewrites every tile.
        floats = [self.scaled(d, fields[index]) for _, index in self.float_sums]
        self.seal(d)
        try:
            return self._fold(d, t, fields, floats, offset)
        finally:
            self.unseal(d)

    def _fold(
        self, d: list[Any], t: int, fields: tuple[Any, ...], floats: list[int], offset: int
    ) -> int | None:
        o = self.o
        k = t // self.h
        tiles = d[o]
        i = len(tiles) - 1
        while i >= 0 and tiles[i][0] > k:
            i -= 1
        result = None
        if i >= 0 and tiles[i][0] == k:
            tile = tiles[i]
        else:
            tile = [k, 0, *[0] * self.nsums, *(c.new_tile(d) for c in self.columns)]
            i += 1
            tiles.insert(i, tile)
            if i == 0:
                result = (k + 1) * self.h + self.w
        tile[1] += 1
        d[o + 2] += 1
        for j, index in self.int_sums:
            v = fields[index]
            tile[j] += v
            d[o + 1 + j] += v
        for (j, _), n in zip(self.float_sums, floats, strict=True):
            tile[j] += n
            d[o + 1 + j] += n
        for column in self.columns:
            v = fields[column.field]
            column.add(d, tile, (t, offset, v) if column.stamped else v)
        for column in self.columns:
            column.refresh(d)
        return result

    def scaled(self, d: list[Any], value: float) -> int:
        """``value`` at the group's sum scale, switching the group to the fine scale if needed."""
        o = self.o
        if d[o + 1] == COARSE:
            n = to_coarse(value)
            if n is not None:
                return n
            n = _to_fine(value)  # raises on non-finite values before any state changes
            slots = [i for i, _ in self.float_sums]
            was_open = d[self.kix] is not None
            self.seal(d)
            for tile in d[o]:
                for i in slots:
                    tile[i] <<= _FINE_SHIFT
            for i in slots:
                d[o + 1 + i] <<= _FINE_SHIFT
            d[o + 1] = FINE
            if was_open:
                self.unseal(d)
            return n
        return _to_fine(value)

    def values(
        self,
        d: list[Any],
        as_of: int,
        pending: list[Pending] | None,
        out: list[Any],
    ) -> None:
        """Write this group's feature values as of ``as_of`` into ``out`` (the general path; the
        group must be sealed).

        ``pending`` (event rows only) are events newer than every tile's contents, all inside
        the window as of ``as_of``; tiles older than the window (``shadow``) exist only between
        their boundary passing ``as_of`` and the watermark passing it.
        """
        o = self.o
        c = as_of // self.h - self.n
        if pending:
            # Bring the group to a scale that holds the pending values before reading totals.
            for _, index in self.float_sums:
                for event in pending:
                    self.scaled(d, event[1][index])
        tiles = d[o]
        totals = d[o + 2 : o + 3 + self.nsums]  # [count, sum_1, ...]
        shadow = 0
        if tiles and tiles[0][0] < c:
            for tile in tiles:
                if tile[0] >= c:
                    break
                shadow += 1
                totals[0] -= tile[1]
                for i in range(2, 2 + self.nsums):
                    totals[i - 1] -= tile[i]
        if pending:
            totals[0] += len(pending)
            for i, index in self.int_sums:
                for event in pending:
                    totals[i - 1] += event[1][index]
            for i, index in self.float_sums:
                for event in pending:
                    totals[i - 1] += self.scaled(d, event[1][index])
        count = totals[0]
        scale = d[o + 1]
        for position, kind, index, arg in self.outputs:
            if kind == OUT_COUNT:
                out[position] = count
            elif kind == OUT_COLUMN:
                column = self.columns[index]
                f = column.field
                extra = (
                    None
                    if not pending
                    else [(e[0], e[3], e[1][f]) for e in pending]
                    if column.stamped
                    else [e[1][f] for e in pending]
                )
                out[position] = column.value(d, c, shadow, extra, arg)
            else:
                total = from_scaled(totals[index - 1], scale) if arg else totals[index - 1]
                if kind == OUT_SUM:
                    out[position] = total
                else:
                    out[position] = total / count if count else None


# Aggregations kept as partial objects per tile, and those of them fed (t, offset, value).
_PARTIAL_AGGS = frozenset(
    {
        Aggregation.VARIANCE,
        Aggregation.STDDEV,
        Aggregation.FIRST,
        Aggregation.LAST,
        Aggregation.LAST_K,
        Aggregation.TOP_K,
    }
)
_STAMPED_COLUMNS = frozenset({Aggregation.FIRST, Aggregation.LAST, Aggregation.LAST_K})


def _column_key(feature: Feature, field: int) -> tuple[Any, ...]:
    """Features with the same key share one column: variance and stddev of a field share
    their moments; last_k and top_k columns are per k."""
    agg = feature.agg
    if agg is Aggregation.STDDEV:
        agg = Aggregation.VARIANCE
    return (agg, field, feature.k)


def _quantile_of(
    q: float | None,
) -> Callable[[Quantiles, Quantiles | None, Sequence[float]], float | None]:
    assert q is not None
    return lambda complete, newest, extra: complete.quantile_with(q, newest, extra)


class _QuantilesAggregator(Aggregator[Quantiles]):
    """Quantiles partials for window tiles (the quantile is applied per feature by the column)."""

    __slots__ = ()

    def empty(self) -> Quantiles:
        return Quantiles()

    def add(self, p: Quantiles, t: int, v: Any) -> Quantiles:
        p.add(v)
        return p

    def merge(self, p: Quantiles, q: Quantiles) -> Quantiles:
        p.merge(q)
        return p


_QUANTILES = _QuantilesAggregator()


class LifetimeFeatures:
    """Features without a window: one partial each, never expiring.

    ``last`` keeps ``t, offset, value`` and takes the greatest ``(t, offset)``: the newest event,
    the later one in its partition on equal times, whatever order events are folded in.
    """

    __slots__ = ("aggs", "fields", "is_last", "positions", "preds", "slots", "stamped")

    def __init__(
        self,
        features: list[tuple[int, Feature]],
        view: FeatureView,
        offset: int = 0,
        preds: tuple[int | None, ...] | None = None,
    ) -> None:
        inputs = view.engine_fields
        self.positions = tuple(p for p, _ in features)
        self.fields = tuple(-1 if f.field is None else inputs.index(f.field) for _, f in features)
        self.is_last = tuple(f.agg is Aggregation.LAST for _, f in features)
        # Per feature: the engine field of its filter (None: every event), and whether its
        # aggregator takes (t, offset, value).
        self.preds = preds if preds is not None else (None,) * len(features)
        self.stamped = tuple(f.agg in STAMPED for _, f in features)
        self.aggs = tuple(
            aggregator_for(
                f.agg,
                f.quantile,
                float_sum=f.field is not None and view.field_type(f.field) == "float64",
                k=f.k,
            )
            for _, f in features
        )

        # Slots in the entity's flat state, from ``offset``: ``last`` keeps three (event time,
        # offset, value: no tuple to allocate and chase per event), the others one partial.
        widths = [3 if is_last else 1 for is_last in self.is_last]
        self.slots = tuple(offset + sum(widths[:i]) for i in range(len(widths)))

    def new_state(self) -> list[Any]:
        """The lifetime features' slots of a new entity state."""
        state: list[Any] = []
        for agg, is_last in zip(self.aggs, self.is_last, strict=True):
            state += [NEVER, -1, None] if is_last else [agg.empty()]
        return state
