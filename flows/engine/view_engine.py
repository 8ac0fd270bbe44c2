"""The tiled sliding-window engine: per-entity state in, rows out. Pure Python, no Bytewax.

Implements the window semantics (README, "Defining features") exactly:

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

Cost per event does not grow with ``W/h``: the tile state and its generic operations are in
:mod:`freshet.engine.tiles` (running totals, monotonic queues, value -> tile-count maps, cached
sketch merges); :mod:`freshet.engine.hotpath` compiles each view's common cases into straight-line
code.

The state of one entity, :class:`EntityState`, is a few ints and one flat list of plain lists,
dicts and sets (sketches in serial form when pickled), so it pickles small into Bytewax recovery
snapshots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from freshet.dsl.definitions import Aggregation, Feature, FeatureView
from freshet.engine.hotpath import HotPathPlan, compile_hot_path
from freshet.engine.tiles import NEVER, LifetimeFeatures, Pending, WindowGroup
from freshet.sinks.clock import now_ms
from freshet.sinks.events import Event
from freshet.sinks.rows import Row

__all__ = [
    "STATE_FORMAT",
    "EntityState",
    "StateFormatError",
    "ViewEngine",
]

Clock = Callable[[], int]


# The layout of a pickled EntityState; bumped whenever it changes, so a resume from an older
# recovery dir fails with a clear message instead of a wrong state.
STATE_FORMAT = 3  # 3: deterministic percentile partials (were DataSketches KLL)


class StateFormatError(ValueError):
    """A recovery snapshot holds entity states of another engine version."""


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


try:  # __getstate__'s walk in C (flows/engine/_faststate.c), built by `pip install` where it can be
    from freshet.engine._faststate import pack_d as _c_pack_d
except ImportError:  # pragma: no cover - no C compiler at install time: the Python walk
    _c_pack_d = None  # type: ignore[assignment]


def _pack_all(values: list[Any] | tuple[Any, ...]) -> list[Any]:
    return [_pack(v) for v in values]


def _pack_d_py(d: list[Any]) -> list[Any]:
    """A state's flat list with its big ints packed (tiles are lists in a list)."""
    return [
        [_pack_all(tile) for tile in x] if type(x) is list and x and type(x[0]) is list
        else tuple(_pack_all(x)) if type(x) is tuple  # lifetime partials
        else _pack(x)
        for x in d
    ]  # fmt: skip


def _pack_d(d: list[Any]) -> list[Any]:
    """``_pack_d_py`` in C where freshet.engine._faststate is built (~19 -> ~3 µs for an hour-long
    state; tests/unit/test_faststate.py checks both pickle alike)."""
    if _c_pack_d is not None:
        return _c_pack_d(d, _Packed)
    return _pack_d_py(d)


def _unpack_all(values: list[Any] | tuple[Any, ...]) -> list[Any]:
    return [_unpack(v) for v in values]


class EntityState:
    """One entity's window state for one view (opaque to callers; picklable and compact).

    ``max_t``/``wm``: max event time and watermark (ms); ``wall``: wall time when ``max_t`` was
    seen; ``fpart``/``foff``: source position of the highest-offset event folded into the
    tiles (expiry rows carry it); ``nb``: the next expiry boundary among
    the tiles (None: none); ``pending``: ``(t, fields, partition, offset)`` of the events newer
    than the watermark, not yet in tiles, sorted by ``t`` (ties in arrival order); ``d``: the
    window groups' and then the lifetime features' slots, one flat list (layout in
    :mod:`freshet.engine.tiles`).
    """

    __slots__ = (
        "d", "foff", "fpart", "max_t", "nb", "pending", "wall", "wm",
    )  # fmt: skip

    def __init__(self, d: list[Any]) -> None:
        self.max_t = NEVER
        self.wall = 0
        self.wm = NEVER
        self.fpart = -1
        self.foff = -1
        self.nb: int | None = None
        self.pending: list[Pending] | None = None  # None when empty: one object less to read
        self.d = d

    def _fields(self) -> tuple[Any, ...]:
        return (
            self.max_t, self.wall, self.wm, self.fpart, self.foff, self.nb,
            self.pending, self.d,
        )  # fmt: skip

    def __getstate__(self) -> tuple[Any, ...]:
        # Exact float sums are ~1,100-bit ints (scaled by 2**1074) with long runs of trailing
        # zero bits: pickle them as (mantissa, shift), which is ~15 bytes instead of ~140.
        return (STATE_FORMAT, *self._fields()[:-1], _pack_d(self.d))

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        if not state or state[0] != STATE_FORMAT:
            raise StateFormatError(
                "this recovery state was written by another version of freshet's engine "
                f"(state format {state[0] if state and type(state[0]) is int else 1}, this one "
                f"reads {STATE_FORMAT}); start the flow with a new --recovery-dir and rebuild "
                "the windows by replaying the topic (see README, 'Backfill')"
            )
        (
            _, self.max_t, self.wall, self.wm, self.fpart, self.foff, self.nb,
            self.pending, d,
        ) = state  # fmt: skip
        self.d = [
            [_unpack_all(tile) for tile in x] if type(x) is list and x and type(x[0]) is list
            else tuple(_unpack_all(x)) if type(x) is tuple
            else _unpack(x)
            for x in d
        ]  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EntityState):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"EntityState(max_t={self.max_t}, wm={self.wm}, next_boundary={self.nb}, "
            f"pending={len(self.pending or ())}, d={self.d!r})"
        )


# --- the engine -------------------------------------------------------------------------------


class ViewEngine:
    """Turns one view's per-entity event sequences into rows (see the module docstring).

    The caller keeps one :class:`EntityState` per entity (``new_state()``) and passes it back
    on every call; the engine keeps no per-entity data of its own. ``clock`` gives the wall time
    in epoch ms recorded when an entity's max event time advances (inject one in tests).
    """

    def __init__(self, view: FeatureView, *, clock: Clock = now_ms) -> None:
        self.view = view
        self._name = view.name
        self._lateness = view.allowed_lateness_seconds * 1000
        self._clock = clock
        self._width = len(view.features)
        fields = view.engine_fields
        filters = [None if f is None else fields.index(f) for f in view.feature_filters]
        by_window: dict[tuple[int, int, int | None], list[tuple[int, Feature]]] = {}
        lifetime: list[tuple[int, Feature]] = []
        for position, feature in enumerate(view.features):
            if feature.window_seconds is None:
                lifetime.append((position, feature))
            else:
                assert feature.hop_seconds is not None
                # Features of one window and filter share tiles.
                key = (feature.window_seconds * 1000, feature.hop_seconds * 1000, filters[position])
                by_window.setdefault(key, []).append((position, feature))
        groups: list[WindowGroup] = []
        offset = 0
        for (w, h, pred), features in by_window.items():
            groups.append(WindowGroup(w, h, features, view, offset, pred))
            offset += groups[-1].size
        self._groups = tuple(groups)
        self._lifetime = (
            LifetimeFeatures(lifetime, view, offset, tuple(filters[p] for p, _ in lifetime))
            if lifetime
            else None
        )
        compiled = compile_hot_path(
            HotPathPlan(
                name=self._name,
                input_fields=view.engine_fields,
                raw_fields=len(view.input_fields),
                nullable=frozenset(
                    i
                    for i, name in enumerate(view.engine_fields)
                    if view.engine_types[name].nullable
                ),
                expressions=view.expressions,
                lateness=self._lateness,
                width=self._width,
                groups=self._groups,
                lifetime=self._lifetime,
                clock=clock,
                fold_pending=self._fold_pending,
                valid_after=self._valid_after,
            )
        )
        self.apply = compiled["apply"]
        self.apply_batch = compiled["apply_batch"]
        self._fold: Callable[..., None] = compiled["fold"]
        self._new_d: Callable[[], list[Any]] = compiled["new_d"]
        self._expire: Callable[[EntityState, str, list[Row]], None] = compiled["expire"]
        self.source: str = compiled["__source__"]  # the compiled hot path, for reading
        # Lifetime partials other than `last` would be lost if a drained state were dropped.
        self._droppable = all(f.agg is Aggregation.LAST for _, f in lifetime)
        # Folding on arrival relies on L <= every W, which FeatureView checks when defined.

    def new_state(self) -> EntityState:
        """The state of an entity with no events yet."""
        return EntityState(self._new_d())

    # -- public operations ---------------------------------------------------------------------

    # Both are compiled per view in __init__ (the code is in ``source``), not written here:
    #
    # ``apply(state, entity, event_time_ms, fields, partition, offset)``: apply one event;
    # returns its rows (expiry rows first), or None if it is late. ``fields`` are the event's
    # values of ``view.input_fields``, in that order.
    apply: Callable[[EntityState, str, int, tuple[Any, ...], int, int], list[Row] | None]
    # ``apply_batch(states, events, missing, rows, kafka_ts, late, touched)``: ``apply`` over
    # ``events`` ``(entity, t, fields, partition, offset, kafka_ts)`` in order, without a call
    # per event. Appends each row to ``rows`` and its event's ``kafka_ts`` to ``kafka_ts`` (-1
    # for expiry rows), each late event to ``late``, and each entity that accepted an event to
    # ``touched``; ``missing(entity)`` returns (and stores) the state of an entity not in
    # ``states``.
    apply_batch: Callable[
        [
            dict[str, EntityState],
            Iterable[Event],
            Callable[[str], EntityState],
            list[Row],
            list[int],
            list[Event],
            dict[str, EntityState],
        ],
        None,
    ]

    def advance(self, state: EntityState, entity: str, now_ms: int) -> list[Row]:
        """Move the watermark with the wall clock; returns the expiry rows it passes."""
        st = state
        if st.max_t == NEVER:
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
        if st.max_t == NEVER:
            return []
        if until_ms + 1 > st.wm:
            st.wm = until_ms + 1
        rows: list[Row] = []
        self._expire(st, entity, rows)
        return rows

    def is_drained(self, state: EntityState) -> bool:
        """True when dropping the state changes no future row of an on-time event: every
        window is empty, nothing is pending and the lifetime features are only ``last``."""
        if not self._droppable or state.pending or state.max_t == NEVER:
            return False
        d = state.d
        return all(g.is_empty(d) for g in self._groups)

    # -- internals -----------------------------------------------------------------------------

    def _fold_pending(self, st: EntityState, limit: int) -> None:
        """Fold the pending events with ``t <= limit`` into the tiles, in event-time order."""
        pending = st.pending
        if not pending:
            return
        n = 0
        for t, fields, partition, offset in pending:
            if t > limit:
                break
            self._fold(st, t, fields, partition, offset)
            n += 1
        del pending[:n]
        if not pending:
            st.pending = None

    def _valid_after(self, st: EntityState, as_of: int) -> int:
        """The first expiry boundary after ``as_of`` among the tiles held and the pending
        events (each group's, as its filter admits them); -1 when there is none. The value as
        of ``as_of`` holds until then if no event arrives (boundaries at or before ``as_of``
        belong to older values)."""
        best = -1
        d = st.d
        pending = st.pending or ()
        for group in self._groups:
            h, w = group.h, group.w
            first = -1
            for tile in d[group.o]:  # oldest first: boundaries increase
                b = (tile[0] + 1) * h + w
                if b > as_of:
                    first = b
                    break
            if first < 0 and d[group.kix] is not None:
                b = (d[group.kix] + 1) * h + w
                if b > as_of:
                    first = b
            pred = group.pred
            for t, fields, *_ in pending:
                if t > as_of or (pred is not None and not fields[pred]):
                    continue
                b = (t // h + 1) * h + w
                if b > as_of and (first < 0 or b < first):
                    first = b
            if first >= 0 and (best < 0 or first < best):
                best = first
        return best

    def _next_boundary(self, st: EntityState) -> int | None:
        nb = st.nb
        for t, fields, *_ in st.pending or ():  # pending events will create tiles when folded
            for group in self._groups:
                if group.pred is not None and not fields[group.pred]:
                    continue
                boundary = group.boundary(t // group.h)
                if nb is None or boundary < nb:
                    nb = boundary
        return nb
