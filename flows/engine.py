"""The tiled sliding-window engine: per-entity state in, rows out. Pure Python, no Bytewax.

Implements ``../shared/DESIGN.md``, section "Window semantics", exactly:

* **Tiles.** Each windowed feature has a window ``W`` and hop ``h`` (``W`` a multiple of ``h``);
  tile ``k`` holds the events with ``k*h <= t < (k+1)*h`` (epoch-aligned). Features sharing
  ``(W, h)`` share tiles. The value as of ``T`` aggregates the events with event time in
  ``[floor_h(T - W), T]``, i.e. tiles ``T//h - W/h .. T//h``.
* **Clock.** Per entity, ``watermark = max event time - L``; only :meth:`ViewEngine.advance`
  moves it further with the wall clock (``+ now - wall time when the max was seen``). An event
  with ``t < watermark`` is late: :meth:`ViewEngine.apply` returns ``None`` and leaves the state
  untouched.
* **Rows.** One row per accepted event (``as_of`` = the entity's max event time, the value as of
  then) and one per expiry boundary ``B = tile_start + h + W`` of a non-empty tile, as of ``B``,
  emitted once the watermark passes ``B`` (``B < watermark``), in increasing ``B``, before the
  event's own row. Boundaries shared by several tiles give one row. ``flush`` emits every
  boundary ``<= until`` (a bounded replay's end).
* **Determinism.** Rows depend only on the entity's on-time event sequence, never on when
  ``advance`` runs (the same rows come out; only their order around event rows may differ).
  Events newer than the watermark wait in a small sorted *pending* list and are folded into
  tiles in event-time order once the watermark reaches them, so a tile only ever holds events
  the remaining expiry rows need; float sums are kept as exact integers (scaled by
  2**1074) so they do not depend on the order of additions. An event row carries the event's
  partition/offset; an expiry row at ``B`` carries those of the last-arrived event with
  ``t <= B`` (the highest offset among them), which orders it after every event row with the
  same ``as_of`` under the ``(as_of, offset)`` tie-break.

Cost per event does not grow with ``W/h``: counts and sums are running totals (tiles are
subtracted when they expire), min/max use a monotonic queue of tile extremes, exact distinct
counts a value -> number-of-tiles map; sketches (HLL beyond the exact limit, KLL) merge the
complete tiles into a cached partial and merge only the open tile per row.

The state of one entity, :class:`EntityState`, is plain lists, tuples, dicts and sets (sketches
in serial form when pickled), so it pickles small into Bytewax recovery snapshots.
"""

from __future__ import annotations

import time
from bisect import insort_right
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

from flows.aggregations import (
    EXACT_DISTINCT_LIMIT,
    Aggregator,
    Distinct,
    Quantiles,
    aggregator_for,
    exact_float,
)
from flows.definitions import Aggregation, Feature, FeatureView
from sinks.rows import Row

__all__ = ["EntityState", "ViewEngine", "wall_clock_ms"]

_NEVER = -(1 << 62)  # "minus infinity" for event times and watermarks, still an int
_new_row = tuple.__new__
_by_time = itemgetter(0)

Clock = Callable[[], int]
# A pending event: (event time, fields, partition, offset).
_Pending = tuple[int, tuple[Any, ...], int, int]


def wall_clock_ms() -> int:
    """The wall clock in epoch milliseconds (the engine's default clock)."""
    return time.time_ns() // 1_000_000


class _Packed(tuple[int, int]):
    """A big int ``mantissa << shift`` in a recovery snapshot (see ``EntityState``)."""

    __slots__ = ()


_BIG = 1 << 64


def _pack(value: Any) -> Any:
    if type(value) is int and not -_BIG < value < _BIG:
        shift = (value & -value).bit_length() - 1
        return _Packed((value >> shift, shift))
    return value


def _unpack(value: Any) -> Any:
    if type(value) is _Packed:
        return value[0] << value[1]
    return value


def _pack_all(values: list[Any] | tuple[Any, ...]) -> list[Any]:
    return [_pack(v) for v in values]


def _unpack_all(values: list[Any] | tuple[Any, ...]) -> list[Any]:
    return [_unpack(v) for v in values]


class EntityState:
    """One entity's window state for one view (opaque to callers; picklable and compact).

    ``max_t``/``wm``: max event time and watermark (ms); ``wall``: wall time when ``max_t`` was
    seen; ``part``/``off``: source position of the last applied event; ``fpart``/``foff``: that
    of the highest-offset event folded into the tiles; ``nb``: the next expiry boundary among
    the tiles (None: none); ``pending``: ``(t, fields, partition, offset)`` of the events newer
    than the watermark, not yet in tiles, sorted by ``t`` (ties in arrival order); ``groups``:
    one state per window group; ``life``: the lifetime features' partials.
    """

    __slots__ = (
        "foff", "fpart", "groups", "life", "max_t", "nb", "off", "part", "pending", "wall", "wm",
    )  # fmt: skip

    def __init__(self, groups: list[list[Any]], life: list[Any]) -> None:
        self.max_t = _NEVER
        self.wall = 0
        self.wm = _NEVER
        self.part = -1
        self.off = -1
        self.fpart = -1
        self.foff = -1
        self.nb: int | None = None
        self.pending: list[_Pending] = []
        self.groups = groups
        self.life = life

    def _fields(self) -> tuple[Any, ...]:
        return (
            self.max_t, self.wall, self.wm, self.part, self.off, self.fpart, self.foff, self.nb,
            self.pending, self.groups, self.life,
        )  # fmt: skip

    def __getstate__(self) -> tuple[Any, ...]:
        # Exact float sums are ~1,100-bit ints (scaled by 2**1074) with long runs of trailing
        # zero bits: pickle them as (mantissa, shift), which is ~15 bytes instead of ~140.
        groups = [
            [[_pack_all(tile) for tile in gs[0]], _pack_all(gs[1]), *gs[2:]] for gs in self.groups
        ]
        life = [tuple(_pack_all(p)) if type(p) is tuple else _pack(p) for p in self.life]
        return (*self._fields()[:-2], groups, life)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (
            self.max_t, self.wall, self.wm, self.part, self.off, self.fpart, self.foff, self.nb,
            self.pending, groups, life,
        ) = state  # fmt: skip
        self.groups = [
            [[_unpack_all(tile) for tile in gs[0]], _unpack_all(gs[1]), *gs[2:]] for gs in groups
        ]
        self.life = [tuple(_unpack_all(p)) if type(p) is tuple else _unpack(p) for p in life]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EntityState):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"EntityState(max_t={self.max_t}, wm={self.wm}, next_boundary={self.nb}, "
            f"pending={len(self.pending)}, tiles={[len(g[0]) for g in self.groups]})"
        )


# --- window columns that are not running totals -------------------------------------------
#
# A column owns one slot in every tile (``tile[self.tcol]``) and one slot in the group state
# (``gs[self.gcol]``). Group state layout: gs[0] = tiles (oldest first), gs[1] = running totals
# [count, sum_1, ...], gs[2:] = column states. Tile layout: [k, count, sum_1, ..., col_1, ...].


class _Column:
    __slots__ = ("field", "gcol", "tcol")

    def __init__(self, field: int, tcol: int, gcol: int) -> None:
        self.field = field  # index into the event's fields tuple
        self.tcol = tcol
        self.gcol = gcol

    def new_state(self) -> Any:
        raise NotImplementedError

    def new_tile(self, gs: list[Any]) -> Any:
        raise NotImplementedError

    def add(self, gs: list[Any], tile: list[Any], v: Any) -> None:
        """Fold ``v`` into ``tile``, which is the newest tile."""
        raise NotImplementedError

    def add_old(self, gs: list[Any], tile: list[Any], v: Any) -> None:
        """Fold ``v`` into ``tile``, an older tile (rare: an out-of-order event)."""
        raise NotImplementedError

    def drop(self, gs: list[Any], dropped: list[list[Any]]) -> None:
        """``dropped`` (the oldest tiles) have left the window for good."""
        raise NotImplementedError

    def value(
        self, gs: list[Any], c: int, shadow: int, extra: Sequence[Any] | None, arg: Any
    ) -> Any:
        """The window value over tiles ``k >= c`` (the first ``shadow`` tiles are older than
        ``c``) plus the ``extra`` pending values."""
        raise NotImplementedError


class _MaxColumn(_Column):
    """Window max: a monotonic queue of ``(k, tile max)`` with strictly decreasing values."""

    __slots__ = ()

    def new_state(self) -> list[tuple[int, Any]]:
        return []

    def new_tile(self, gs: list[Any]) -> Any:
        return None

    def add(self, gs: list[Any], tile: list[Any], v: Any) -> None:
        col = self.tcol
        current = tile[col]
        if current is None or v > current:
            tile[col] = v
            queue = gs[self.gcol]
            while queue and queue[-1][1] <= v:
                queue.pop()
            queue.append((tile[0], v))

    def add_old(self, gs: list[Any], tile: list[Any], v: Any) -> None:
        col = self.tcol
        if tile[col] is None or v > tile[col]:
            tile[col] = v
            self._rebuild(gs)

    def _rebuild(self, gs: list[Any]) -> None:
        col = self.tcol
        queue: list[tuple[int, Any]] = []
        best = None
        for tile in reversed(gs[0]):
            v = tile[col]
            if v is not None and (best is None or v > best):
                best = v
                queue.append((tile[0], v))
        queue.reverse()
        gs[self.gcol] = queue

    def drop(self, gs: list[Any], dropped: list[list[Any]]) -> None:
        queue = gs[self.gcol]
        last = dropped[-1][0]
        i = 0
        while i < len(queue) and queue[i][0] <= last:
            i += 1
        if i:
            del queue[:i]

    def value(
        self, gs: list[Any], c: int, shadow: int, extra: Sequence[Any] | None, arg: Any
    ) -> Any:
        best = None
        for k, v in gs[self.gcol]:
            if k >= c:
                best = v
                break
        if extra:
            for v in extra:
                if best is None or v > best:
                    best = v
        return best


class _MinColumn(_MaxColumn):
    """Window min: a monotonic queue of ``(k, tile min)`` with strictly increasing values."""

    __slots__ = ()

    def add(self, gs: list[Any], tile: list[Any], v: Any) -> None:
        col = self.tcol
        current = tile[col]
        if current is None or v < current:
            tile[col] = v
            queue = gs[self.gcol]
            while queue and queue[-1][1] >= v:
                queue.pop()
            queue.append((tile[0], v))

    def add_old(self, gs: list[Any], tile: list[Any], v: Any) -> None:
        col = self.tcol
        if tile[col] is None or v < tile[col]:
            tile[col] = v
            self._rebuild(gs)

    def _rebuild(self, gs: list[Any]) -> None:
        col = self.tcol
        queue: list[tuple[int, Any]] = []
        best = None
        for tile in reversed(gs[0]):
            v = tile[col]
            if v is not None and (best is None or v < best):
                best = v
                queue.append((tile[0], v))
        queue.reverse()
        gs[self.gcol] = queue

    def value(
        self, gs: list[Any], c: int, shadow: int, extra: Sequence[Any] | None, arg: Any
    ) -> Any:
        best = None
        for k, v in gs[self.gcol]:
            if k >= c:
                best = v
                break
        if extra:
            for v in extra:
                if best is None or v < best:
                    best = v
        return best


class _SketchColumn(_Column):
    """A sketch per tile and a cached merge of the complete tiles (all but the newest).

    Group state slot: ``None`` (no cache) or ``[c, k_newest, merged partial]``, the merge of
    the tiles ``c <= k < k_newest``. A new tile folds the previous newest tile into the cache
    (one merge); expiry and out-of-order changes to complete tiles rebuild it.
    """

    __slots__ = ("agg",)

    def __init__(self, field: int, tcol: int, gcol: int, agg: Aggregator[Any]) -> None:
        super().__init__(field, tcol, gcol)
        self.agg = agg

    def new_state(self) -> Any:
        return None

    def new_tile(self, gs: list[Any]) -> Any:
        return self.agg.empty()

    def add(self, gs: list[Any], tile: list[Any], v: Any) -> None:
        tile[self.tcol].add(v)

    def add_old(self, gs: list[Any], tile: list[Any], v: Any) -> None:
        tile[self.tcol].add(v)
        gs[self.gcol] = None

    def drop(self, gs: list[Any], dropped: list[list[Any]]) -> None:
        gs[self.gcol] = None

    def merged(self, gs: list[Any], c: int) -> Any:
        """A fresh partial: the merge of every tile ``k >= c`` (the caller may mutate it)."""
        tiles = gs[0]
        col = self.tcol
        agg = self.agg
        newest = tiles[-1]
        for tile in tiles:  # key the cache by the first tile it holds, not by c itself
            if tile[0] >= c:
                c = tile[0]
                break
        cache = gs[self.gcol]
        if cache is None or cache[0] != c or cache[1] > newest[0]:
            partial = agg.empty()
            for tile in tiles[:-1]:
                if tile[0] >= c:
                    partial = agg.merge(partial, tile[col])
            cache = gs[self.gcol] = [c, newest[0], partial]
        elif cache[1] < newest[0]:
            # Tiles created since the cache was built: fold the ones now complete.
            for tile in tiles[:-1]:
                if tile[0] >= cache[1]:
                    cache[2] = agg.merge(cache[2], tile[col])
            cache[1] = newest[0]
        result = cache[2].copy()
        if newest[0] >= c:
            result = agg.merge(result, newest[col])
        return result

    def value(
        self, gs: list[Any], c: int, shadow: int, extra: Sequence[Any] | None, arg: Any
    ) -> Any:
        agg = self.agg
        partial = self.merged(gs, c) if gs[0] else agg.empty()
        if extra:
            for v in extra:
                partial = agg.add(partial, 0, v)
        return arg(partial)


class _DistinctColumn(_SketchColumn):
    """Exact distinct count while the window holds at most ``EXACT_DISTINCT_LIMIT`` values.

    Exact mode: each tile holds a set, the group state a dict value -> number of tiles holding
    it, so the count is ``len(dict)`` and expiry costs O(values of the expired tile). Beyond the
    limit the column switches to sketch mode (tiles hold :class:`Distinct` partials merged as in
    :class:`_SketchColumn`) until the window is empty again.
    """

    __slots__ = ()

    def new_state(self) -> Any:
        return {}

    def new_tile(self, gs: list[Any]) -> Any:
        return set() if type(gs[self.gcol]) is dict else Distinct()

    def add(self, gs: list[Any], tile: list[Any], v: Any) -> None:
        counts = gs[self.gcol]
        if type(counts) is dict:
            values = tile[self.tcol]
            if v not in values:
                values.add(v)
                counts[v] = counts.get(v, 0) + 1
                if len(counts) > EXACT_DISTINCT_LIMIT:
                    self._to_sketch(gs)
        else:
            tile[self.tcol].add(v)

    def add_old(self, gs: list[Any], tile: list[Any], v: Any) -> None:
        if type(gs[self.gcol]) is dict:
            self.add(gs, tile, v)
        else:
            super().add_old(gs, tile, v)

    def _to_sketch(self, gs: list[Any]) -> None:
        col = self.tcol
        for tile in gs[0]:
            tile[col] = Distinct(tile[col])
        gs[self.gcol] = None

    def drop(self, gs: list[Any], dropped: list[list[Any]]) -> None:
        counts = gs[self.gcol]
        if type(counts) is dict:
            col = self.tcol
            for tile in dropped:
                for v in tile[col]:
                    n = counts[v] - 1
                    if n:
                        counts[v] = n
                    else:
                        del counts[v]
        elif gs[0]:
            gs[self.gcol] = None
        else:
            gs[self.gcol] = {}  # the window is empty: back to exact mode

    def value(
        self, gs: list[Any], c: int, shadow: int, extra: Sequence[Any] | None, arg: Any
    ) -> Any:
        counts = gs[self.gcol]
        if type(counts) is not dict:
            partial = self.merged(gs, c)
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
            for tile in gs[0][:shadow]:
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
# multiple of 2**-1074). The scale is per group state (gs[2]) and drops back to 2**64 when the
# window empties. Both give sums that do not depend on the order of additions; the small scale
# keeps the ints short (fast to add and convert, small to pickle).

_COARSE = 64
_FINE = 1074
_TWO_64 = 18446744073709551616.0
_INV_TWO_64 = 1.0 / _TWO_64
_FINE_SHIFT = _FINE - _COARSE
_FINE_SCALE = 1 << _FINE

_COUNT, _SUM, _MEAN, _COLUMN = range(4)


def _to_coarse(value: float) -> int | None:
    """``value * 2**64`` if that is an integer (exactly), else None."""
    scaled = value * _TWO_64
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


def _from_scaled(value: int, scale: int) -> float:
    if scale == _COARSE:
        return value * _INV_TWO_64  # float(value) rounds once; the power of two is exact
    return value / _FINE_SCALE


class _WindowGroup:
    """The features sharing one ``(W, h)``: their tiles, running totals and columns.

    Group state: ``[tiles, totals, scale, column states...]``; ``tiles`` oldest first, each
    ``[k, count, sum_1, ..., column_1, ...]``; ``totals`` = ``[count, sum_1, ...]`` over all
    tiles held.
    """

    __slots__ = (
        "columns", "float_sums", "h", "int_sums", "n", "nsums", "outputs", "w",
    )  # fmt: skip

    def __init__(
        self,
        window_ms: int,
        hop_ms: int,
        features: list[tuple[int, Feature]],
        view: FeatureView,
    ) -> None:
        self.w = window_ms
        self.h = hop_ms
        self.n = window_ms // hop_ms
        inputs = view.input_fields
        types = view.source.field_types
        sum_fields: list[int] = []
        column_keys: list[tuple[Aggregation, int]] = []
        for _, feature in features:
            assert feature.agg is Aggregation.COUNT or feature.field is not None
            if feature.agg in (Aggregation.SUM, Aggregation.MEAN):
                index = inputs.index(feature.field)
                if index not in sum_fields:
                    sum_fields.append(index)
            elif feature.agg is not Aggregation.COUNT:
                key = (feature.agg, inputs.index(feature.field))
                if key not in column_keys:
                    column_keys.append(key)
        self.nsums = len(sum_fields)
        # (tile slot, field index) of the sums, split by type.
        is_float = [types[inputs[index]] == "float64" for index in sum_fields]
        self.int_sums = tuple((2 + i, f) for i, f in enumerate(sum_fields) if not is_float[i])
        self.float_sums = tuple((2 + i, f) for i, f in enumerate(sum_fields) if is_float[i])
        first_column = 2 + len(sum_fields)
        columns: list[_Column] = []
        for j, (agg, field) in enumerate(column_keys):
            tcol, gcol = first_column + j, 3 + j
            if agg is Aggregation.MAX:
                columns.append(_MaxColumn(field, tcol, gcol))
            elif agg is Aggregation.MIN:
                columns.append(_MinColumn(field, tcol, gcol))
            elif agg is Aggregation.DISTINCT_COUNT:
                columns.append(_DistinctColumn(field, tcol, gcol, aggregator_for(agg)))
            else:  # approx_percentile: a KLL per tile; the quantile is chosen per feature
                columns.append(_SketchColumn(field, tcol, gcol, _QUANTILES))
        self.columns = tuple(columns)
        outputs: list[tuple[int, int, int, Any]] = []
        for position, feature in features:
            if feature.agg is Aggregation.COUNT:
                outputs.append((position, _COUNT, 0, None))
            elif feature.agg in (Aggregation.SUM, Aggregation.MEAN):
                kind = _SUM if feature.agg is Aggregation.SUM else _MEAN
                index = sum_fields.index(inputs.index(feature.field))
                outputs.append((position, kind, 2 + index, is_float[index]))
            else:
                key = (feature.agg, inputs.index(feature.field))
                arg = None
                if feature.agg is Aggregation.APPROX_PERCENTILE:
                    arg = _quantile_of(feature.quantile)
                outputs.append((position, _COLUMN, column_keys.index(key), arg))
        self.outputs = tuple(outputs)

    def new_state(self) -> list[Any]:
        return [[], [0] * (1 + self.nsums), _COARSE, *(c.new_state() for c in self.columns)]

    def boundary(self, k: int) -> int:
        """The expiry boundary of tile ``k``: ``tile_start + h + W``."""
        return (k + 1) * self.h + self.w

    def _new_tile(self, gs: list[Any], k: int) -> list[Any]:
        tile = [k, 0]
        if self.nsums:
            tile += [0] * self.nsums
        for column in self.columns:
            tile.append(column.new_tile(gs))
        return tile

    def fold(self, gs: list[Any], t: int, fields: tuple[Any, ...]) -> int | None:
        """Add one event to its tile; returns the group's new oldest boundary if it changed."""
        k = t // self.h
        tiles = gs[0]
        result = None
        if tiles:
            tile = tiles[-1]
            if tile[0] != k:
                if tile[0] > k:
                    return self._fold_old(gs, k, fields)
                tile = self._new_tile(gs, k)
                tiles.append(tile)
        else:
            tile = self._new_tile(gs, k)
            tiles.append(tile)
            result = (k + 1) * self.h + self.w
        totals = gs[1]
        tile[1] += 1
        totals[0] += 1
        for i, index in self.int_sums:
            v = fields[index]
            tile[i] += v
            totals[i - 1] += v
        if self.float_sums:
            self._add_floats(gs, tile, fields)
        for column in self.columns:
            column.add(gs, tile, fields[column.field])
        return result

    def _fold_old(self, gs: list[Any], k: int, fields: tuple[Any, ...]) -> int | None:
        """Fold into a tile older than the newest (an out-of-order event; rare)."""
        tiles = gs[0]
        i = len(tiles) - 1
        while i >= 0 and tiles[i][0] > k:
            i -= 1
        result = None
        if i >= 0 and tiles[i][0] == k:
            tile = tiles[i]
        else:
            tile = self._new_tile(gs, k)
            tiles.insert(i + 1, tile)
            if i < 0:
                result = (k + 1) * self.h + self.w
        totals = gs[1]
        tile[1] += 1
        totals[0] += 1
        for j, index in self.int_sums:
            v = fields[index]
            tile[j] += v
            totals[j - 1] += v
        if self.float_sums:
            self._add_floats(gs, tile, fields)
        for column in self.columns:
            column.add_old(gs, tile, fields[column.field])
        return result

    def _add_floats(self, gs: list[Any], tile: list[Any], fields: tuple[Any, ...]) -> None:
        totals = gs[1]
        for i, index in self.float_sums:
            n = self.scaled(gs, fields[index])
            tile[i] += n
            totals[i - 1] += n

    def scaled(self, gs: list[Any], value: float) -> int:
        """``value`` at the group's sum scale, switching the group to the fine scale if needed."""
        if gs[2] == _COARSE:
            n = _to_coarse(value)
            if n is not None:
                return n
            n = _to_fine(value)  # raises on non-finite values before any state changes
            for tile in gs[0]:
                for i, _ in self.float_sums:
                    tile[i] <<= _FINE_SHIFT
            for i, _ in self.float_sums:
                gs[1][i - 1] <<= _FINE_SHIFT
            gs[2] = _FINE
            return n
        return _to_fine(value)

    def values(
        self,
        gs: list[Any],
        as_of: int,
        pending: list[_Pending] | None,
        out: list[Any],
    ) -> None:
        """Write this group's feature values as of ``as_of`` into ``out`` (the general path).

        ``pending`` (event rows only) are events newer than every tile's contents, all inside
        the window as of ``as_of``; tiles older than the window (``shadow``) exist only between
        their boundary passing ``as_of`` and the watermark passing it.
        """
        c = as_of // self.h - self.n
        if pending:
            # Bring the group to a scale that holds the pending values before reading totals.
            for _, index in self.float_sums:
                for event in pending:
                    self.scaled(gs, event[1][index])
        tiles = gs[0]
        totals = list(gs[1])  # [count, sum_1, ...]
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
                    totals[i - 1] += self.scaled(gs, event[1][index])
        count = totals[0]
        scale = gs[2]
        for position, kind, index, arg in self.outputs:
            if kind == _COUNT:
                out[position] = count
            elif kind == _COLUMN:
                column = self.columns[index]
                extra = [e[1][column.field] for e in pending] if pending else None
                out[position] = column.value(gs, c, shadow, extra, arg)
            else:
                total = _from_scaled(totals[index - 1], scale) if arg else totals[index - 1]
                if kind == _SUM:
                    out[position] = total
                else:
                    out[position] = total / count if count else None


def _quantile_of(q: float | None) -> Callable[[Quantiles], float | None]:
    assert q is not None
    return lambda partial: partial.quantile(q)


class _QuantilesAggregator(Aggregator[Quantiles]):
    """KLL partials for window tiles (the quantile is applied per feature by the column)."""

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


class _Lifetime:
    """Features without a window: one partial each, never expiring.

    ``last`` keeps ``(t, offset, value)`` and takes the greatest ``(t, offset)``: the newest
    event, the later one in its partition on equal times, whatever order events are folded in.
    """

    __slots__ = ("aggs", "fields", "is_last", "positions")

    def __init__(self, features: list[tuple[int, Feature]], view: FeatureView) -> None:
        inputs = view.input_fields
        types = view.source.field_types
        self.positions = tuple(p for p, _ in features)
        self.fields = tuple(-1 if f.field is None else inputs.index(f.field) for _, f in features)
        self.is_last = tuple(f.agg is Aggregation.LAST for _, f in features)
        self.aggs = tuple(
            aggregator_for(
                f.agg, f.quantile, float_sum=f.field is not None and types[f.field] == "float64"
            )
            for _, f in features
        )

    def new_state(self) -> list[Any]:
        return [agg.empty() for agg in self.aggs]


# --- the compiled hot path ----------------------------------------------------------------------
#
# Per event, the generic code above costs a dozen method calls and loops over small tuples; at
# the target rate (> 150k events/s on one core) that overhead is most of the budget. So each
# engine compiles, from its view's plan, one straight-line ``apply`` (fast path: fold the event
# into every tile inline, read the row off the running state) and one ``values`` reader. Every
# uncommon case calls back into the generic methods: pending events, tiles older than the
# window, out-of-order tiles, sketch mode, the fine sum scale, expiry. ``ViewEngine.source``
# holds the generated code; the property tests run through it.


def _compile(engine: ViewEngine) -> dict[str, Any]:
    """Generate and compile the view's hot path; returns its namespace (and ``__source__``)."""
    env: dict[str, Any] = {
        "Row": Row, "new_row": _new_row, "insort": insort_right, "by_time": _by_time,
        "clock": engine._clock, "fold_pending": engine._fold_pending,
        "NEVER": _NEVER, "COARSE": _COARSE, "TWO_64": _TWO_64, "INV_TWO_64": _INV_TWO_64,
        "FINE_SCALE": _FINE_SCALE, "LIMIT": EXACT_DISTINCT_LIMIT, "VIEW": engine._name,
        "LATENESS": engine._lateness, "WIDTH": engine._width, "to_coarse": _to_coarse,
    }  # fmt: skip
    src = [
        "def apply(state, entity, t, fields, partition, offset):",
        "    st = state",
        "    if t < st.wm:",
        "        return None",
        "    if t > st.max_t:",
        "        st.max_t = t",
        "        st.wall = clock()",
        "        wm = t - LATENESS",
        "        if wm > st.wm:",
        "            st.wm = wm",
        "    wm = st.wm",
        "    rows = []",
        "    nb = st.nb",
        "    pending = st.pending",
        "    if (nb is not None and nb < wm) or (pending and pending[0][0] <= wm):",
        "        expire(st, entity, rows)",
        "        nb = st.nb",
        "    if nb is not None and nb < t:  # an expiry row still due may need it left out",
        "        insort(pending, (t, fields, partition, offset), key=by_time)",
        "        st.part = partition",
        "        st.off = offset",
        "        rows.append(new_row(Row, (VIEW, entity, st.max_t, values_at(st, st.max_t,"
        " pending), partition, offset)))",
        "        return rows",
        *_compile_fold(engine, env),
        "    st.part = partition",
        "    st.off = offset",
        "    if pending or (nb is not None and nb <= st.max_t):",
        "        values_now = values_at(st, st.max_t, pending)",
        "    else:",
        "        values_now = values(groups, life)",
        "    rows.append(new_row(Row, (VIEW, entity, st.max_t, values_now, partition, offset)))",
        "    return rows",
        "",
        "def fold(st, t, fields, partition, offset):",
        "    nb = st.nb",
        *_compile_fold(engine, env),
        "",
    ]
    src += _compile_values(engine, env)
    src += _compile_values_at(engine, env)
    src += _compile_expire(engine, env)
    source = "\n".join(src)
    exec(compile(source, f"<freshet engine {engine._name}>", "exec"), env)
    env["__source__"] = source
    return env


def _compile_fold(engine: ViewEngine, env: dict[str, Any]) -> list[str]:
    """Lines folding event ``t, fields`` into every tile and lifetime partial (``nb`` in scope,
    stored back to ``st.nb``); leaves ``groups`` and ``life`` bound."""
    fields = sorted(
        {i for g in engine._groups for _, i in g.int_sums + g.float_sums}
        | {c.field for g in engine._groups for c in g.columns}
        | ({i for i in engine._lifetime.fields if i >= 0} if engine._lifetime else set())
    )
    float_fields = sorted({i for g in engine._groups for _, i in g.float_sums})
    src = [
        "    if offset >= st.foff:",
        "        st.foff = offset",
        "        st.fpart = partition",
        "    groups = st.groups",
    ]
    src += [f"    f{i} = fields[{i}]" for i in fields]
    for i in float_fields:  # the value at the coarse sum scale, or None
        src += [
            f"    x = f{i} * TWO_64",
            "    try:",
            f"        n{i} = int(x)",
            f"        if n{i} != x:",
            f"            n{i} = None",
            "    except (OverflowError, ValueError):",
            f"        n{i} = None",
        ]
    for g, group in enumerate(engine._groups):
        env[f"G{g}"] = group
        h, w = group.h, group.w
        new_tile = ["k", "0", *["0"] * group.nsums]
        for j, column in enumerate(group.columns):
            env[f"C{g}_{j}"] = column
            if type(column) in (_MaxColumn, _MinColumn):
                new_tile.append("None")
            elif type(column) is _DistinctColumn:
                gc = column.gcol
                new_tile.append(f"set() if type(gs[{gc}]) is dict else C{g}_{j}.new_tile(gs)")
            else:
                new_tile.append(f"C{g}_{j}.new_tile(gs)")
        src += [
            f"    # window {w} ms, hop {h} ms",
            f"    gs = groups[{g}]",
            "    tiles = gs[0]",
            f"    k = t // {h}",
            "    if tiles and tiles[-1][0] == k:",
            "        tile = tiles[-1]",
            "    elif not tiles or tiles[-1][0] < k:",
            "        if not tiles:",
            f"            b = (k + 1) * {h} + {w}",
            "            if nb is None or b < nb:",
            "                nb = b",
            f"        tile = [{', '.join(new_tile)}]",
            "        tiles.append(tile)",
            "    else:",
            "        tile = None",
            f"        b = G{g}.fold(gs, t, fields)",
            "        if b is not None and (nb is None or b < nb):",
            "            nb = b",
            "    if tile is not None:",
            "        totals = gs[1]",
            "        tile[1] += 1",
            "        totals[0] += 1",
        ]
        for i, index in group.int_sums:
            src += [f"        tile[{i}] += f{index}", f"        totals[{i - 1}] += f{index}"]
        for i, index in group.float_sums:
            src += [
                f"        n = n{index} if n{index} is not None and gs[2] == COARSE"
                f" else G{g}.scaled(gs, f{index})",
                f"        tile[{i}] += n",
                f"        totals[{i - 1}] += n",
            ]
        for j, column in enumerate(group.columns):
            c, gc, v = column.tcol, column.gcol, f"f{column.field}"
            if type(column) in (_MaxColumn, _MinColumn):
                better = ">" if type(column) is _MaxColumn else "<"
                worse = "<=" if type(column) is _MaxColumn else ">="
                src += [
                    f"        if tile[{c}] is None or {v} {better} tile[{c}]:",
                    f"            tile[{c}] = {v}",
                    f"            queue = gs[{gc}]",
                    f"            while queue and queue[-1][1] {worse} {v}:",
                    "                queue.pop()",
                    f"            queue.append((k, {v}))",
                ]
            elif type(column) is _DistinctColumn:
                src += [
                    f"        counts = gs[{gc}]",
                    "        if type(counts) is dict:",
                    f"            seen = tile[{c}]",
                    f"            if {v} not in seen:",
                    f"                seen.add({v})",
                    f"                counts[{v}] = counts.get({v}, 0) + 1",
                    "                if len(counts) > LIMIT:",
                    f"                    C{g}_{j}._to_sketch(gs)",
                    "        else:",
                    f"            C{g}_{j}.add(gs, tile, {v})",
                ]
            else:
                src += [f"        C{g}_{j}.add(gs, tile, {v})"]
    src += ["    st.nb = nb"]
    if engine._lifetime is not None:
        src += ["    life = st.life"]
        lifetime = engine._lifetime
        for i, (agg, index, is_last) in enumerate(
            zip(lifetime.aggs, lifetime.fields, lifetime.is_last, strict=True)
        ):
            env[f"L{i}"] = agg
            if is_last:
                src += [
                    f"    p = life[{i}]",
                    "    if p is None or t > p[0] or (t == p[0] and offset >= p[1]):",
                    f"        life[{i}] = (t, offset, f{index})",
                ]
            else:
                value = f"f{index}" if index >= 0 else "None"
                src += [f"    life[{i}] = L{i}.add(life[{i}], t, {value})"]
    else:
        src += ["    life = st.life"]
    return src


def _compile_values(engine: ViewEngine, env: dict[str, Any]) -> list[str]:
    """``values(groups, life)``: every feature read off the running state (no pending event,
    no tile older than the window)."""
    src = ["def values(groups, life):"]
    exprs: dict[int, str] = {}
    for g, group in enumerate(engine._groups):
        src += [f"    g{g} = groups[{g}]", f"    t{g} = g{g}[1]"]
        for position, kind, index, arg in group.outputs:
            if kind == _COUNT:
                exprs[position] = f"t{g}[0]"
            elif kind in (_SUM, _MEAN):
                total = f"t{g}[{index - 1}]"
                if arg:  # a float sum at the group's scale
                    name = f"s{g}_{index}"
                    line = (
                        f"    {name} = {total} * INV_TWO_64 if g{g}[2] == COARSE"
                        f" else {total} / FINE_SCALE"
                    )
                    if line not in src:
                        src.append(line)
                    total = name
                if kind == _SUM:
                    exprs[position] = total
                else:
                    exprs[position] = f"({total} / t{g}[0] if t{g}[0] else None)"
            else:
                column = group.columns[index]
                env[f"C{g}_{index}"] = column
                env[f"A{position}"] = arg
                slow = f"C{g}_{index}.value(g{g}, NEVER, 0, None, A{position})"
                if type(column) in (_MaxColumn, _MinColumn):
                    src += [f"    q{position} = g{g}[{column.gcol}]"]
                    exprs[position] = f"(q{position}[0][1] if q{position} else None)"
                elif type(column) is _DistinctColumn:
                    src += [f"    d{position} = g{g}[{column.gcol}]"]
                    exprs[position] = f"(len(d{position}) if type(d{position}) is dict else {slow})"
                else:
                    exprs[position] = slow
    if engine._lifetime is not None:
        lifetime = engine._lifetime
        for i, (agg, position, is_last) in enumerate(
            zip(lifetime.aggs, lifetime.positions, lifetime.is_last, strict=True)
        ):
            env[f"L{i}"] = agg
            if is_last:
                exprs[position] = f"(None if life[{i}] is None else life[{i}][2])"
            else:
                exprs[position] = f"L{i}.result(life[{i}])"
    src += ["    return (", *(f"        {exprs[p]}," for p in sorted(exprs)), "    )", ""]
    return src


def _compile_values_at(engine: ViewEngine, env: dict[str, Any]) -> list[str]:
    """``values_at(st, as_of, pending)``: the event row's values when events are pending or
    tiles older than the window are still held; groups in a rare state (fine sum scale, sketch
    mode, a pending value off the coarse scale) go through ``_WindowGroup.values``."""
    src = [
        "def values_at(st, as_of, pending):",
        "    groups = st.groups",
        "    out = [None] * WIDTH",
    ]
    for g, group in enumerate(engine._groups):
        env[f"G{g}"] = group
        h, n = group.h, group.n
        rare = []
        if group.float_sums:
            rare.append("gs[2] != COARSE")
        for column in group.columns:
            if type(column) is _DistinctColumn:
                rare.append(f"type(gs[{column.gcol}]) is not dict")
            elif type(column) not in (_MaxColumn, _MinColumn):
                rare.append("True")
        sums = [f"s{i}" for i in range(2, 2 + group.nsums)]
        src += [
            f"    # window {group.w} ms, hop {h} ms",
            f"    gs = groups[{g}]",
            "    tiles = gs[0]",
            f"    c = as_of // {h} - {n}",
            f"    rare = {' or '.join(rare) or 'False'}",
            "    if not rare:",
            "        totals = gs[1]",
            "        count = totals[0]",
            *[f"        {name} = totals[{i + 1}]" for i, name in enumerate(sums)],
            "        shadow = 0",
            "        if tiles and tiles[0][0] < c:",
            "            for tile in tiles:",
            "                if tile[0] >= c:",
            "                    break",
            "                shadow += 1",
            "                count -= tile[1]",
            *[f"                {name} -= tile[{i + 2}]" for i, name in enumerate(sums)],
            "        if pending:",
            "            count += len(pending)",
            "            for e in pending:",
            "                f = e[1]",
        ]
        float_slots = {i for i, _ in group.float_sums}
        for i, index in group.int_sums + group.float_sums:
            if i in float_slots:
                src += [
                    f"                x = to_coarse(f[{index}])",
                    "                if x is None:",
                    "                    rare = True",
                    "                    break",
                    f"                s{i} += x",
                ]
            else:
                src += [f"                s{i} += f[{index}]"]
        src += ["    if rare:", f"        G{g}.values(gs, as_of, pending, out)", "    else:"]
        for position, kind, index, arg in group.outputs:
            if kind == _COUNT:
                src += [f"        out[{position}] = count"]
            elif kind in (_SUM, _MEAN):
                total = f"s{index} * INV_TWO_64" if arg else f"s{index}"
                if kind == _SUM:
                    src += [f"        out[{position}] = {total}"]
                else:
                    src += [f"        out[{position}] = {total} / count if count else None"]
            else:
                column = group.columns[index]
                env[f"C{g}_{index}"] = column
                gc, fi = column.gcol, column.field
                if type(column) in (_MaxColumn, _MinColumn):
                    better = ">" if type(column) is _MaxColumn else "<"
                    src += [
                        "        best = None",
                        f"        for kk, v in gs[{gc}]:",
                        "            if kk >= c:",
                        "                best = v",
                        "                break",
                        "        for e in pending:",
                        f"            v = e[1][{fi}]",
                        f"            if best is None or v {better} best:",
                        "                best = v",
                        f"        out[{position}] = best",
                    ]
                else:  # exact distinct count
                    src += [
                        f"        counts = gs[{gc}]",
                        "        distinct = len(counts)",
                        "        if not shadow:",
                        f"            new = {{e[1][{fi}] for e in pending}}.difference(counts)",
                        "            distinct += len(new)",
                        "        if shadow or distinct > LIMIT:",
                        f"            extra = [e[1][{fi}] for e in pending]",
                        f"            distinct = C{g}_{index}.value(gs, c, shadow, extra, None)",
                        f"        out[{position}] = distinct",
                    ]
    if engine._lifetime is not None:
        lifetime = engine._lifetime
        src += ["    life = st.life"]
        for i, (agg, index, position, is_last) in enumerate(
            zip(lifetime.aggs, lifetime.fields, lifetime.positions, lifetime.is_last, strict=True)
        ):
            env[f"L{i}"] = agg
            if is_last:
                src += [
                    f"    best = life[{i}]",
                    "    for e in pending:",
                    "        if best is None or (e[0], e[3]) >= best[:2]:",
                    f"            best = (e[0], e[3], e[1][{index}])",
                    f"    out[{position}] = None if best is None else best[2]",
                ]
            else:
                value = f"e[1][{index}]" if index >= 0 else "None"
                src += [
                    f"    extra = [(e[0], {value}) for e in pending]",
                    f"    out[{position}] = L{i}.peek(life[{i}], extra)",
                ]
    src += ["    return tuple(out)", ""]
    return src


def _compile_expire(engine: ViewEngine, env: dict[str, Any]) -> list[str]:
    """``expire(st, entity, rows)``: emit every boundary below the watermark, in order, folding
    pending events as the boundaries pass them (see ``ViewEngine.advance``)."""
    src = [
        "def expire(st, entity, rows):",
        "    wm = st.wm",
        "    while True:",
        "        nb = st.nb",
        "        pending = st.pending",
        "        if pending:",
        "            limit = wm if nb is None or nb > wm else nb",
        "            if pending[0][0] <= limit:",
        "                fold_pending(st, limit)",
        "                nb = st.nb",
        "        if nb is None or nb >= wm:",
        "            return",
        "        groups = st.groups",
        "        following = None",
    ]
    for g, group in enumerate(engine._groups):
        h, w = group.h, group.w
        src += [
            f"        # window {w} ms, hop {h} ms: drop the tiles whose boundary is nb",
            f"        gs = groups[{g}]",
            "        tiles = gs[0]",
            f"        if tiles and (tiles[0][0] + 1) * {h} + {w} <= nb:",
            f"            c = (nb - {w}) // {h}",
            "            totals = gs[1]",
            "            while tiles and tiles[0][0] < c:",
            "                tile = tiles.pop(0)",
            "                totals[0] -= tile[1]",
        ]
        src += [f"                totals[{i - 1}] -= tile[{i}]" for i in range(2, 2 + group.nsums)]
        for j, column in enumerate(group.columns):
            env[f"C{g}_{j}"] = column
            c, gc = column.tcol, column.gcol
            if type(column) in (_MaxColumn, _MinColumn):
                src += [
                    f"                queue = gs[{gc}]",
                    "                while queue and queue[0][0] <= tile[0]:",
                    "                    del queue[0]",
                ]
            elif type(column) is _DistinctColumn:
                src += [
                    f"                counts = gs[{gc}]",
                    "                if type(counts) is dict:",
                    f"                    for v in tile[{c}]:",
                    "                        n = counts[v] - 1",
                    "                        if n:",
                    "                            counts[v] = n",
                    "                        else:",
                    "                            del counts[v]",
                    "                else:",
                    f"                    C{g}_{j}.drop(gs, [tile])",
                ]
            else:
                src += [f"                C{g}_{j}.drop(gs, [tile])"]
        src += [
            "            if not tiles:",
            f"                gs[1] = [0] * {1 + group.nsums}",
            "                gs[2] = COARSE",
            "        if tiles:",
            f"            b = (tiles[0][0] + 1) * {h} + {w}",
            "            if following is None or b < following:",
            "                following = b",
        ]
    src += [
        "        st.nb = following",
        "        rows.append(new_row(Row, (VIEW, entity, nb, values(groups, st.life), st.fpart,"
        " st.foff)))",
        "",
    ]
    return src


# --- the engine -------------------------------------------------------------------------------


class ViewEngine:
    """Turns one view's per-entity event sequences into rows (see the module docstring).

    The caller keeps one :class:`EntityState` per entity (``new_state()``) and passes it back
    on every call; the engine keeps no per-entity data of its own. ``clock`` gives the wall time
    in epoch ms recorded when an entity's max event time advances (inject one in tests).
    """

    def __init__(self, view: FeatureView, *, clock: Clock = wall_clock_ms) -> None:
        self.view = view
        self._name = view.name
        self._lateness = view.allowed_lateness_seconds * 1000
        self._clock = clock
        self._width = len(view.features)
        by_window: dict[tuple[int, int], list[tuple[int, Feature]]] = {}
        lifetime: list[tuple[int, Feature]] = []
        for position, feature in enumerate(view.features):
            if feature.window_seconds is None:
                lifetime.append((position, feature))
            else:
                assert feature.hop_seconds is not None
                key = (feature.window_seconds * 1000, feature.hop_seconds * 1000)
                by_window.setdefault(key, []).append((position, feature))
        self._groups = tuple(
            _WindowGroup(w, h, features, view) for (w, h), features in by_window.items()
        )
        self._lifetime = _Lifetime(lifetime, view) if lifetime else None
        compiled = _compile(self)
        self._apply: Callable[..., list[Row] | None] = compiled["apply"]
        self.apply = self._apply  # type: ignore[method-assign]
        self._fold: Callable[..., None] = compiled["fold"]
        self._expire: Callable[[EntityState, str, list[Row]], None] = compiled["expire"]
        self.source: str = compiled["__source__"]  # the compiled hot path, for reading
        # Lifetime partials other than `last` would be lost if a drained state were dropped.
        self._droppable = all(f.agg is Aggregation.LAST for _, f in lifetime)
        windows = [f.window_seconds for f in view.features if f.window_seconds is not None]
        if windows and view.allowed_lateness_seconds > min(windows):
            raise ValueError(
                f"view {view.name!r}: allowed_lateness_seconds={view.allowed_lateness_seconds} "
                f"exceeds its shortest window ({min(windows)} s); lateness must fit in a window"
            )

    def new_state(self) -> EntityState:
        """The state of an entity with no events yet."""
        life = self._lifetime.new_state() if self._lifetime is not None else []
        return EntityState([g.new_state() for g in self._groups], life)

    # -- public operations ---------------------------------------------------------------------

    def apply(
        self,
        state: EntityState,
        entity: str,
        event_time_ms: int,
        fields: tuple[Any, ...],
        partition: int,
        offset: int,
    ) -> list[Row] | None:
        """Apply one event; returns its rows (expiry rows first), or None if it is late.

        ``fields`` are the event's values of ``view.input_fields``, in that order. Each engine
        replaces this method with its compiled hot path (see ``source``).
        """
        return self._apply(state, entity, event_time_ms, fields, partition, offset)

    def advance(self, state: EntityState, entity: str, now_ms: int) -> list[Row]:
        """Move the watermark with the wall clock; returns the expiry rows it passes."""
        st = state
        if st.max_t == _NEVER:
            return []
        wm = st.max_t - self._lateness + (now_ms - st.wall)
        if wm <= st.wm:
            return []
        st.wm = wm
        rows: list[Row] = []
        nb = st.nb
        pending = st.pending
        if (nb is not None and nb < wm) or (pending and pending[0][0] <= wm):
            self._expire(st, entity, rows)
        return rows

    def next_expiry(self, state: EntityState) -> int | None:
        """The wall time (epoch ms) at which :meth:`advance` will next emit a row, or None."""
        st = state
        boundary = self._next_boundary(st)
        if boundary is None:
            return None
        # advance emits once max_t - L + (now - wall) > boundary.
        return boundary - st.max_t + self._lateness + st.wall + 1

    def flush(self, state: EntityState, entity: str, until_ms: int) -> list[Row]:
        """A bounded replay's end: emit every boundary ``<= until_ms``; later events before it
        are then late."""
        st = state
        if st.max_t == _NEVER:
            return []
        if until_ms + 1 > st.wm:
            st.wm = until_ms + 1
        rows: list[Row] = []
        self._expire(st, entity, rows)
        return rows

    def is_drained(self, state: EntityState) -> bool:
        """True when dropping the state changes no future row of an on-time event: every
        window is empty, nothing is pending and the lifetime features are only ``last``."""
        if not self._droppable or state.pending or state.max_t == _NEVER:
            return False
        return all(not gs[0] for gs in state.groups)

    # -- internals -----------------------------------------------------------------------------

    def _fold_pending(self, st: EntityState, limit: int) -> None:
        """Fold the pending events with ``t <= limit`` into the tiles, in event-time order."""
        pending = st.pending
        n = 0
        for t, fields, partition, offset in pending:
            if t > limit:
                break
            self._fold(st, t, fields, partition, offset)
            n += 1
        del pending[:n]

    def _next_boundary(self, st: EntityState) -> int | None:
        nb = st.nb
        for t, *_ in st.pending:  # pending events will create tiles when folded
            for group in self._groups:
                boundary = group.boundary(t // group.h)
                if nb is None or boundary < nb:
                    nb = boundary
        return nb
